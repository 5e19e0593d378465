#!/usr/bin/env python3
"""Check that the files of src/ depend on each other one way only, and
that no function is too long.

Reads the symbol tables of the object files (nm), draws an edge A -> B for
every function or variable that A.o uses and B.o defines, and fails when the
edges form a cycle, printing each edge of it with the symbols behind it.
Prints the layers (each file after everything it uses) when there is none.

Then measures every function of src/ (and src/dialects/) from its opening
brace to its closing one (PostgreSQL layout: both alone on their line at
column 0, the name at column 0 above): none may be over LIMIT lines, and
none of a file on the dispatcher's path (DISPATCHER_PATH: what runs for
every request, from claim to apply) over PATH_LIMIT.  Prints each one over.

Last, the SQL of install/ and the update script: no string literal holding
a backslash is a plain one ('...'); it must be an escape string (E'...').
A database of standard_conforming_strings = off reads a plain literal's
backslashes as escapes: '\d' of a regular expression became "d" there,
and a whole install or update failed on one (pg_regress api shows what it
broke).  Prints each one.

    test/layers.py [src]        # after make; exits 1 on a cycle or a long function

The last line counts the checks: "layers: N passed, N failed".
"""
import os
import re
import subprocess
import sys

LIMIT = 150
PATH_LIMIT = 100
DISPATCHER_PATH = {
    "dispatcher.c", "applier.c", "outbox.c", "apply.c", "writeback.c",
    "provider.c", "dialect.c", "spi.c", "http.c", "health.c", "poller.c",
    "feepull.c", "reconcile.c", "retry.c", "json.c", "mapping.c", "sign.c",
    "poison.c", "digest.c", "body.c",
}


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True,
                         text=True, check=True).stdout
    defined = {l.split()[-1] for l in out.splitlines() if l.strip()}
    out = subprocess.run(["nm", "-u", obj], capture_output=True, text=True,
                         check=True).stdout
    used = {l.split()[-1] for l in out.splitlines() if l.strip()}
    return defined, used


def c_files(src):
    """The .c files of src and of its subdirectories, as paths relative to src."""
    out = []
    for d, _, files in os.walk(src):
        for f in files:
            if f.endswith(".c"):
                out.append(os.path.relpath(os.path.join(d, f), src))
    return sorted(out)


def functions(path):
    """(name, first line, length) of each function defined in a C file."""
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        if lines[i] == "{":
            j = i - 1
            while j >= 0 and not re.match(r"^[A-Za-z_]\w*\(", lines[j]):
                if lines[j] == "" or lines[j].rstrip().endswith(";") or lines[j] == "}":
                    j = -1
                    break
                j -= 1
            k = i + 1
            while k < len(lines) and lines[k] != "}":
                k += 1
            if j >= 0:
                name = re.match(r"^([A-Za-z_]\w*)\(", lines[j]).group(1)
                out.append((name, j + 1, k - i + 1))
            i = k
        i += 1
    return out


def check_lengths(src):
    """Print the functions over the limits; returns how many there are."""
    over = 0
    for rel in c_files(src):
        limit = PATH_LIMIT if os.path.basename(rel) in DISPATCHER_PATH or \
            rel.startswith("dialects" + os.sep) else LIMIT
        for name, line, n in functions(os.path.join(src, rel)):
            if n > limit:
                print(f"too long: {rel}:{line} {name}() is {n} lines (limit {limit})")
                over += 1
    if over == 0:
        print(f"no function over {LIMIT} lines, none over {PATH_LIMIT} on the dispatcher's path")
    return over


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    cycle = check_cycles(src)
    if cycle == 2:
        return 2
    over = check_lengths(src)
    plain = check_sql_literals(os.path.join(src, ".."))
    failed = (1 if cycle else 0) + (1 if over else 0) + (1 if plain else 0)
    print(f"layers: {3 - failed} passed, {failed} failed")
    return 1 if failed else 0


def sql_literals(text):
    """(offset, escape string?, literal) of each string literal of text:
    comments skipped, a dollar quote's body read as SQL (function bodies
    are), a literal continued on the next line (whitespace with a newline
    between two) of the same kind as the one it continues."""
    i, n = 0, len(text)
    last_end, last_escape = -1, False
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c == "$":
            m = re.match(r"\$([A-Za-z_]*)\$", text[i:i + 64])
            if m:
                i += len(m.group(0))
                continue
        if c == "'":
            gap = text[last_end:i] if last_end >= 0 else "x"
            if gap.strip() == "" and "\n" in gap:
                escape = last_escape
            else:
                escape = i > 0 and text[i - 1] in "Ee" and \
                    (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            j = i + 1
            while j < n:
                if escape and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            yield i, escape, text[i:j + 1]
            last_end, last_escape = j + 1, escape
            i = j + 1
            continue
        i += 1


def check_sql_literals(top):
    files = sorted(os.path.join(top, "install", f)
                   for f in os.listdir(os.path.join(top, "install")) if f.endswith(".sql"))
    files.append(os.path.join(top, "pg_shipsync--0.1--0.2.sql"))
    found = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for pos, escape, lit in sql_literals(text):
            if not escape and "\\" in lit:
                line = text.count("\n", 0, pos) + 1
                print(f"{os.path.relpath(path, top)}:{line}: a backslash in a plain literal "
                      f"(write E'...', its backslashes doubled): {lit[:60]}")
                found += 1
    return found


def check_cycles(src):
    """Print the layers, or each cycle with its edges; 1 on a cycle."""
    objs = []
    for d, _, files in os.walk(src):
        objs += [os.path.relpath(os.path.join(d, f), src) for f in files if f.endswith(".o")]
    objs.sort()
    if not objs:
        print(f"no object files in {src}: run make first", file=sys.stderr)
        return 2
    owner, uses = {}, {}
    for o in objs:
        name = o[:-2] + ".c"
        d, u = symbols(os.path.join(src, o))
        for s in d:
            owner[s] = name
        uses[name] = u
    edges = {}
    for a, u in uses.items():
        for s in u:
            b = owner.get(s)
            if b and b != a:
                edges.setdefault(a, {}).setdefault(b, []).append(s)

    # Tarjan's strongly connected components: a component of more than one
    # file is a cycle
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
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
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(uses):
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in comps if len(c) > 1]
    if cycles:
        for c in cycles:
            print("cycle between " + ", ".join(c) + ":")
            for a in c:
                for b in sorted(edges.get(a, {})):
                    if b in c:
                        syms = sorted(edges[a][b])
                        more = f" (+{len(syms) - 4} more)" if len(syms) > 4 else ""
                        print(f"  {a} -> {b}: {', '.join(syms[:4])}{more}")
        return 1
    # comps come out leaves first
    level = {}
    for (v,) in comps:
        level[v] = 1 + max((level[w] for w in edges.get(v, {})), default=-1)
    for n in range(max(level.values()) + 1):
        print(f"layer {n}: " + " ".join(sorted(v for v in level if level[v] == n)))
    print("no cycle between the files of src/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
