#!/usr/bin/env python3
"""Check that the files of src/ depend on each other one way only.

Reads the symbol tables of the object files (nm), draws an edge A -> B for
every function or variable that A.o uses and B.o defines, and fails when the
edges form a cycle, printing each edge of it with the symbols behind it.
Prints the layers (each file after everything it uses) when there is none.

    test/layers.py [src]        # after make; exits 1 on a cycle
"""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True,
                         text=True, check=True).stdout
    defined = {l.split()[-1] for l in out.splitlines() if l.strip()}
    out = subprocess.run(["nm", "-u", obj], capture_output=True, text=True,
                         check=True).stdout
    used = {l.split()[-1] for l in out.splitlines() if l.strip()}
    return defined, used


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "src")
    objs = sorted(f for f in os.listdir(src) if f.endswith(".o"))
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
