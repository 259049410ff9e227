#!/usr/bin/env python3
"""ARCHITECTURE.md's code map, checked against the tree.

Fails when
  * a file of src/ (a module) is not named in the code map (a directory's
    `mod.rs` is covered by naming the directory);
  * a path the code map names does not exist;
  * a top-level folder of the repository is not named;
  * ARCHITECTURE.md is longer than 250 lines (read in ten minutes).

Paths are the backticked words of the "## Code map" section that look
like paths (a `/`, or a known file extension). Under "### `src/`" they are
relative to src/, elsewhere to the repository root. `-v` lists them.
"""
import os
import re
import subprocess
import sys

MAX_LINES = 250
EXTENSIONS = (".rs", ".sh", ".py", ".md", ".hcl", ".tmpl", ".yml", ".yaml", ".toml")


def code_map(text):
    m = re.search(r"^## Code map\n(.*?)(?=^## )", text, re.S | re.M)
    if not m:
        return None
    paths, base = [], ""
    for line in m.group(1).splitlines():
        heading = re.match(r"^### `([^`]+)`", line)
        if heading:
            base = heading.group(1) if heading.group(1) == "src/" else ""
            paths.append(heading.group(1))
            continue
        if line.startswith("### "):
            base = ""
            continue
        for word in re.findall(r"`([^`\s]+)`", line):
            if "*" in word or "<" in word or word.startswith(("-", "/", "$")):
                continue
            if "/" in word or word.endswith(EXTENSIONS):
                paths.append(os.path.normpath(base + word) + ("/" if word.endswith("/") else ""))
    return paths


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    os.chdir(root)
    text = open("ARCHITECTURE.md", encoding="utf-8").read()
    errors = []
    lines = text.count("\n")
    if lines > MAX_LINES:
        errors.append(f"ARCHITECTURE.md has {lines} lines (at most {MAX_LINES}: details go to module docs)")
    paths = code_map(text)
    if paths is None:
        print("check-architecture: no \"## Code map\" section in ARCHITECTURE.md", file=sys.stderr)
        return 1
    if "-v" in sys.argv:
        print("\n".join(paths))
    named = {p.rstrip("/") for p in paths}
    for p in paths:
        if not os.path.exists(p.rstrip("/")):
            errors.append(f"the code map names `{p}`, which does not exist")
    for d, _, files in os.walk("src"):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.normpath(os.path.join(d, f))
            covered = path in named or (f == "mod.rs" and os.path.normpath(d) in named)
            if not covered:
                errors.append(f"`{path}` is not in the code map")
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    top = sorted({p.split("/")[0] for p in tracked if "/" in p})
    for d in top:
        if d not in named and not any(n.startswith(d + "/") for n in named):
            errors.append(f"the folder `{d}/` is not in the code map")
    for e in errors:
        print("check-architecture: " + e, file=sys.stderr)
    if not errors:
        print(
            f"check-architecture: {lines} lines; the code map names {len(named)} paths, "
            f"every module of src/ and every top-level folder, all of which exist"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
