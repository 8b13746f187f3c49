#!/usr/bin/env python3
"""Fails when modules of src/ import each other in a cycle.

Two levels are checked: the top-level modules of the library (`admission`,
`stores`, ...), and, inside every folder module, its direct children (the
files and folders of `kube/`, `stores/`, ...). A module "imports" another
when its code names a path into it: `use crate::x::...`, `crate::x::f()`,
`super::y::...`, `self::z::...`, including names that a module re-exports
with `pub use`. Test code (`#[cfg(test)]` items and `mod tests;` files) is
not counted: tests may reach anywhere. Items of a folder's own `mod.rs`
belong to the folder, not to one of its children.

Usage: scripts/check-module-cycles.py [--graph] [SRC_DIR]   (default: src)
With --graph it prints the imports between top-level modules instead
(what docs/architecture.md draws).
"""

import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line numbers."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        raw = re.match(r'(b?r)(#*)"', text[i:])
        if raw and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + raw.group(2)
            j = text.find(end, i + raw.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def skip_item(code, start):
    """End of the item starting at `start`: after its `;`, or after its
    braced body, whichever comes first."""
    depth = 0
    for j in range(start, len(code)):
        ch = code[j]
        if ch == ";" and depth == 0:
            return j + 1
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(code)


def remove_test_items(code):
    """Blanks every `#[cfg(test)]` item; returns the code and the names of
    `#[cfg(test)] mod name;` file modules."""
    test_files = set()
    pieces, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < pos:
            continue
        decl = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code[m.end():])
        if decl:
            test_files.add(decl.group(1))
        end = skip_item(code, m.end())
        pieces.append(code[pos:m.start()])
        pieces.append("\n" * code.count("\n", m.start(), end))
        pos = end
    pieces.append(code[pos:])
    return "".join(pieces), test_files


def module_files(src):
    """Maps module paths (tuples) to files, skipping test-only files."""
    modules = {}
    pending = [((), os.path.join(src, "lib.rs"))]
    while pending:
        path, file = pending.pop()
        modules[path] = file
        with open(file, encoding="utf-8") as f:
            code = strip_comments_and_strings(f.read())
        code, test_files = remove_test_items(code)
        if path == ():
            base = src
        elif os.path.basename(file) == "mod.rs":
            base = os.path.dirname(file)
        else:
            base = file[: -len(".rs")]
        for m in re.finditer(r"^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code, re.M):
            name = m.group(1)
            if name in test_files:
                continue
            explicit = re.search(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+' + name + r"\b", code)
            candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            if explicit:
                candidates.insert(0, os.path.join(os.path.dirname(file), explicit.group(1)))
            for c in candidates:
                if os.path.isfile(c):
                    pending.append((path + (name,), c))
                    break
    return modules


def parse_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [["a","b"], ["a","c","d"], ["a","c","e"]]."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        parts = [p.strip() for p in tree.split("::") if p.strip()]
        if parts and " as " in parts[-1]:
            parts[-1] = parts[-1].split(" as ")[0].strip()
        return [parts] if parts else []
    prefix = [p.strip() for p in tree[:brace].split("::") if p.strip()]
    inner = tree[brace + 1 : tree.rfind("}")]
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    out = []
    for item in items:
        for sub in parse_use_tree(item):
            out.append(prefix + sub)
    return out


def absolute(module, parts):
    """Makes a path absolute (a tuple from the crate root), or None when it
    does not start in the crate."""
    if not parts:
        return None
    head = parts[0]
    if head == "crate":
        return tuple(parts[1:])
    cur = list(module)
    if head == "self":
        return tuple(cur + parts[1:])
    if head == "super":
        i = 0
        while i < len(parts) and parts[i] == "super":
            if not cur:
                return None
            cur.pop()
            i += 1
        return tuple(cur + parts[i:])
    return None


def analyse(src):
    modules = module_files(src)
    codes = {}
    reexports = defaultdict(dict)  # module -> name -> absolute path it re-exports
    for module, file in modules.items():
        with open(file, encoding="utf-8") as f:
            code, _ = remove_test_items(strip_comments_and_strings(f.read()))
        codes[module] = code
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", code):
            for parts in parse_use_tree(m.group(1)):
                target = absolute(module, parts)
                if target is None and parts and parts[0] in {p[len(module)] for p in modules if len(p) > len(module) and p[: len(module)] == module}:
                    target = module + tuple(parts)
                if target:
                    reexports[module][parts[-1]] = target

    def resolve(path, depth=0):
        """The deepest module a path leads into, following re-exports."""
        best = ()
        for i in range(len(path), 0, -1):
            if tuple(path[:i]) in modules:
                best = tuple(path[:i])
                break
        rest = path[len(best):]
        if rest and depth < 10 and rest[0] in reexports.get(best, {}):
            return resolve(reexports[best][rest[0]] + tuple(rest[1:]), depth + 1)
        return best

    edges = []  # (from module, to module, file, line)
    for module, code in codes.items():
        if module == ():
            continue
        refs = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            for parts in parse_use_tree(m.group(1)):
                refs.append((parts, m.start()))
        for m in re.finditer(r"(?<![:\w])((?:crate|super|self)(?:\s*::\s*" + IDENT + r")+)", code):
            parts = [p.strip() for p in m.group(1).split("::")]
            refs.append((parts, m.start()))
        for parts, offset in refs:
            # A path naming a child module of this one by its bare name.
            if parts and parts[0] not in ("crate", "super", "self") and module + (parts[0],) in modules:
                target = module + tuple(parts)
            else:
                target = absolute(module, parts)
            if target is None:
                continue
            line = code.count("\n", 0, offset) + 1
            edges.append((module, resolve(list(target)), modules[module], line))
    return modules, edges


def cycles(nodes, graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "--graph"]
    src = args[0] if args else "src"
    modules, edges = analyse(src)
    if "--graph" in sys.argv[1:]:
        graph = defaultdict(set)
        for frm, to, _, _ in edges:
            if frm and to and frm[0] != to[0]:
                graph[frm[0]].add(to[0])
        for m in sorted(graph):
            print(f"{m} -> {', '.join(sorted(graph[m]))}")
        return 0
    # Level of each check: the children of every folder (the crate root's
    # children are the top-level modules).
    folders = {m[:-1] for m in modules if m}
    failures = 0
    for folder in sorted(folders, key=lambda f: (len(f), f)):
        depth = len(folder)
        children = {m[depth] for m in modules if len(m) > depth and m[:depth] == folder}
        graph, witness = defaultdict(set), {}
        for frm, to, file, line in edges:
            if len(frm) <= depth or len(to) <= depth or frm[:depth] != folder or to[:depth] != folder:
                continue
            a, b = frm[depth], to[depth]
            if a != b:
                graph[a].add(b)
                witness.setdefault((a, b), f"{file}:{line}")
        for comp in cycles(children, graph):
            failures += 1
            where = "::".join(("crate",) + folder)
            print(f"import cycle among the modules of {where}: {' <-> '.join(comp)}")
            for a in comp:
                for b in comp:
                    if (a, b) in witness:
                        print(f"  {a} -> {b}  ({witness[(a, b)]})")
    if failures:
        print(f"{failures} import cycle(s); a module must not import from a module that imports it")
        return 1
    print(f"no import cycles among {len(modules) - 1} modules of {src}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
