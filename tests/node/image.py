#!/usr/bin/env python3
"""Builds a container image as a `docker save` archive from files on this
machine, for `ctr images import` (the node test has no registry and no
image builder: userbot/Containerfile cannot pull its base image here).

    image.py OUT.tar NAME:TAG --file SRC=DST[:MODE] ... [--user U:G]
             [--entrypoint JSON] [--cmd JSON] [--expose PORT/tcp]

One layer; every parent directory is created 0755 root:root; files keep the
mode given (default: the source's). Deterministic: same inputs, same digest.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def add_dirs(tar, path, seen):
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in seen:
            continue
        seen.add(d)
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)


def layer(files):
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for src, dst, mode in sorted(files, key=lambda f: f[1]):
            add_dirs(tar, dst, seen)
            with open(src, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(dst.lstrip("/"))
            info.size = len(data)
            info.mode = mode if mode is not None else os.stat(src).st_mode & 0o7777
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("name")
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--entrypoint", default="null")
    ap.add_argument("--cmd", default="null")
    ap.add_argument("--expose", action="append", default=[])
    a = ap.parse_args()
    files = []
    for spec in a.file:
        src, dst = spec.split("=", 1)
        mode = None
        if ":" in dst:
            dst, m = dst.rsplit(":", 1)
            mode = int(m, 8)
        files.append((src, dst, mode))
    blob = layer(files)
    diff_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": a.user,
            "Entrypoint": json.loads(a.entrypoint),
            "Cmd": json.loads(a.cmd),
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "ExposedPorts": {p: {} for p in a.expose},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/node/image.py"}],
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff_id[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [a.name], "Layers": [layer_name]}]).encode()
    with tarfile.open(a.out, "w") as tar:
        for name, data in ((cfg_name, cfg), (layer_name, blob), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    print(f"{a.name} {diff_id} {len(blob)} bytes")


if __name__ == "__main__":
    main()
