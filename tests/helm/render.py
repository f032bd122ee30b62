#!/usr/bin/env python3
"""Renders helm/kubestow with the real Helm engine (PyPI helm-python-sdk,
Helm v4's Go SDK) and prints the manifests as one JSON document:

    {"ok": true, "objects": [ {"template": "...", "object": {...}}, ... ]}
    {"ok": false, "error": "..."}               (render failed, e.g. `fail`)

Usage: render.py [--kube-version 1.20.2] [--release kubestow]
                 [--namespace kubestow] [--values FILE ...]
                 [--upgrade --revision N] [--raw]
Values are YAML (or JSON) files; `-` reads JSON from stdin. Later files win
(deep merge, like `helm -f a -f b`). `--upgrade` renders as `helm upgrade`
does for revision N (default: as `helm install`, revision 1). `--raw` adds
Helm's output itself, template by template, NOTES.txt included:
{"ok": true, "objects": [...], "raw": {"kubestow/templates/x.yaml": "..."}}.
Helm checks the values against values.schema.json first.

    render.py compare CRONJOBS_DIR CASES_DIR   # see compare() below
    render.py lint 1.20.2 1.30.0               # helm lint --strict per version
"""
import argparse
import json
import os
import sys

import yaml

try:
    import helm_python as helm
    from helm_python import _native
except ImportError:  # pragma: no cover
    print(json.dumps({"ok": False, "error": "helm-python-sdk is not installed; run `just setup`"}))
    sys.exit(3)

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "helm", "kubestow")

# What every release sets beyond the chart's defaults: a repository and the
# repository password (the chart makes none up).
LINT_VALUES = {"repository": "s3://my-backups/cluster-a",
               "secret": {"existingSecret": "kubestow-credentials"}}


def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a.get(k), v) if k in a else v
        return out
    return b


def render_raw(values, kube_version="1.20.2", release="kubestow", namespace="kubestow",
               upgrade=False, revision=1):
    """Helm's output: {template path: rendered text}."""
    chart = helm.Chart.load(CHART)
    opts = {"name": release, "namespace": namespace, "kube_version": kube_version,
            "is_install": not upgrade, "is_upgrade": upgrade, "revision": revision}
    # Chart.render() does not expose kube_version; the C ABI does.
    out = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    return json.loads(out)


def render(values, kube_version="1.20.2", release="kubestow", namespace="kubestow",
           upgrade=False, revision=1, raw=None):
    raw = raw if raw is not None else render_raw(values, kube_version, release, namespace, upgrade, revision)
    objects = []
    for template, text in sorted(raw.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append({"template": template, "object": doc})
    return objects


def load_values(paths):
    values = {}
    for p in paths:
        if p == "-":
            v = json.load(sys.stdin)
        else:
            with open(p) as f:
                v = yaml.safe_load(f) or {}
        values = merge(values, v)
    return values


def compare(cronjobs_dir, cases_dir):
    """Each cronjobs/<name>.yaml (plain manifest) has tests/helm/cases/<name>.yaml:
    values that make the chart render the same workload. The CronJob/Job
    `spec` must be equal; metadata (names, chart labels) may differ."""
    problems = []
    checked = []
    for name in sorted(os.listdir(cronjobs_dir)):
        if not name.endswith(".yaml"):
            continue
        case = os.path.join(cases_dir, name)
        if not os.path.exists(case):
            problems.append(f"{name}: no values in {case}")
            continue
        with open(os.path.join(cronjobs_dir, name)) as f:
            plain = [d for d in yaml.safe_load_all(f) if d]
        with open(case) as f:
            meta = yaml.safe_load(f)
        rendered = [o["object"] for o in render(meta.get("values", {}), meta.get("kubeVersion", "1.20.2"))]
        for doc in plain:
            if doc.get("kind") not in ("CronJob", "Job"):
                # RBAC and ServiceAccounts: same kind and name, equal but for labels.
                same = [r for r in rendered if r["kind"] == doc["kind"]
                        and r["metadata"]["name"] == doc["metadata"]["name"]]
                if not same:
                    problems.append(f"{name}: the chart renders no {doc['kind']} {doc['metadata']['name']}")
                elif unlabel(doc) != unlabel(same[0]):
                    problems.append(f"{name}: {doc['kind']} {doc['metadata']['name']} differs from the chart:\n"
                                    f"  plain: {json.dumps(unlabel(doc), sort_keys=True)}\n"
                                    f"  chart: {json.dumps(unlabel(same[0]), sort_keys=True)}")
                checked.append(name)
                continue
            want = [r for r in rendered if r["kind"] == doc["kind"]
                    and (meta.get("match") is None or r["metadata"]["name"] == meta["match"])]
            if not want:
                problems.append(f"{name}: the chart renders no {doc['kind']}")
                continue
            a, b = strip(doc["spec"]), strip(want[0]["spec"])
            if a != b:
                problems.append(f"{name}: {doc['kind']} spec differs from the chart:\n"
                                f"  plain: {json.dumps(a, sort_keys=True)}\n  chart: {json.dumps(b, sort_keys=True)}")
            checked.append(name)
    return {"ok": not problems, "checked": sorted(set(checked)), "problems": problems}


def unlabel(obj):
    obj = json.loads(json.dumps(obj))
    obj.get("metadata", {}).pop("labels", None)
    return obj


def strip(spec):
    """Drops chart-only labels (helm.sh/chart, managed-by, instance)."""
    spec = json.loads(json.dumps(spec))

    def walk(o):
        if isinstance(o, dict):
            labels = o.get("labels")
            if isinstance(labels, dict):
                for k in ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"):
                    labels.pop(k, None)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(spec)
    return spec


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "lint":
        # `helm lint --strict` for each Kubernetes version given, with the
        # chart's defaults plus what a release must set (LINT_VALUES).
        reports = {v: helm.lint(CHART, LINT_VALUES, strict=True, kube_version=v) for v in sys.argv[2:]}
        print(json.dumps(reports))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        result = compare(sys.argv[2], sys.argv[3])
        print(json.dumps(result))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--kube-version", default="1.20.2")
    ap.add_argument("--release", default="kubestow")
    ap.add_argument("--namespace", default="kubestow")
    ap.add_argument("--values", action="append", default=[])
    ap.add_argument("--upgrade", action="store_true")
    ap.add_argument("--revision", type=int, default=None)
    ap.add_argument("--raw", action="store_true")
    args = ap.parse_args()
    revision = args.revision if args.revision is not None else (2 if args.upgrade else 1)
    try:
        raw = render_raw(load_values(args.values), args.kube_version, args.release, args.namespace,
                         args.upgrade, revision)
        objects = render(None, raw=raw)
    except helm.HelmError as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return
    out = {"ok": True, "objects": objects}
    if args.raw:
        out["raw"] = raw
    print(json.dumps(out))


if __name__ == "__main__":
    main()
