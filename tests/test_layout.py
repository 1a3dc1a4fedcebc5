"""The package's layout stays as docs/architecture.md ("Repository layout") draws it: no import circles between its
modules, counting imports inside functions too (a lazy import that points back up is a
circle all the same, only hidden)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "efficientad_fast"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path, top: Path = ROOT.parent) -> str:
    parts = list(path.relative_to(top).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(root.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, from every import statement in the file
    (module level and inside functions). ``from pkg import name`` counts as importing
    ``pkg.name`` when that is a module, else ``pkg``."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    graph = import_graph(package_modules())
    assert len(graph) > 20  # the walk found the package
    assert find_cycles(graph) == [], "import circles between package modules"


def test_cycle_finder_sees_function_level_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n    return a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..a import thing\n")
    modules = {_module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    graph = import_graph(modules)
    assert graph[f"{PACKAGE}.sub.c"] == {f"{PACKAGE}.a"}
    assert find_cycles(graph) == [[f"{PACKAGE}.a", f"{PACKAGE}.b"]]


@pytest.mark.parametrize("module", ["op.ops", "op._library", "teachers", "model", "deploy.anomalib_io"])
def test_former_circles_are_gone(module):
    """op.ops <-> op._library (then ops <-> _extension) and compat -> model -> teachers -> compat were circles (issue 11)."""
    graph = import_graph(package_modules())
    name = f"{PACKAGE}.{module}"
    reachable, todo = set(), [name]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    assert name not in reachable


# -- sizes, the version, what the repository cites (issue 23) ------------------------------------

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
REPO = ROOT.parent


def function_code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's code: from its first statement after the docstring to its end
    (the formatter writes a long signature one parameter a line; neither it nor the
    docstring is logic to split)."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


def test_no_module_over_600_lines_and_no_function_over_80():
    """The package's modules and the bench/ scripts (their ``main`` too: a script is read
    like any module)."""
    too_long = []
    bench_scripts = {f"bench/{p.name}": p for p in sorted((REPO / "bench").glob("*.py"))}
    for name, path in {**package_modules(), **bench_scripts}.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = function_code_lines(node)
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines of code")
    assert too_long == []


def test_the_size_rule_counts_code_not_signature_or_docstring():
    source = 'def f(\n    a,\n    b,\n):\n    """Doc\n    more."""\n    x = a\n    return x + b\n'
    assert function_code_lines(ast.parse(source).body[0]) == 2


def test_the_version_is_written_once():
    namespace: dict = {}
    exec((ROOT / "_version.py").read_text(), namespace)
    version = namespace["__version__"]
    holders = [
        p.relative_to(REPO)
        for p in [*ROOT.rglob("*.py"), REPO / "pyproject.toml", REPO / "setup.py", REPO / "CMakeLists.txt"]
        if f'"{version}"' in p.read_text() or f"VERSION {version}" in p.read_text()
    ]
    assert holders == [Path(PACKAGE) / "_version.py"]
    import efficientad_fast

    assert efficientad_fast.__version__ == version
    assert (ROOT / "py.typed").is_file()


def test_nothing_cites_a_file_outside_the_repository():
    cited = []
    for path in [
        *REPO.glob("*.md"),
        *(REPO / "docs").rglob("*.md"),
        *ROOT.rglob("*.py"),
        *(REPO / "tests").glob("*.py"),
        *(REPO / "bench").glob("*.py"),
    ]:
        text = path.read_text()
        for needle in ("DESIGN.md", "../shared", "/work/shared"):
            if needle in text and path.name != "test_layout.py":
                cited.append(f"{path.relative_to(REPO)}: {needle}")
    assert cited == []


def test_every_relative_import_names_a_module_of_the_package():
    """Function-level imports run only when called: one that points at a module that moved
    would fail then, not at import. Each ``from .x import`` must name an existing module."""
    missing = []
    for name, path in package_modules().items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = _resolve(name, is_package, node)
                folder = REPO / Path(*target.split("."))
                if not (folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()):
                    missing.append(f"{name} line {node.lineno}: {target}")
    assert missing == []
