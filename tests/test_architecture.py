"""The floors of buildsys import only downward (docs/design.md, "Architecture").

Read from the source with ``ast``, not by importing it: an import inside a
function or behind a condition counts as much as one at the top. Rules:

- a module imports only from its own floor or the floors below it;
- no import cycle between modules (the runtime imports, wherever they are);
- no ``buildsys`` import inside a function, except in ``cli/`` (it keeps the
  start of a command fast); ``if TYPE_CHECKING:`` imports are hints, not imports,
  and are left out of every rule;
- the adapters stay at their edge: only ``engine/`` imports the docker SDK,
  only ``cli/`` imports click.

Each test lists every violation it finds, one per line, with file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "buildsys"

# Bottom -> top. The package's own __init__ (the version) sits under every floor;
# __main__ is the command line's.
FLOORS = ("core", "model", "oci", "engine", "ecosystems", "lock", "fetch", "build", "ship", "use", "onramp",
          "ci", "cli")
FUNCTION_IMPORTS_ALLOWED = ("cli",)
# third-party package -> the only floor that may import it
ADAPTERS = {"docker": "engine", "click": "cli"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name (a module if it is one, else its package)
    path: Path  # relative to the folder above the package, as messages show it
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> int:
    """0 for the package itself, 1.. for the floors; ``__main__`` is on the cli floor."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    folder = "cli" if parts[1] == "__main__" else parts[1]
    return FLOORS.index(folder) + 1 if folder in FLOORS else -1


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, list[str], int, bool]] = []  # base, names, line, in a function
        self.depth = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, [], node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module.split(".")
            package = package if self.is_package else package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([base] if base else [])])
        self.found.append((base, [a.name for a in node.names], node.lineno, self.depth > 0))


def _collected(root: Path) -> dict[str, tuple[Path, _Collector]]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), str(path)))
        out[module] = (path, collector)
    return out


def imports_of(root: Path) -> tuple[list[str], list[Import]]:
    """Every module under ``root`` (a package folder) and every import of ``root``'s package it makes."""
    collected = _collected(root)
    modules = set(collected)
    top = root.name
    out: list[Import] = []
    for module, (path, collector) in collected.items():
        for base, names, line, in_function in collector.found:
            if base != top and not base.startswith(top + "."):
                continue
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules] or [base]
            if len(targets) < len(names):  # some names are attributes of base: base itself is imported too
                targets.append(base)
            while targets[0] not in modules and "." in targets[0]:  # `import a.b.c` of a non-module
                targets[0] = targets[0].rsplit(".", 1)[0]
            for target in dict.fromkeys(targets):
                if target != module:
                    out.append(Import(module, target, path.relative_to(root.parent), line, in_function))
    return sorted(modules), out


def adapter_leaks(root: Path) -> list[str]:
    out = []
    for module, (path, collector) in _collected(root).items():
        for base, _, line, _ in collector.found:
            home = ADAPTERS.get(base.split(".")[0])
            if home and (floor_of(module) < 1 or FLOORS[floor_of(module) - 1] != home):
                out.append(f"{path.relative_to(root.parent)}:{line}: {module} imports {base} (only {home}/ may)")
    return out


def upward(imports: list[Import]) -> list[str]:
    return [f"{i.path}:{i.line}: {i.importer} (floor {FLOORS[floor_of(i.importer) - 1]}) "
            f"imports {i.target} (floor {FLOORS[floor_of(i.target) - 1]}, above it)"
            for i in imports if floor_of(i.target) > floor_of(i.importer)]


def function_imports(imports: list[Import]) -> list[str]:
    allowed = {FLOORS.index(f) + 1 for f in FUNCTION_IMPORTS_ALLOWED}
    return [f"{i.path}:{i.line}: {i.importer} imports {i.target} inside a function"
            for i in imports if i.in_function and floor_of(i.importer) not in allowed]


def cycles(imports: list[Import]) -> list[str]:
    """One cycle per group of modules that import each other (a strongly connected component)."""
    graph = nx.DiGraph()
    graph.add_edges_from((i.importer, i.target) for i in imports)
    out = []
    for component in sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1):
        cycle = nx.find_cycle(graph.subgraph(component), source=component[0])
        out.append(" -> ".join([*(a for a, _ in cycle), cycle[0][0]]) +
                   (f"  (the group: {', '.join(component)})" if len(component) > len(cycle) else ""))
    return out


def _fail_with(kind: str, violations: list[str]) -> None:
    if violations:
        pytest.fail(f"{len(violations)} {kind}:\n  " + "\n  ".join(violations), pytrace=False)


@pytest.fixture(scope="module")
def graph() -> tuple[list[str], list[Import]]:
    return imports_of(PACKAGE)


def test_every_folder_is_a_floor(graph: tuple[list[str], list[Import]]) -> None:
    modules, _ = graph
    _fail_with("modules in no floor (add the folder to FLOORS here and to docs/design.md)",
               [m for m in modules if floor_of(m) < 0])


def test_no_upward_import(graph: tuple[list[str], list[Import]]) -> None:
    _fail_with("imports of a higher floor", upward(graph[1]))


def test_no_import_cycle(graph: tuple[list[str], list[Import]]) -> None:
    _fail_with("import cycles", cycles(graph[1]))


def test_no_buildsys_import_inside_a_function_outside_cli(graph: tuple[list[str], list[Import]]) -> None:
    _fail_with("imports inside a function", function_imports(graph[1]))


def test_docker_and_click_stay_in_their_adapter() -> None:
    _fail_with("imports of an adapter's library outside it", adapter_leaks(PACKAGE))


# The checker itself, on a small package written for it.

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "buildsys"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_sees_each_kind_of_violation(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "core/__init__.py": "",
        "core/a.py": "from buildsys.model.b import X\n",  # upward
        "model/__init__.py": "",
        "model/b.py": "from buildsys.core import a\n"  # down: fine, but closes a cycle with core.a
                      "def f():\n    from buildsys.model import c\n",  # inside a function
        "model/c.py": "from . import b\nimport buildsys.model.b\n",  # relative import, same floor
        "cli/__init__.py": "def main():\n    import buildsys.model.c\n",  # allowed in cli
        "oci/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from buildsys.cli import main\n",
        "engine/__init__.py": "import docker\n",
        "oci/e.py": "import docker.errors\nimport clickhouse\n",
    })
    modules, imports = imports_of(root)
    assert "buildsys.oci.d" in modules and not any(i.importer == "buildsys.oci.d" for i in imports)  # a hint
    assert ("buildsys.model.c", "buildsys.model.b") in {(i.importer, i.target) for i in imports}  # `from . import b`
    assert upward(imports) == [
        "buildsys/core/a.py:1: buildsys.core.a (floor core) imports buildsys.model.b (floor model, above it)"]
    assert function_imports(imports) == [
        "buildsys/model/b.py:3: buildsys.model.b imports buildsys.model.c inside a function"]
    assert adapter_leaks(root) == ["buildsys/oci/e.py:1: buildsys.oci.e imports docker.errors (only engine/ may)"]
    assert cycles(imports) == ["buildsys.core.a -> buildsys.model.b -> buildsys.core.a"
                               "  (the group: buildsys.core.a, buildsys.model.b, buildsys.model.c)"]
