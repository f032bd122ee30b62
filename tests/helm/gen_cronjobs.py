#!/usr/bin/env python3
"""Regenerates cronjobs/*.yaml (plain manifests for people without Helm)
from the chart and tests/helm/cases/*.yaml, with explanatory comments.
The integration test `helm::plain_cronjob_manifests_match_the_chart`
fails when they drift apart.  Usage: python3 tests/helm/gen_cronjobs.py
"""
import os
import re

import yaml

from render import render, strip

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "cronjobs")

HEADERS = {
    "immediate.yaml": "Immediate: a one-off backup now. `kubectl create -f` it (the name must be new\n"
                      "each time; the chart names it after a hash of its spec and sets no\n"
                      "ttlSecondsAfterFinished, so that an upgrade or a GitOps sync with the same\n"
                      "values runs nothing), or start one from any scheduled plan:\n"
                      "  kubectl -n kubestow create job --from=cronjob/kubestow-nightly manual-$(date +%s)",
    "once.yaml": "Once at a time: runs at the first matching time (here Dec 24th, 03:00) and,\n"
                 "after a successful run, kubestow suspends this CronJob itself (STOW_ONCE).\n"
                 "A failed run is retried by the Job and the CronJob stays active.",
    "hourly.yaml": "Hourly: every 2 hours from 08:00 to 18:00, Berlin time (timeZone needs\n"
                   "Kubernetes 1.27+; on older clusters give UTC times and drop it).",
    "daily.yaml": "Daily, every 3 days: cron fires daily; kubestow skips the run while the\n"
                  "plan's newest complete run is younger than STOW_MIN_INTERVAL (3 days minus\n"
                  "12 hours of slack for the run's own duration). Unlike `*/3` in the\n"
                  "day-of-month field, this keeps 3 days across month ends.",
    "weekly.yaml": "Weekly, every 2 weeks on Saturday: cron fires weekly, STOW_MIN_INTERVAL\n"
                   "(13 days) skips every other week.",
    "monthly.yaml": "Monthly, on the last day of the month, New York time: cron fires on days\n"
                    "28-31 and kubestow skips all but the month's last day (STOW_LAST_DAY_OF_MONTH,\n"
                    "judged in STOW_TIMEZONE). Other examples: `0 4 1,15 1,7 *` (1st and 15th of\n"
                    "January and July), `0 4 29 2 *` (Feb 29th: leap years only).",
    "restore.yaml": "The restore template: a suspended CronJob that never runs by itself (its\n"
                    "schedule, February 31st, never comes). Each restore is a Job created from it\n"
                    "with that run's values; with nothing set, the newest complete run of\n"
                    "namespace `shop`. Needs the restore ServiceAccount (the restore part of\n"
                    "rbac.yaml; chart: restore.enabled=true). Point in time, into a new namespace:\n"
                    "  kubectl -n kubestow create job restore-1 --from=cronjob/kubestow-restore \\\n"
                    "      --dry-run=client -o json \\\n"
                    "    | jq '.spec.template.spec.containers[0].env +=\n"
                    "        [{name: \"STOW_RESTORE_POINT\", value: \"2026-11-20T14:00:00Z\"},\n"
                    "         {name: \"STOW_NAMESPACE_MAP\", value: \"shop=shop-restored\"}]' \\\n"
                    "    | kubectl create -f -\n"
                    "README \"Restore\" has the recipe for CI (replacing values the template sets,\n"
                    "waiting, reading the result).",
    "rbac.yaml": "ServiceAccounts and RBAC for the manifests in this directory (namespace\n"
                 "`kubestow`; helm/kubestow/templates/rbac.yaml explains each rule):\n"
                 "- backup: reads every resource, Secrets included (list/watch all, get the\n"
                 "  built-in types: no pods/exec, pods/log or nodes/proxy); create/delete\n"
                 "  VolumeSnapshots in every namespace, VolumeSnapshotContents and\n"
                 "  PersistentVolumes (cluster-scoped; a PersistentVolume may name a\n"
                 "  hostPath); in `kubestow` only: create/delete Jobs, claims and\n"
                 "  VolumeSnapshots (mover Jobs run there and nowhere else), get/patch the\n"
                 "  plans' CronJobs by name (STOW_ONCE; add yours, never kubestow-restore).\n"
                 "  No Secret, ServiceAccount or RBAC writes; no exec (the chart\n"
                 "  binds pods/exec in the namespaces exec hooks name).\n"
                 "- mover: no API access; mover Jobs, prune, check, copy.\n"
                 "- restore: writes everywhere (cluster-admin in effect): apply that part\n"
                 "  only when you restore. While it exists, the backup account can start\n"
                 "  Jobs that run as it in `kubestow`.\n"
                 "Label `kubestow` for Pod Security `privileged` (kubelet movers use a\n"
                 "hostPath), or `baseline` if every plan uses STOW_VOLUME_SOURCE=snapshot.\n"
                 "Also create the Secret `kubestow-credentials`.",
    "copy.yaml": "Replication: copies complete runs to a second repository daily. Put\n"
                 "STOW_COPY_TO_PASSWORD (and the destination's credentials) in the Secret.",
}

