"""The house keeps its plan (docs/architecture.md): every import in the engine points down the
layers, never up, and no two packages of one layer import each other, so there is no cycle
between packages. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module may import its own package and anything on a lower layer.
LAYERS = [
    {"dmtcore.errors"},
    {"dmtcore.runtime"},
    {"dmtcore.tasks"},
    {"dmtcore.hooks"},
    {"dmtcore.model"},
    {"dmtcore.store"},
    {"dmtcore.train", "dmtcore.inference"},
    {"dmtcore.operations"},
    {"dmtcore.analysis"},
    {"dmt_registry"},
    {"dmtcore.api"},
    {"dmtcore.cli"},
]
# The package root re-exports the plugin API (and loads `api` on first use); old_paths maps
# old module names to new ones by string. Both stand outside the layers.
OUTSIDE = {"dmtcore", "dmtcore.old_paths", "dmtcore.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = {"registry": "dmt_registry"}.get(parts[0], parts[0])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("dmtcore", "dmt_registry")}


def _layer(name: str) -> tuple[int, str] | None:
    for index, layer in enumerate(LAYERS):
        for package in layer:
            if name == package or name.startswith(package + "."):
                return index, package
    return None


@functools.cache
def _modules() -> dict[str, set[str]]:
    files = [*ROOT.glob("dmtcore/**/*.py"), *ROOT.glob("registry/*.py")]
    return {_module_name(p): _imports(p, _module_name(p)) for p in files}


def test_every_engine_module_has_a_layer() -> None:
    lost = sorted(m for m in _modules() if m not in OUTSIDE and _layer(m) is None)
    assert not lost, f"modules outside every layer of docs/architecture.md: {lost}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_point_down(module: str) -> None:
    if module in OUTSIDE:
        return
    own_index, own_package = _layer(module)
    wrong = []
    for target in sorted(_modules()[module]):
        placed = _layer(target)
        if placed is None:  # the package root's public API, or a name inside a module
            continue
        index, package = placed
        if index > own_index or (index == own_index and package != own_package):
            wrong.append(target)
    assert not wrong, f"{module} (layer {own_index}) imports upwards or sideways: {wrong}"


def test_the_reader_sees_lazy_imports() -> None:
    """Without this, an import reader that found nothing would pass every check above."""
    modules = _modules()
    assert "dmtcore.api" in modules["dmtcore.cli.training_commands"]  # inside a function
    assert "dmtcore.store.directory" in modules["dmtcore.api"]  # at the top
