#!/usr/bin/env python3
"""Installs, upgrades or uninstalls helm/kubestow on a real cluster with the
real Helm engine (PyPI helm-python-sdk, Helm v4's Go SDK), as `helm install`
would. Used by the node tests and the demo.

    release.py install|upgrade KUBECONFIG NAMESPACE RELEASE VALUES_JSON_FILE
    release.py uninstall       KUBECONFIG NAMESPACE RELEASE

Prints {"ok": true, "revision": N} or {"ok": false, "error": "..."}.
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
    revision = rel.get("version") if isinstance(rel, dict) else getattr(rel, "version", None)
    print(json.dumps({"ok": True, "revision": revision}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
