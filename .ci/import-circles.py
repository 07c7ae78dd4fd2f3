#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a circle.

For every crate of the workspace (a folder with Cargo.toml and src/), each file is a module
(`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). A reference is any `crate::`, `super::` or
`self::` path in the file, in a `use` tree or inline, resolved to the longest module it names.
References are compared among siblings: `a::x` using `b::y` means `a` depends on `b` (both
children of the root). A module's use of its own parent or child is not counted: a folder's
mod.rs is the interface its children share. Test code (`#[cfg(test)]` modules and uses) is
left out. Any circle among siblings is reported with the
references that make it, and the script exits 1.

Usage: python3 .ci/import-circles.py [ROOT]   (default: the repository root)
"""

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
USE_RE = re.compile(r"\buse\s+((?:crate|super|self)\b[^;]*);", re.S)
INLINE_RE = re.compile(r"\b((?:crate|super|self)(?:::" + IDENT + r")+)")


def strip_comments(text):
    """Removes // and /* */ comments and string literals' contents (keeps line count)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == '"' and (i == 0 or text[i - 1] not in "'r#"):
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


TEST_RE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?(mod\s+" + IDENT + r"\s*\{|use\b[^;]*;)")


def strip_tests(text):
    """Removes `#[cfg(test)]` modules and uses: test code may reach across the layers."""
    while True:
        m = TEST_RE.search(text)
        if not m:
            return text
        end = m.end()
        if m.group(1).endswith("{"):
            depth = 1
            while end < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
        text = text[: m.start()] + text[end:]


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs dropped)."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def parse(s, i, prefix):
        paths, cur = [], ""
        while i < len(s):
            ch = s[i]
            if ch == "{":
                inner, i = parse(s, i + 1, prefix + cur)
                paths.extend(inner)
                cur = None
            elif ch == "}":
                if cur:
                    paths.append(prefix + cur)
                return paths, i + 1
            elif ch == ",":
                if cur:
                    paths.append(prefix + cur)
                cur = ""
                i += 1
                continue
            else:
                if cur is None:
                    cur = ""
                cur += ch
            if ch != "{":
                i += 1
        if cur:
            paths.append(prefix + cur)
        return paths, i

    paths, _ = parse(tree, 0, "")
    return [p.rstrip("*").rstrip(":") for p in paths]


def module_of(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts in (["lib"], ["main"]):
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def resolve(here, path, modules):
    """The module a `crate::`/`super::`/`self::` path names (longest known prefix)."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    else:
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                if not base:
                    return None
                base = base[:-1]
            segs = segs[1:]
        rest = segs
    best = base if base in modules else None
    cur = base
    for s in rest:
        cur = cur + (s,)
        if cur in modules:
            best = cur
        else:
            break
    return best


def sccs(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            out.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def check_crate(src):
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f): f for f in files}
    # sibling edges: parent -> {(a, b): [why]}
    edges = {}
    for mod, f in modules.items():
        text = strip_tests(strip_comments(f.read_text()))
        refs = set()
        for m in USE_RE.finditer(text):
            refs.update(expand_use(m.group(1)))
        refs.update(INLINE_RE.findall(text))
        for ref in refs:
            target = resolve(mod, ref, modules)
            if target is None or target == mod:
                continue
            k = 0
            while k < min(len(mod), len(target)) and mod[k] == target[k]:
                k += 1
            if k == len(mod) or k == len(target):
                continue  # parent and child
            parent = mod[:k]
            a, b = mod[k], target[k]
            edges.setdefault(parent, {}).setdefault((a, b), []).append(
                f"{f.relative_to(src.parent)} uses {ref}"
            )
    problems = []
    for parent, pairs in edges.items():
        graph = {}
        for a, b in pairs:
            graph.setdefault(a, set()).add(b)
        nodes = sorted(set(graph) | {b for s in graph.values() for b in s})
        for comp in sccs(nodes, graph):
            if len(comp) < 2:
                continue
            where = "::".join(("crate",) + parent)
            lines = [f"circle in {src.parent.name}/src ({where}): {' <-> '.join(sorted(comp))}"]
            for (a, b), why in sorted(pairs.items()):
                if a in comp and b in comp:
                    lines.append(f"  {a} -> {b}: {why[0]}")
            problems.append("\n".join(lines))
    return problems, len(modules)


def main():
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems, crates, count = [], 0, 0
    for manifest in sorted(root.glob("**/Cargo.toml")):
        if "target" in manifest.parts or not (manifest.parent / "src").is_dir():
            continue
        found, n = check_crate(manifest.parent / "src")
        problems.extend(found)
        crates += 1
        count += n
    for p in problems:
        print(p)
    print(f"import circles: {len(problems)} in {crates} crates, {count} modules")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
