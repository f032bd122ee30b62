#!/usr/bin/env python3
"""Installs, upgrades or uninstalls helm/kubestow on a real cluster with the
real Helm engine (PyPI helm-python-sdk, Helm v4's Go SDK), as `helm install`
would. Used by the node tests and the demo.

    release.py install|upgrade KUBECONFIG NAMESPACE RELEASE VALUES_JSON_FILE
    release.py uninstall       KUBECONFIG NAMESPACE RELEASE
    release.py manifest        KUBECONFIG NAMESPACE RELEASE REVISION

Prints {"ok": true, "revision": N} or {"ok": false, "error": "..."};
`manifest` prints {"ok": true, "manifest": "<what that revision applied>"}.
"""
import json
import os
import sys

try:
    import helm_python as helm
except ImportError:  # pragma: no cover
    print(json.dumps({"ok": False, "error": "helm-python-sdk is not installed; run `just setup`"}))
    sys.exit(3)

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "helm", "kubestow")


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    action, kubeconfig, namespace, release = argv[:4]
    cfg = helm.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    try:
        if action == "manifest":
            rel = cfg.status(release, revision=int(argv[4]))
            manifest = rel.get("manifest") if isinstance(rel, dict) else getattr(rel, "manifest", None)
            if manifest is None and isinstance(rel, dict):
                manifest = (rel.get("summary") or {}).get("manifest")
            print(json.dumps({"ok": manifest is not None, "manifest": manifest,
                              "error": None if manifest is not None else f"no manifest in {sorted(rel)}"}))
            return 0 if manifest is not None else 1
        if action == "uninstall":
            rel = cfg.uninstall(release, ignore_not_found=True, timeout=120)
        else:
            with open(argv[4]) as f:
                values = json.load(f)
            chart = helm.Chart.load(CHART)
            if action == "install":
                rel = cfg.install(chart, release, values, namespace=namespace, timeout=300)
            elif action == "upgrade":
                rel = cfg.upgrade(chart, release, values, namespace=namespace, timeout=300)
            else:
                print(__doc__, file=sys.stderr)
                return 2
    except helm.HelmError as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1
    revision = None
    if isinstance(rel, dict):
        for r in (rel, rel.get("summary") or {}, rel.get("info") or {}):
            revision = revision or r.get("revision") or r.get("version")
    if revision is None and action != "uninstall":
        print(json.dumps({"ok": False, "error": f"no revision in the release: {sorted(rel) if isinstance(rel, dict) else rel!r}"}))
        return 1
    print(json.dumps({"ok": True, "revision": revision}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
