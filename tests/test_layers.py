"""Imports only point down the layers: errors ← fetch ← engine ← tags ← datasets ← features ← onnx
← bulk/cli ← web ← app.

Read from the source (every ``import`` in every module, those inside functions too; those under
``if TYPE_CHECKING:`` load nothing and are skipped), so a new sideways or upward import fails
here with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each layer may import its own modules and those of lower layers (a smaller number).
LAYERS = {
    "tagger.errors": 0,
    "tagger.fetch": 1,
    "tagger.engine": 2,
    "tagger": 3,  # the package: re-exports the Tagger and the tag selection
    "tagger.tags": 3,
    "tagger.datasets": 4,
    "tagger.features": 5,
    "tagger.onnx": 6,
    "tagger.export": 6,  # the ONNX exporter
    "tagger.bulk": 7,
    "tagger.cli": 7,
    "tagger.__main__": 8,
    "tagger.web": 9,
    "app": 10,
}
# The same layer, yet one job: these may import each other.
SAME_UNIT = {"tagger.export": "tagger.onnx", "tagger.tags": "tagger", "tagger.__main__": "tagger.cli"}
# Tagger.select and Tagger.predict return selected tags: the prediction API reaches up to the selection.
KNOWN_UPWARD = {("tagger.engine.tagger", "tagger.tags.selection")}


def layer_of(module: str) -> str:
    """The longest ``LAYERS`` key that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_checking_nodes(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def project_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of each import of a ``tagger`` module (or ``app``) in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tagger":  # ``from tagger import engine``: the submodule
                found += [(node.lineno, f"tagger.{a.name}") for a in node.names if (ROOT / "tagger" / a.name).exists()]
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ("tagger", "app")]


def allowed(importer: str, imported: str) -> bool:
    if (importer, imported) in KNOWN_UPWARD:
        return True
    a, b = layer_of(importer), layer_of(imported)
    if a == b or SAME_UNIT.get(a, a) == SAME_UNIT.get(b, b):
        return True
    return LAYERS[b] < LAYERS[a]


def layer_violations() -> list[str]:
    paths = [*sorted((ROOT / "tagger").rglob("*.py")), ROOT / "app.py"]
    out = []
    for path in paths:
        importer = module_name(path)
        for line, imported in project_imports(path):
            if not allowed(importer, imported):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {imported} ({layer_of(imported)} is not below)")
    return out


def test_imports_point_down_the_layers() -> None:
    assert layer_violations() == []


def test_nothing_below_the_front_ends_imports_them() -> None:
    for path in [*sorted((ROOT / "tagger").rglob("*.py"))]:
        importer = module_name(path)
        if layer_of(importer) in ("tagger.web", "tagger.cli", "tagger.__main__"):
            continue
        for line, imported in project_imports(path):
            assert layer_of(imported) not in ("tagger.web", "tagger.cli"), f"{path}:{line} imports {imported}"


def test_the_checker_names_an_upward_import(tmp_path: Path) -> None:
    assert not allowed("tagger.features.similarity", "tagger.web.runtime")
    assert not allowed("tagger.bulk.cli", "tagger.cli")
    assert not allowed("tagger.engine.vocab", "tagger.tags.relations")
    assert allowed("tagger.web.endpoints", "tagger.features.pca")
    assert allowed("tagger.features.similarity", "tagger.datasets.intake")
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tagger.web\n"
        "def f():\n    from tagger.web.runtime import ModelRunner\n"
    )
    assert project_imports(source) == [(5, "tagger.web.runtime")]


def test_endpoints_call_no_tab_module() -> None:
    imports = project_imports(ROOT / "tagger" / "web" / "endpoints.py")
    assert [name for _, name in imports if name.startswith("tagger.web.tabs")] == []
