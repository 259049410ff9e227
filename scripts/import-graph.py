#!/usr/bin/env python3
"""The file-level import graph of src/ and the layering rules of
ARCHITECTURE.md ("Layers"), checked.

A node is one file (its module path: `src/vault/kv.rs` is `vault::kv`,
`src/vault/mod.rs` is `vault`, `lib.rs`/`main.rs` are the crate root and
left out). An edge is a path in code that names another file's module:
`crate::a::b::Item`, `super::x`, `self::x`, and a bare `x::` where `x` is a
module the file declares (`mod x;`). Comment lines and the file's unit-test
module (`#[cfg(test)] mod tests`) are not counted: tests may reach up.

Fails on
  * any import cycle between files (a strongly connected component of more
    than one file);
  * an import of the house by the ground floor `config/` (it may use only
    itself and the leaves below);
  * an import by a leaf of anything but leaves.
`-v` prints the graph."""
import os
import re
import sys

# Files that import nothing of the house but other leaves.
LEAVES = {"clock", "error", "ids", "metrics", "names", "text", "transport_kind"}
# The ground floor: imports only its own files and the leaves.
GROUND = "config"


def module_of(path):
    p = path[len("src/"):-len(".rs")]
    if p.endswith("/mod"):
        p = p[: -len("/mod")]
    if p in ("lib", "main"):
        return None
    return p.replace("/", "::")


def strip(text):
    """Code without comment lines and without the unit-test module."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\([a-z]+\))? )?mod tests\s*\{", text, re.M)
    if m:
        text = text[: m.start()]
    return "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("//")
    )


def graph_of(root="src"):
    files = []
    for d, _, names in os.walk(root):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    # Test-only files (`#[cfg(test)] mod x;`) are tests: left out.
    test_only = set()
    for f in files:
        m = module_of(f)
        for c in re.findall(
            r"^#\[cfg\(test\)\]\s*\n\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);",
            open(f, encoding="utf-8").read(), re.M,
        ):
            test_only.add((m + "::" + c) if m else c)
    mods = {}
    for f in files:
        m = module_of(f)
        if m and m not in test_only:
            mods[m] = f

    def resolve(path):
        parts, best = path.split("::"), None
        for i in range(1, len(parts) + 1):
            if "::".join(parts[:i]) in mods:
                best = "::".join(parts[:i])
        return best

    def uses(text, anchor):
        """Paths after `anchor::`, with `{a, b::c}` groups spread."""
        out = []
        for u in re.finditer(
            anchor + r"::((?:[A-Za-z_0-9]+::)*)(\{[^;]*?\}|[A-Za-z_0-9]+|\*)", text
        ):
            prefix, tail = u.group(1), u.group(2)
            if tail == "*":
                out.append(prefix.rstrip(":"))
            elif tail.startswith("{"):
                items = re.findall(r"[A-Za-z_0-9]+(?:::[A-Za-z_0-9]+)*", tail)
                out += [prefix + i for i in items]
            else:
                out.append(prefix + tail)
        return out

    graph = {}
    for m, f in sorted(mods.items()):
        text = strip(open(f, encoding="utf-8").read())
        # `super` is the parent module, `self` the module itself, whatever
        # the file layout (`a/b.rs` or `a/b/mod.rs`).
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        deps = set()
        for p in uses(text, r"(?<![A-Za-z_0-9:])crate"):
            deps.add(resolve(p))
        for p in uses(text, r"(?<![A-Za-z_0-9:])super"):
            if p:
                deps.add(resolve(parent + "::" + p) if parent else resolve(p))
            elif parent:
                deps.add(parent)
        for p in uses(text, r"(?<![A-Za-z_0-9:])self"):
            deps.add(resolve(m + "::" + p) if p else None)
        children = re.findall(r"^\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);", text, re.M)
        for c in children:
            child = (m + "::" + c)
            if child in mods and re.search(r"(?<![A-Za-z_0-9:])" + c + r"::", text):
                deps.add(child)
        deps.discard(None)
        deps.discard(m)
        graph[m] = deps
    return graph


def sccs_of(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def in_ground(m):
    return m == GROUND or m.startswith(GROUND + "::")


def check(graph):
    errors = []
    for comp in sccs_of(graph):
        if len(comp) > 1:
            inner = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            errors.append("an import cycle of %d files: %s" % (len(comp), "; ".join(inner)))
    for m in sorted(graph):
        if in_ground(m):
            bad = sorted(d for d in graph[m] if not in_ground(d) and d not in LEAVES)
            if bad:
                errors.append(f"the ground floor {m} imports {', '.join(bad)}")
        if m in LEAVES:
            bad = sorted(d for d in graph[m] if d not in LEAVES)
            if bad:
                errors.append(f"the leaf {m} imports {', '.join(bad)}")
    return errors


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    graph = graph_of()
    if "-v" in sys.argv:
        for k in sorted(graph):
            print(k, "->", " ".join(sorted(graph[k])))
    errors = check(graph)
    for e in errors:
        print("import-graph: " + e, file=sys.stderr)
    if not errors:
        print(
            "import-graph: %d files, %d imports, no cycle; config/ and the leaves (%s) "
            "import nothing above them" % (
                len(graph), sum(len(v) for v in graph.values()), ", ".join(sorted(LEAVES & set(graph)))
            )
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
