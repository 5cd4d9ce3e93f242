"""The package layering, read from the source: imports run one way, with no cycle.

Layers, bottom up: `onnxship.core` (torch-free primitives) < the libraries `models`, `export`,
`calibrate`, `runtime_bench` < the workflow (`pipeline`, `manifest`, `verify`, `gate`, ...)
< the CLI (`onnxship.cli`, `onnxship.commands`). Every import counts, also those inside
functions: a lazy import still makes a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> import name (pyproject's [tool.setuptools.package-dir]).
PACKAGE_DIRS = {
    "onnxship": "onnxship",
    "models": "onnxship.models",
    "export": "onnxship.export",
    "calibrate": "onnxship.calibrate",
    "runtime_bench": "onnxship.runtime_bench",
}
LIBRARIES = ("onnxship.core", "onnxship.models", "onnxship.export", "onnxship.calibrate",
             "onnxship.runtime_bench")  # fmt: skip
CLI = ("onnxship.cli", "onnxship.commands", "onnxship.__main__")  # __main__: python -m onnxship
# What each library may import from onnxship (besides itself); the bench side stays torch-free.
ALLOWED = {
    "onnxship.core": ("onnxship.core",),
    "onnxship.runtime_bench": ("onnxship.core",),
    "onnxship.models": ("onnxship.core",),
    "onnxship.export": ("onnxship.core", "onnxship.models", "onnxship.runtime_bench"),
    "onnxship.calibrate": ("onnxship.core", "onnxship.runtime_bench"),
}
TORCH_FREE = ("onnxship.core", "onnxship.runtime_bench")
HEAVY = ("torch", "torchvision", "onnx", "onnxscript", "onnx_ir")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGE_DIRS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _imports(module: str, path: Path) -> set[str]:
    """Every module `module` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from pkg import submodule` imports the submodule too.
            names.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in SOURCES)
    return names


GRAPH = {m: {i for i in _imports(m, p) if i in SOURCES and i != m} for m, p in SOURCES.items()}
ALL_IMPORTS = {m: _imports(m, p) for m, p in SOURCES.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_layering_sees_every_package() -> None:
    for library in LIBRARIES:
        assert any(_within(m, (library,)) for m in SOURCES), library
    assert len(SOURCES) > 40


@pytest.mark.parametrize("library", LIBRARIES)
def test_library_imports_only_lower_layers(library: str) -> None:
    bad = []
    for module, imported in ALL_IMPORTS.items():
        if not _within(module, (library,)):
            continue
        for name in imported:
            if name.startswith("onnxship") and not _within(name, (library, *ALLOWED[library])):
                if name == "onnxship":
                    bad.append(f"{module} -> onnxship (the package root; import onnxship.core)")
                else:
                    bad.append(f"{module} -> {name}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    bad = [
        f"{module} -> {name}"
        for module, imported in ALL_IMPORTS.items()
        if not _within(module, CLI)
        for name in imported
        if _within(name, CLI)
    ]
    assert not bad, bad


@pytest.mark.parametrize("package", TORCH_FREE)
def test_bench_side_imports_no_torch_or_onnx(package: str) -> None:
    bad = [
        f"{module} -> {name}"
        for module, imported in ALL_IMPORTS.items()
        if _within(module, (package,))
        for name in imported
        if name.split(".")[0] in HEAVY
    ]
    assert not bad, bad


# The config dataclasses the CLI reads its flags from: loaded by `onnxship CMD --help`, so at
# import time they may load only these (their methods may import the stage's library lazily).
CONFIG_MODULES = ("onnxship.models.sgd_config", "onnxship.models.train_config",
                  "onnxship.models.prune_config", "onnxship.models.distill_config",
                  "onnxship.calibrate.quantize_config")  # fmt: skip
CONFIG_IMPORTS = ("onnxship.core", "onnxship.models.errors", "onnxship.calibrate.errors",
                  "onnxship.calibrate.recipes", *CONFIG_MODULES)  # fmt: skip


def _top_level_imports(path: Path) -> set[str]:
    """The absolute modules imported by `path`'s top-level statements (not inside functions)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_modules_load_no_library(module: str) -> None:
    imported = _top_level_imports(SOURCES[module])
    bad = sorted(
        name
        for name in imported
        if name.split(".")[0] in (*HEAVY, "onnxruntime", "numpy")
        or (name.startswith("onnxship") and not _within(name, CONFIG_IMPORTS))
    )
    assert not bad, f"{module} imports at load: {bad}"


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the module graph; __init__ re-exports of a
    # package's own children are parent->child edges, which cannot close a cycle by themselves.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


MAX_FUNCTION_LINES = 80  # the project style: functions stay under about 80 lines


def test_no_source_function_exceeds_the_line_limit() -> None:
    """Every function and method of the installed packages, decorators excluded, from its
    `def` line to its last line, docstring included."""
    too_long = []
    for module, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {lines} lines")
    assert not too_long, "split these functions: " + "; ".join(sorted(too_long))
