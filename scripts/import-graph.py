#!/usr/bin/env python3
"""The module graph of src/, from `crate::`/`super::` paths (comment lines
ignored), with every file of src/command/ counted as one node `command`,
and every file of src/approvals/ as one node `approvals`.

Fails when the command core has an import cycle, i.e. when a strongly
connected component holds any of CORE, or when the leaf `context` imports
any of LEAF_MUST_NOT. `-v` prints the graph."""
import os
import re
import sys

CORE = {"command", "dispatch", "approvals", "audit", "context", "records", "effect"}
LEAF_MUST_NOT = {"command", "dispatch", "approvals", "audit", "effect"}


def module_of(path):
    p = path[len("src/"):-len(".rs")]
    if p.endswith("/mod"):
        p = p[: -len("/mod")]
    if p in ("lib", "main"):
        return "crate"
    return p.replace("/", "::")


def group(m):
    for g in ("command", "approvals"):
        if m == g or m.startswith(g + "::"):
            return g
    return m


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    files = []
    for root, _, names in os.walk("src"):
        files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    mods = {module_of(f) for f in files}

    def resolve(path):
        parts, best = path.split("::"), None
        for i in range(1, len(parts) + 1):
            if "::".join(parts[:i]) in mods:
                best = "::".join(parts[:i])
        return best

    graph = {}
    for f in files:
        m = module_of(f)
        text = "\n".join(
            line for line in open(f, encoding="utf-8").read().splitlines()
            if not line.lstrip().startswith("//")
        )
        deps = set()
        for u in re.finditer(r"crate::((?:[a-z_0-9]+::)*)(\{[^;]*?\}|[A-Za-z_0-9]+)", text):
            prefix, tail = u.group(1), u.group(2)
            items = re.findall(r"[a-z_0-9]+(?:::[A-Za-z_0-9]+)*", tail) if tail.startswith("{") else [tail]
            for item in items + [prefix.rstrip(":")]:
                r = resolve(prefix + item if item != prefix.rstrip(":") else item)
                if r:
                    deps.add(r)
        parent = m.rsplit("::", 1)[0] if "::" in m else None
        for u in re.finditer(r"\bsuper::([A-Za-z_0-9]+)", text):
            if parent:
                deps.add(resolve(parent + "::" + u.group(1)) or parent)
        node = group(m)
        graph.setdefault(node, set()).update(group(d) for d in deps if d and d != "crate")
        graph[node].discard(node)

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    if "-v" in sys.argv:
        for k in sorted(graph):
            print(k, "->", " ".join(sorted(graph[k])))
    fail = False
    for comp in sccs:
        if len(comp) > 1 and CORE & set(comp):
            print("import-graph: a cycle in the command core: " + " -> ".join(comp), file=sys.stderr)
            fail = True
    bad = graph.get("context", set()) & LEAF_MUST_NOT
    if bad:
        print("import-graph: the leaf context imports " + ", ".join(sorted(bad)), file=sys.stderr)
        fail = True
    if not fail:
        print(
            "import-graph: no cycle through command/, dispatch, approvals, audit, context, "
            "records, effect; context imports none of " + ", ".join(sorted(LEAF_MUST_NOT))
        )
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
