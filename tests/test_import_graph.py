"""
The import graph of popgate/, read from the source (nothing is imported):
no cycles, and no function-level imports of popgate modules or of the
global reactor except those allowed below, each with its reason.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from tests.popgate_server import REPO

ROOT = os.path.join(REPO, "popgate")

#: (module, function, imported module) -> why it is imported there.
ALLOWED_POPGATE = {
    ("popgate.testing.pytest_plugin", "pop3_server", "popgate.testing"):
        "pytest loads the plugin at start-up; the fixture imports the server only when used",
    ("popgate.testing.pytest_plugin", "pop3_memory_server", "popgate.testing"):
        "as pop3_server: Twisted is imported only by a test that uses the fixture",
    ("popgate.migrate.target", "open_target", "popgate.stores.pg_connections"):
        "psycopg is imported only when popgate migrate runs, not by every popgate command",
    ("popgate.migrate.target", "open_target", "popgate.stores.postgresql"):
        "as pg_connections (the store's lock key)",
}

#: (module, function) -> why the global reactor is looked up there.
ALLOWED_REACTOR = {
    ("popgate.tap", "makeService"): "the twistd entry point: twistd passes no reactor",
    ("popgate.delivery.deliver", "run"): "the `popgate deliver` entry point",
    ("popgate.admin.run", "_reactor"): "the entry point of the admin commands that run the "
                                       "reactor (check-config, auth, who, kick)",
    ("popgate.migrate.command", "_reactor"): "the `popgate migrate` entry point",
    ("popgate.cred.factories", "global_reactor"):
        "strcred factories are called with an argument string only",
    ("popgate.testing.reactor_thread", "_reactor"):
        "the in-process test server runs the global reactor in a thread",
}


def modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST, module: str, is_package: bool,
            function: str | None = None) -> Iterator[tuple[str | None, str]]:
    """(enclosing function or None, imported module) for every import that
    runs (not under C{if TYPE_CHECKING}); C{from X import name} counts as
    an import of C{X.name} when that is a module (see L{edges})."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                yield from imports(child, module, is_package, function)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from imports(node, module, is_package, node.name)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield function, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                yield function, f"{base}.{alias.name}"
            yield function, base
        else:
            yield from imports(node, module, is_package, function)


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The module-level import edges between popgate modules, and every
    function-level import (module, function, what)."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    local: list[tuple[str, str, str]] = []
    for module, path in known.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        seen: set[tuple[str | None, str]] = set()
        for function, name in imports(tree, module, path.endswith("__init__.py")):
            if (function, name) in seen:
                continue
            seen.add((function, name))
            if function is not None:
                local.append((module, function, name))
            elif name in known and name != module:
                edges[module].add(name)
    # "from package import submodule" imports the submodule, not a cycle
    # through the package: drop the package edge when a submodule edge
    # from the same statement exists.
    for module, targets in edges.items():
        for target in list(targets):
            if any(t.startswith(target + ".") for t in targets) and target != module:
                if not _names_from(known[module], target):
                    targets.discard(target)
    return edges, local


def _names_from(path: str, package: str) -> bool:
    """Whether a C{from package import ...} in C{path} imports a name that
    is not a submodule (so the package's own code is needed)."""
    known = modules()
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package and not node.level:
            if any(f"{package}.{a.name}" not in known for a in node.names):
                return True
        if isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return True
    return False


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    edges, _ = graph()
    assert "popgate.build" in edges["popgate.tap"]
    assert "popgate.settings" in edges["popgate.config"]
    assert len(edges) > 50


def test_no_import_cycles() -> None:
    edges, _ = graph()
    assert cycles(edges) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_of_popgate_modules_are_allowed_ones() -> None:
    _, local = graph()
    known = modules()
    found = {(m, f, name) for m, f, name in local if name in known}
    assert found - set(ALLOWED_POPGATE) == set()
    assert set(ALLOWED_POPGATE) - found == set(), "allowed but gone: remove from the list"


def test_the_global_reactor_is_looked_up_only_where_allowed() -> None:
    _, local = graph()
    found = {(m, f) for m, f, name in local
             if name in ("twisted.internet.reactor", "twisted.internet")}
    # "from twisted.internet import reactor" yields both names; other
    # twisted.internet imports in functions name what they import.
    found = {(m, f) for m, f in found
             if any(n == "twisted.internet.reactor" for mm, ff, n in local if (mm, ff) == (m, f))}
    assert found - set(ALLOWED_REACTOR) == set()
    assert set(ALLOWED_REACTOR) - found == set(), "allowed but gone: remove from the list"