COMMON = """Plain manifest equivalent to the Helm chart (helm/kubestow) with the values in
tests/helm/cases/{name}; a test keeps them in sync. Needs, in namespace
`kubestow`: the Secret `kubestow-credentials` (STOW_PASSWORD, AWS_* keys) and
the ServiceAccounts with their RBAC (render the chart once, or see README).
Kubernetes < 1.21: use `apiVersion: batch/v1beta1` for CronJobs; < 1.26: drop
`podFailurePolicy`; < 1.27: drop `timeZone`."""

INLINE = [
    (r"^\s*concurrencyPolicy:", "Never two scheduled runs of this CronJob at once."),
    (r"^\s*podFailurePolicy:", "Exit code 2 is a configuration error: do not retry it."),
    (r"^\s*envFrom:", "Credentials only from the Secret, never as literals."),
    (r"^\s*- name: STOW_POD_NAME$", "Downward API: run id (Job name), pod identity."),
    (r"^\s*readOnlyRootFilesystem:", "Scratch space is the /tmp emptyDir."),
]


def write_rbac(case, objs):
    parts = []
    for o in objs:
        o["metadata"].pop("labels", None)
        o["metadata"]["labels"] = {"app.kubernetes.io/name": "kubestow"}
        parts.append(yaml.safe_dump(o, sort_keys=False, width=100))
    header = "\n".join("# " + l if l else "#" for l in HEADERS[case].splitlines())
    with open(os.path.join(OUT, case), "w") as f:
        f.write(header + "\n---\n" + "---\n".join(parts))
    print("wrote", case)


def main():
    for case in sorted(os.listdir(os.path.join(HERE, "cases"))):
        with open(os.path.join(HERE, "cases", case)) as f:
            meta = yaml.safe_load(f)
        objs = [o["object"] for o in render(meta["values"], meta.get("kubeVersion", "1.20.2"))]
        if case == "rbac.yaml":
            write_rbac(case, [o for o in objs if o["kind"] not in ("CronJob", "Job", "Secret")])
            continue
        kinds = ("CronJob", "Job")
        docs = [o for o in objs if o["kind"] in kinds
                and (meta.get("match") is None or o["metadata"]["name"] == meta["match"])]
        doc = docs[0]
        doc["metadata"] = {"name": doc["metadata"]["name"], "namespace": "kubestow",
                           "labels": {"app.kubernetes.io/name": "kubestow"}}
        doc["spec"] = strip(doc["spec"])
        text = yaml.safe_dump(doc, sort_keys=False, width=100)
        lines = []
        for line in text.splitlines():
            for pat, comment in INLINE:
                if re.match(pat, line):
                    indent = len(line) - len(line.lstrip())
                    lines.append(" " * indent + "# " + comment)
            lines.append(line)
        header = "\n".join("# " + l if l else "#" for l in (HEADERS[case] + "\n\n" + COMMON.format(name=case)).splitlines())
        with open(os.path.join(OUT, case), "w") as f:
            f.write(header + "\n" + "\n".join(lines) + "\n")
        print("wrote", case)


if __name__ == "__main__":
    main()
