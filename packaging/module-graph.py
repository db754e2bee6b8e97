#!/usr/bin/env python3
"""Checks that no module of a crate imports a module that imports it back (no cycle).

For each crate's `src/`, every file is a module (`a/b.rs` and `a/b/mod.rs` are `a::b`); its
`crate::x::y` and `super::x` paths (test modules left out) are edges between modules, cut to
DEPTH path segments (1: top-level modules, `container` -> `state`; 2: `container::spec` ->
`container::mounts`; ...). A cycle at any depth up to 3 is printed with its edges, and the
exit status is 1. `-v` prints the top-level edges of each crate too.

A textual check, not the compiler's view: a path in a string or a macro counts, a `use`
through a re-export counts as the module that re-exports. It is what `cargo modules
dependencies --acyclic` reports, without installing it.

    packaging/module-graph.py [-v]          # run from the repository's root
"""

import collections
import glob
import os
import re
import sys

CRATES = [
    "proto/src",
    "common/src",
    "monitor/src",
    "daemon/src",
    "daemon/child/src",
    "daemon/cni/src",
    "daemon/enter/src",
    "daemon/image/src",
    "daemon/mount/src",
    "daemon/pinns/src",
    "daemon/spdy/src",
    "tests/src",
]


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split("/")
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def edges_of(root, depth):
    edges = collections.defaultdict(set)
    for path in glob.glob(root + "/**/*.rs", recursive=True):
        module = module_of(root, path)
        if not module:
            continue
        with open(path, encoding="utf-8") as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut >= 0:
            text = text[:cut]
        me = "::".join(module[:depth])
        targets = []
        for found in re.findall(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            targets.append(found.split("::"))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            targets += [[name] for name in re.findall(r"\b([a-z_][a-z0-9_]*)\b", group)]
        if len(module) >= 2:
            parent = module[:-1]
            for found in re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", text):
                targets.append(parent + [found])
            for group in re.findall(r"\bsuper::\{([^}]*)\}", text):
                targets += [parent + [n] for n in re.findall(r"\b([a-z_][a-z0-9_]*)\b", group)]
        for target in targets:
            if target[-1] == "self":
                target = target[:-1]
            other = "::".join(target[:depth])
            if other and other != me and not me.startswith(other + "::"):
                if not other.startswith(me + "::"):
                    edges[me].add(other)
    return edges


def cycles(edges):
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def main():
    sys.setrecursionlimit(10000)
    verbose = "-v" in sys.argv[1:]
    status = 0
    for root in CRATES:
        if not os.path.isdir(root):
            continue
        for depth in (1, 2, 3):
            edges = edges_of(root, depth)
            if verbose and depth == 1:
                print(f"{root}:")
                for module in sorted(edges):
                    print(f"    {module} -> {' '.join(sorted(edges[module]))}")
            for component in cycles(edges):
                status = 1
                print(f"{root}: cycle (depth {depth}): {' '.join(component)}")
                for module in component:
                    inside = sorted(w for w in edges[module] if w in component)
                    print(f"    {module} -> {' '.join(inside)}")
    if status == 0:
        print("module-graph: no cycle in " + ", ".join(CRATES))
    return status


if __name__ == "__main__":
    sys.exit(main())
