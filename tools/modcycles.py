#!/usr/bin/env python3
"""Prints the import cycles between gatehouse-core's modules; exit 1 when there is one.

A module is a file under core/src. `crate::a::b::c` in module M is an edge from M to the
deepest module file that path names; `super::x` and `self::x` are resolved the same way.
A parent's `mod child;` is not an edge, nor is a parent's use of its own children (it
declares them). Code under `#[cfg(test)]` is left out: a test may build its fixtures
from the whole policy; the library's modules may not depend on each other in a circle.
"""
import os, re, sys

import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core", "src")


def analyse(ROOT):

    def module_of(path):
        rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib"):
            rel = rel[:-1]
        return tuple(rel)

    mods = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                p = os.path.join(d, f)
                mods[module_of(p)] = p

    def deepest(parts):
        for n in range(len(parts), 0, -1):
            if tuple(parts[:n]) in mods:
                return tuple(parts[:n])
        return None

    PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        src = open(p).read()
        # strip comments (doc links name modules without importing them)
        src = re.sub(r"//[^\n]*", "", src)
        # strip `#[cfg(test)]` items: from the attribute to the end of its block
        out, i = [], 0
        for c in re.finditer(r"#\[cfg\(test\)\]", src):
            if c.start() < i:
                continue
            out.append(src[i:c.start()])
            j = src.find("{", c.end())
            semi = src.find(";", c.end())
            if j < 0 or (0 <= semi < j):
                i = semi + 1
                continue
            depth = 0
            for k in range(j, len(src)):
                if src[k] == "{":
                    depth += 1
                elif src[k] == "}":
                    depth -= 1
                    if depth == 0:
                        break
            i = k + 1
        out.append(src[i:])
        src = "".join(out)
        is_dir = os.path.basename(p) in ("mod.rs", "lib.rs")
        # grouped imports: expand `use crate::a::{b::c, d}` one level
        for g in re.finditer(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^{}]*)\}", src):
            base = g.group(2).split("::")[1:]
            for item in g.group(3).split(","):
                item = item.strip().split(" as ")[0]
                if item:
                    src += f"\n{g.group(1)}::{'::'.join(base + item.split('::'))}"
        for h in PATH.finditer(src):
            kind, rest = h.group(1), [x for x in h.group(2).split("::") if x and x != "{"]
            if kind == "crate":
                base = []
            elif kind == "self":
                base = list(m) if is_dir else list(m[:-1]) + [m[-1]]
                base = list(m)
            else:
                base = list(m[:-1]) if is_dir else list(m[:-1])
                while rest and rest[0] == "super":
                    rest = rest[1:]
                    base = base[:-1]
            t = deepest(base + rest)
            # A module's own descendants are its to use: it declares them.
            if t is not None and t != m and t[: len(m)] != m:
                edges[m].add(t)

    # Tarjan's strongly connected components
    index, low, on, stack, sccs, n = {}, {}, set(), [], [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = []
            while True:
                w = stack.pop(); on.discard(w); c.append(w)
                if w == v: break
            if len(c) > 1: sccs.append(c)
    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index: visit(v)
    return mods, edges, sccs


def self_test():
    """The check must see a cycle where there is one, through `super::` and a group."""
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "a"))
        files = {
            "lib.rs": "pub mod a;\npub mod b;\n",
            "a/mod.rs": "pub mod c;\n",
            "a/c.rs": "use super::super::b::X;\n#[cfg(test)]\nmod tests { use crate::b; }\n",
            "b.rs": "use crate::{a::c::Y, lib};\npub struct X;\n",
        }
        for f, text in files.items():
            with open(os.path.join(d, f), "w") as out:
                out.write(text)
        _, edges, sccs = analyse(d)
        assert [sorted(c) for c in sccs] == [[("a", "c"), ("b",)]], sccs
        assert ("b",) in edges[("a", "c")] and ("a", "c") in edges[("b",)], edges


self_test()
mods, edges, sccs = analyse(ROOT)
name = lambda m: "::".join(m) or "crate"
for c in sccs:
    cs = set(c)
    print(f"cycle of {len(c)} modules: " + ", ".join(sorted(map(name, c))))
    for a in sorted(c):
        for b in sorted(edges[a] & cs):
            print(f"  {name(a)} -> {name(b)}")
print(f"{len(mods)} modules, {sum(map(len, edges.values()))} edges, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
