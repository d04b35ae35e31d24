"""No import cycles among the modules of src/bitswitch.

The graph counts every import statement wherever it is (module level and inside functions: a
function-level import only hides a cycle until the function runs) and ``importlib.import_module``
calls whose name starts with a constant (an edge to every module under that prefix). ``from pkg
import name`` depends on the submodule ``pkg.name`` when there is one, else on ``pkg`` itself; the
implicit import of a module's parent packages is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bitswitch

ROOT = Path(bitswitch.__file__).parent
KNOWN: list[set[str]] = []   # cycles being broken; none left


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ["bitswitch", *path.relative_to(ROOT).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _base(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    """The absolute name of a (possibly relative) import target."""
    if not level:
        return name or ""
    parts = module.split(".")[: len(module.split(".")) - (0 if is_pkg else 1)]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for module, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, is_pkg, node.level, node.module)
                for a in node.names:
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
            elif (isinstance(node, ast.Call) and node.args
                  and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
                first = node.args[0]
                head = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    text = head.value
                    level = len(text) - len(text.lstrip("."))
                    prefix = _base(module, is_pkg, level, text.lstrip(".") or None) if level else text
                    deps.update(m for m in mods if m == prefix or m.startswith(prefix.rstrip(".") + "."))
        deps.discard(module)
        graph[module] = {d for d in deps if d in mods}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _describe(comps) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in comps)


def test_the_graph_sees_module_function_and_dynamic_imports():
    g = import_graph()
    assert "bitswitch.switching" in g["bitswitch.adapters"]              # module level
    assert "bitswitch.loading" in g["bitswitch.commands.profiles"]       # inside a function
    assert "bitswitch.commands.search" in g["bitswitch.cli"]             # importlib.import_module(f"...")
    assert "bitswitch.export" not in g["bitswitch.models"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_cycles_beyond_the_known_ones():
    """Cycles fixed stay fixed: every cycle left is one of KNOWN (or part of one)."""
    new = [c for c in cycles(import_graph()) if not any(c <= k for k in KNOWN)]
    assert not new, f"import cycles: {_describe(new)}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles: {_describe(found)}"
