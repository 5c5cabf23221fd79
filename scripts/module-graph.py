#!/usr/bin/env python3
"""Prints the import graph of the core crate's modules, and its circles.

Reads `crates/smol-offload/src/**/*.rs`, maps each file to its module path (`lib.rs` is
`crate`, `a/mod.rs` and `a.rs` are `crate::a`, a `#[path]` file its declared name), and
collects the paths each file names outside comments and test modules: `crate::a::b`,
`super::x`, `self::x`, and `x::y` where `x` is a child module declared in that file. A path
counts as an edge to the longest module it starts with or, for an item that module re-exports
(`pub use`), to the module that defines it. Then prints each strongly connected component with
more than one module (an import circle), and exits 1 if there is one.

    python3 scripts/module-graph.py            # circles only
    python3 scripts/module-graph.py --edges    # every edge, then the circles
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "crates", "smol-offload", "src")

MOD_DECL = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
PATH_ATTR = re.compile(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;')
# Paths made of `::`-separated words, possibly inside `use a::{b, c::d}` groups.
USE_ITEM = re.compile(r"\buse\s+([^;]+);", re.S)
PATH = re.compile(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip(text):
    """The code of `text` without comments, strings and test modules (`#[cfg(test)]`, `#[cfg(all(test, ...))]`)."""
    # One pass, so that `//` in a string and `"` in a comment are each what they are.
    token = re.compile(r'//[^\n]*|/\*.*?\*/|\br(#*)".*?"\1|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])\'', re.S)

    def blank(m):
        t = m.group(0)
        if t.startswith("/"):
            return "\n" * t.count("\n")
        if t.startswith("'"):
            return "' '"
        return '""'

    text = token.sub(blank, text)
    # A test module: from `#[cfg(test)] mod x {` to its matching brace.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\([^\]]*\btest\b[^\]]*\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """The flat paths of a `use` tree: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`, `a::c::e`."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)::\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"::\*$|as\w+$", "", tree)]
    prefix, body = m.groups()
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    paths = []
    for part in filter(None, parts):
        if part == "self":
            paths.append(prefix)
        else:
            paths.extend(expand_use(prefix + "::" + part))
    return paths


def modules():
    """Module path -> (file, child module names), found from `lib.rs` down."""
    found = {}

    def visit(path, file):
        text = open(file).read()
        code = strip(text)
        children = {}
        specials = {name: p for p, name in PATH_ATTR.findall(text)}
        base = os.path.dirname(file)
        own_dir = base if os.path.basename(file) in ("lib.rs", "mod.rs") else file[:-3]
        for name in MOD_DECL.findall(code):
            if name in specials:
                child = os.path.join(base, specials[name])
            elif os.path.exists(os.path.join(own_dir, name + ".rs")):
                child = os.path.join(own_dir, name + ".rs")
            else:
                child = os.path.join(own_dir, name, "mod.rs")
            children[name] = child
        found[path] = (file, list(children))
        for name, child in children.items():
            visit(path + "::" + name, child)

    visit("crate", os.path.join(SRC, "lib.rs"))
    return found


def absolute(mod, children, path):
    """The words of `path`, named in module `mod`, from the crate root; None outside the crate."""
    words = path.split("::")
    if words[0] == "crate":
        return words
    if words[0] == "super":
        return mod.split("::")[:-1] + words[1:]
    if words[0] == "self":
        return mod.split("::") + words[1:]
    if words[0] in children:
        return mod.split("::") + words
    return None


def module_of(found, full):
    """The longest module that the words `full` start with, and the words after it."""
    for n in range(len(full), 0, -1):
        candidate = "::".join(full[:n])
        if candidate in found:
            return candidate, full[n:]
    return None, []


def edges(found):
    uses = {}
    for mod, (file, children) in found.items():
        code = strip(open(file).read())
        paths = []
        for tree in USE_ITEM.findall(code):
            paths.extend(expand_use(tree))
        paths.extend(PATH.findall(code))
        uses[mod] = [full for full in (absolute(mod, children, p) for p in paths) if full]
    # Items a module re-exports (`pub use crate::a::Item` in `lib.rs`): a path to the
    # re-export is an edge to the module that defines the item.
    reexports = {}
    for mod, (file, children) in found.items():
        code = strip(open(file).read())
        for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", code, re.S):
            for p in expand_use(tree):
                full = absolute(mod, children, p)
                target, rest = module_of(found, full) if full else (None, [])
                if target and rest:
                    reexports[(mod, rest[-1])] = target
    graph = {m: set() for m in found}
    for mod, paths in uses.items():
        for full in paths:
            target, rest = module_of(found, full)
            if target and rest and (target, rest[0]) in reexports:
                target = reexports[(target, rest[0])]
            if target and target != mod and target != "crate":
                graph[mod].add(target)
    return graph


def circles(graph):
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def main():
    found = modules()
    graph = edges(found)
    if "--edges" in sys.argv:
        for mod in sorted(graph):
            for target in sorted(graph[mod]):
                print(f"{mod} -> {target}")
    comps = circles(graph)
    print(f"{len(found)} modules, {sum(map(len, graph.values()))} edges, {len(comps)} circles")
    for comp in comps:
        print(f"circle of {len(comp)}:")
        for mod in comp:
            inside = sorted(t for t in graph[mod] if t in comp)
            print(f"  {mod} -> {', '.join(inside)}")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main())
