#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/seeds/<target>/.

The seeds are small valid inputs in each harness's format (src/fuzzing.rs),
so the fuzzer starts from objects the decoders accept rather than noise.
Run it again after changing a format; the output is committed.
"""

import json
import os
import struct
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
OVERHEAD = 1 + 12 + 1 + 8 + 16  # version, nonce, compression, length, tag


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def entry(byte, kind, offset, length, raw):
    return bytes([byte]) * 32 + bytes([kind]) + struct.pack("<III", offset, length, raw)


def hexid(i):
    return ("%02x" % i) * 32


def header(entries):
    return struct.pack("<I", len(entries)) + b"".join(entries)


# pack: pack size, the pack's last 4 bytes, the header plaintext.
e1 = entry(1, 1, 0, 100 + OVERHEAD, 100)
e2 = entry(2, 2, 100 + OVERHEAD, 50 + OVERHEAD, 80)
h = header([e1, e2])
body = 150 + 2 * OVERHEAD
sealed_len = len(h) + OVERHEAD
write("pack", "two-blobs", struct.pack("<Q", body + sealed_len + 4) + struct.pack("<I", sealed_len) + h)
write("pack", "body-sized", struct.pack("<Q", body) + struct.pack("<I", sealed_len) + h)
write("pack", "empty", struct.pack("<Q", 0) + struct.pack("<I", OVERHEAD + 4) + header([]))

# index: version 1, packs, each with its entries.
index = bytes([1]) + struct.pack("<I", 2)
index += bytes([9]) * 32 + struct.pack("<I", 2) + e1 + e2
index += bytes([8]) * 32 + struct.pack("<I", 0)
write("index", "two-packs", index)
write("index", "empty", bytes([1]) + struct.pack("<I", 0))

# manifest: the JSON of a snapshot manifest.
manifest = {
    "time": "2026-01-02T03:04:05.123456789Z",
    "run_id": "nightly-29123",
    "part": 0,
    "parts": 2,
    "plan": "daily",
    "tags": ["nightly", "team=payments"],
    "cluster_id": "3f8a0c1e-0000-4000-8000-000000000001",
    "selection": {"namespaces": ["shop-*"], "labels": None},
    "resources": hexid(0xAB),
    "volumes": {
        "shop/data-db-0": {"root": hexid(0xCD), "stats": {"files": 12, "bytes": 4096}},
        "shop/cache": {"root": hexid(0xEF)},
    },
    "status": "complete",
    "version": "0.1.0",
    "stats": {"objects": 42, "ratio": 0.5},
}
write("manifest", "full", json.dumps(manifest))
write("manifest", "minimal", json.dumps({"time": "2026-01-02T03:04:05Z", "run_id": "r", "part": 0, "parts": 1, "plan": "p", "version": "1"}))

# tree: a volume directory listing, sorted by name bytes.
nodes = [
    {"name": ".cfg", "type": "file", "mode": 0o644, "uid": 1000, "gid": 1000, "size": 12,
     "mtime_ns": 1700000000000000000, "ctime_ns": 1700000000000000001, "inode": 7, "dev": 2049,
     "nlink": 2, "xattrs": {"user.a": "dmFsdWU="}, "xattrs_b64": {"/w==": ""},
     "content": [hexid(1), hexid(2)]},
    {"name": "dev", "type": "chardev", "mode": 0o600, "rdev": 259},
    {"name": "hard", "type": "hardlink", "link": "dir/.cfg"},
    {"name": "link", "type": "symlink", "target_b64": "L2V0Yy/+"},
    {"name": "sub", "type": "dir", "mode": 0o755, "subtree": hexid(3)},
    {"name_b64": "/mFt", "type": "fifo"},
    {"name_b64": "/w==", "type": "future-kind"},
]
write("tree", "dir", json.dumps({"nodes": nodes}))
write("tree", "root", json.dumps({"nodes": [{"name": ".", "type": "dir", "subtree": hexid(4)}]}))
write("tree", "empty", json.dumps({"nodes": []}))

# catalogue: Tree blobs separated by 0xff; blob i has id [i; 32], blob 0 is the root.
root = {"nodes": [
    {"name": "_cluster", "scope": "cluster", "subtree": hexid(1)},
    {"name": "shop", "scope": "namespace", "content": [hexid(9)], "subtree": hexid(2)},
    {"name": "zz", "scope": "cluster", "subtree": hexid(7)},
]}
cluster_types = {"nodes": [
    {"name": "customresourcedefinitions.apiextensions.k8s.io", "group": "apiextensions.k8s.io",
     "version": "v1", "kind": "CustomResourceDefinition", "plural": "customresourcedefinitions",
     "namespaced": False, "count": 1, "subtree": hexid(3)},
]}
shop_types = {"nodes": [
    {"name": "configmaps", "group": "", "version": "v1", "kind": "ConfigMap", "plural": "configmaps",
     "namespaced": True, "count": 2, "subtree": hexid(4)},
    {"name": "deployments.apps", "group": "apps", "version": "v1", "kind": "Deployment",
     "plural": "deployments", "namespaced": True, "count": 1, "subtree": hexid(5)},
]}
crds = {"nodes": [{"name": "widgets.example.com", "content": [hexid(10)]}]}
cms = {"nodes": [{"name": "a", "content": [hexid(11)]}, {"name": "b", "content": []}]}
deps = {"nodes": [{"name": "web", "content": [hexid(12), hexid(13)]}]}
blobs = [root, cluster_types, shop_types, crds, cms, deps]
write("catalogue", "three-levels", b"\xff".join(json.dumps(b).encode() for b in blobs) + b"\xffnot json")
write("catalogue", "empty", json.dumps({"nodes": []}))

# config: the mode argument, then NAME=VALUE lines (`@n`: the n-th variable).
write("config", "backup", "\n".join([
    "backup",
    "STOW_REPOSITORY=s3://{cred}bucket-name/prefix",
    "STOW_PASSWORD=hunter2",
    "STOW_NAMESPACES=shop-*,billing",
    "STOW_LABEL_SELECTOR=app=shop,tier!=cache,env in (a,b)",
    "STOW_RATE_LIMIT=mon-fri 09:00-18:00=10MiB,*=200MiB",
    "STOW_TIMEZONE=Europe/Berlin",
    "STOW_PRE_HOOKS=timeout=60s on-error=continue exec:shop/app=db/db:sync\\nscope=volume fsfreeze",
    "STOW_PUSHGATEWAY_URL=https://{cred}gw:9091",
    "STOW_CHANNELS=4",
    "STOW_MOVER_RESOURCES=requests.cpu=100m,limits.memory=512Mi",
    "HOME=/root",
]))
write("config", "copy", "\n".join([
    "",
    "STOW_MODE=copy",
    "STOW_REPOSITORY=file:///srv/repo",
    "STOW_PASSWORD_FILE=from-file",
    "STOW_COPY_TO_REPOSITORY=s3://{cred}other/p",
    "STOW_COPY_TO_PASSWORD=pw2",
    "STOW_KEEP_DAILY=7",
    "STOW_PRUNE_GRACE=30m",
    "STOW_PASWORD=typo",
]))
write("config", "restore", "\n".join([
    "restore",
    "@0=restore",
    "@1=s3://bucket/p",
    "@2=x",
    "STOW_RESTORE_POINT=2026-01-02T03:04:05Z",
    "STOW_NAMESPACE_MAP=old=new,other=renamed",
    "STOW_STORAGE_CLASS_MAP=a=b",
    "STOW_EXISTING=update",
    "STOW_PRECONDITION=resource:deployment/shop/web\\nexec:shop/app=db/db:true",
    "STOW_CHECK_READ_DATA=12.5%",
    "STOW_MIN_INTERVAL=3d",
]))

# envelope: selector byte, then compression byte, declared length, payload.
payload = b"hello hello hello hello"
write("envelope", "raw", bytes([2, 0]) + struct.pack("<Q", len(payload)) + payload)
frame = subprocess.run(["zstd", "-q", "-c", "-"], input=payload * 20, capture_output=True, check=True).stdout
write("envelope", "zstd", bytes([1, 1]) + struct.pack("<Q", len(payload) * 20) + frame)
write("envelope", "key", bytes([0, 0]) + struct.pack("<Q", 64) + bytes(range(64)))
