"""docs/architecture.md cannot drift from the tree, and imports point down.

* every rule and checkpoint of the workflow appears in the stage table (and the table names no rule that is gone);
* every package and top-level module of ``src/tokenscale`` appears in the layout block (and the block names
  nothing that is gone);
* every file path the "how to add" recipes name exists;
* imports point down: a module imports (anywhere, also inside a function) only modules of its own layer or of
  layers below (:data:`LAYERS`, the same order as the doc's "Layers" list).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tokenscale

SRC = Path(tokenscale.__file__).parent
ROOT = SRC.parent.parent
DOC = ROOT / "docs" / "architecture.md"

# Bottom to top. A unit is a top-level module or package of tokenscale, or one of its modules named here on its own
# (a leaf the layers below use). Studies sit side by side.
LAYERS: list[set[str]] = [
    {"__init__", "_lazy", "atomic"},
    {"io", "config", "plotting", "training.model"},
    {"series", "data", "fit"},
    {"training", "evaluation", "analysis"},
    {"frontiers", "alignment", "reshaping", "synthetic", "seeds", "forecast"},
    {"studies", "workflow", "plan"},
    {"reproduction"},
    {"cli"},
]
LEAVES = {u for layer in LAYERS for u in layer if "." in u}


def _section(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/architecture.md has no section '## {title}'"
    return m.group(1)


def _workflow_rules() -> set[str]:
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    return {m for f in files for m in re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", f.read_text(), re.M)}


def _table_rules() -> set[str]:
    rules = set()
    for line in _section("Stage → rule → module → files").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and not set(cells[0]) <= {"-", " "}:
            rules.update(re.findall(r"`(\w+)`", cells[1]))
    return rules


def _units() -> set[str]:
    out = {p.stem for p in SRC.glob("*.py")} | {p.parent.name for p in SRC.glob("*/__init__.py")}
    return out - {"__init__", "_lazy"}


def _unit_of(dotted: str) -> str:
    """The unit of a module path below tokenscale (``training.model`` is its own unit, ``training.trainer``
    belongs to ``training``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LEAVES:
            return ".".join(parts[:n])
    return parts[0]


def _layout_names() -> set[str]:
    block = re.search(r"```\n(.*?)```", _section("Package layout"), re.S)
    assert block, "the Package layout section has no code block"
    names = set()
    for line in block.group(1).splitlines():
        if line.startswith("  ") and not line.startswith("    "):  # one level under src/tokenscale/
            lead = line.strip().split("  ")[0]
            names.update(n.strip().removesuffix("/").removesuffix(".py").split(".")[0] for n in lead.split(","))
    return {n for n in names if n}


def test_every_workflow_rule_is_in_the_stage_table():
    rules, table = _workflow_rules(), _table_rules()
    assert len(rules) >= 20
    assert rules - table == set(), f"rules missing from the stage table of docs/architecture.md: {rules - table}"
    assert table - rules - {"Snakefile"} == set(), f"stage table names rules that do not exist: {table - rules}"


def test_every_package_is_in_the_layout():
    units, layout = _units(), _layout_names()
    assert units - layout == set(), f"packages/modules missing from the layout of docs/architecture.md: {units - layout}"
    gone = layout - units - {"__init__", "_lazy"}
    assert gone == set(), f"layout names packages/modules that do not exist: {gone}"


def test_recipes_name_files_that_exist():
    text = _section("How to add")
    paths = set(re.findall(r"`((?:src|workflow|tests|config|docs)/[\w/.{}*-]+)`", text))
    assert len(paths) >= 6
    missing = [p for p in sorted(paths) if "{" not in p and "*" not in p and not (ROOT / p).exists()]
    assert missing == [], f"recipes in docs/architecture.md name files that do not exist: {missing}"


def test_layers_cover_every_unit_once():
    flat = [u for layer in LAYERS for u in layer]
    assert len(flat) == len(set(flat))
    assert _units() - set(flat) == set(), f"units without a layer: {_units() - set(flat)}"
    assert all((SRC / (leaf.replace(".", "/") + ".py")).is_file() for leaf in LEAVES)


def _layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _imported_units(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "tokenscale" and len(parts) > 1 and ((SRC / parts[1]).with_suffix(".py").exists()
                                                                or (SRC / parts[1] / "__init__.py").exists()):
                module = ".".join(parts[1:])
                if not ((SRC / (module.replace(".", "/") + ".py")).is_file()
                        or (SRC / module.replace(".", "/") / "__init__.py").is_file()):
                    module = ".".join(parts[1:-1])  # ``from tokenscale.x import name``: the module is x
                out.add(_unit_of(module))
    return out


def test_no_relative_imports():
    rel = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
           if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert rel == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    rel = path.relative_to(SRC)
    unit = _unit_of(".".join(rel.with_suffix("").parts))
    if unit in ("__init__", "_lazy"):
        return
    mine = _layer_of(unit)
    up = sorted(u for u in _imported_units(path) if u != unit and _layer_of(u) > mine)
    assert up == [], f"{rel} (layer {mine}: {unit}) imports from higher layers: {up}"


def test_imports_between_studies_are_none():
    studies = LAYERS[4]
    bad = []
    for path in SRC.rglob("*.py"):
        unit = _unit_of(".".join(path.relative_to(SRC).with_suffix("").parts))
        if unit in studies:
            bad += [f"{path.relative_to(SRC)} -> {u}" for u in _imported_units(path) & studies if u != unit]
    assert bad == [], f"a study imports another study: {bad}"


def test_building_the_dag_imports_no_heavy_library():
    """What Snakemake imports to build the DAG (the workflow glue, the series and the studies' specs) pulls in
    neither torch nor h5py, scipy or matplotlib: a study's spec reads light files only."""
    import subprocess
    import sys

    code = ("import sys, tokenscale.workflow, tokenscale.series, tokenscale.studies; "
            "print(sorted(m for m in ('torch', 'h5py', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
