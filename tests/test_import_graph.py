"""The package's import graph, read from the source (every import, function-level ones included):
no cycles, no module importing another module's private name, and the runtime never importing the
converter (only `pocketomni.convert` itself and the command line, which offers `convert`/`synth` and
builds the demo model, may)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pocketomni

PACKAGE = Path(pocketomni.__file__).resolve().parent
MAY_IMPORT_CONVERTER = ("pocketomni.convert", "pocketomni.cli")


def package_modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports(mods: dict[str, Path]) -> Iterator[tuple[str, str, str | None, int]]:
    """(importing module, imported module, imported name or None, line) for pocketomni imports."""
    for name, f in mods.items():
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "pocketomni":
                        yield name, a.name, None, node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    full = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                if full.split(".")[0] != "pocketomni":
                    continue
                for a in node.names:
                    if f"{full}.{a.name}" in mods:
                        yield name, f"{full}.{a.name}", None, node.lineno
                    else:
                        yield name, full, a.name, node.lineno


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_graph_is_read() -> None:
    mods = package_modules()
    found = list(imports(mods))
    assert {"pocketomni.omni", "pocketomni.chat.chat", "pocketomni.convert.pipeline"} <= set(mods)
    # function-level imports count: omni creates chats inside a method
    assert any(src == "pocketomni.omni" and dst == "pocketomni.chat.chat" for src, dst, _, _ in found)


def test_no_import_cycles() -> None:
    mods = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _, _ in imports(mods):
        if dst in mods and dst != src and not src.startswith(dst + "."):  # a package's own parents load first
            graph[src].add(dst)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_names_across_modules() -> None:
    bad = [f"{src}:{line} imports {dst}.{name}" for src, dst, name, line in imports(package_modules())
           if name and name.startswith("_") and not name.startswith("__") and dst != src]
    assert bad == []


def test_the_runtime_never_imports_the_converter() -> None:
    bad = [f"{src}:{line} imports {dst}" for src, dst, _, line in imports(package_modules())
           if dst.startswith("pocketomni.convert") and not src.startswith(MAY_IMPORT_CONVERTER)]
    assert bad == []
