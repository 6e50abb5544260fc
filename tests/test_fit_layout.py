"""Layout of the fit engine (:mod:`tokenscale.fit`) and its file format (:mod:`tokenscale.io.fits`).

* no import cycle among the fit modules (every import statement, also those inside functions);
* every module imports in a fresh interpreter, and the torch-free ones (the package itself, the problem,
  the engine registry, the fits file format) import no torch - nor does reading a fits file;
* one registry of engines: the API's check, the CLI's ``fit --engine`` and the schema's ``fit.engine``
  enum all list exactly :data:`tokenscale.fit.engines.ENGINES`;
* the C kernel's ``tks_box_t`` has exactly the fields :meth:`Problem.kernel_constants` fills.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tokenscale
from tokenscale.fit.engines import ENGINES

SRC = Path(tokenscale.__file__).parent
FIT_MODULES = sorted(
    "tokenscale." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in (SRC / "fit").rglob("*.py")
) + ["tokenscale.io.fits"]
TORCH_FREE = ["tokenscale.fit", "tokenscale.fit.problem", "tokenscale.fit.engines", "tokenscale.io.fits"]


def _path(module: str) -> Path:
    base = SRC.parent.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """tokenscale modules named by any import statement of ``module`` (relative ones resolved; ``from p import
    m`` counts as ``p.m`` when that is a module, else as ``p``), plus the packages they live in."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if _path(sub).is_file() else base)
    deps = set()
    for name in found:
        if name == "tokenscale" or name.startswith("tokenscale."):
            parts = name.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))  # a module and its packages
    deps.discard(module)
    return deps


def test_fit_modules_have_no_import_cycle():
    assert "tokenscale.fit.api" in FIT_MODULES and "tokenscale.fit.engines.native" in FIT_MODULES
    graph = {m: {d for d in _imports(m) if d in FIT_MODULES} for m in FIT_MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in FIT_MODULES:
        if m not in state:
            visit(m, [m])
    # the old pair that imported each other: the Triton kernel reads the problem's constants, not the API
    assert "tokenscale.fit.api" not in graph["tokenscale.fit.engines.triton_lm"]
    assert graph["tokenscale.io.fits"] == set()  # self-contained: no fit module


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_fit_module_imports_in_a_fresh_interpreter_and_torch_free_ones_import_no_torch():
    for m in FIT_MODULES:
        uses_torch = _run(f"import sys, {m}; print('torch' in sys.modules)").strip()
        if m in TORCH_FREE:
            assert uses_torch == "False", f"importing {m} imports torch"


def test_reading_a_fits_file_imports_no_torch(tmp_path):
    from tokenscale.fit import fit_sigmoids, save_fits
    from tokenscale.fit.planted import default_step_axis, planted_trajectories

    axis = default_step_axis()
    y, _ = planted_trajectories(50, axis, seed=0)
    fit = fit_sigmoids(y, axis)
    path = tmp_path / "fits.h5"
    save_fits(path, fit, token_index=np.arange(50))
    out = _run(
        "import sys, tokenscale.io.fits as io\n"
        f"f = io.load_fits({str(path)!r})\n"
        "assert 'torch' not in sys.modules, 'tokenscale.io.fits imported torch'\n"
        "from tokenscale.fit import CATEGORY_NAMES, SigmoidFit, concat_fits, load_fits, save_fits\n"
        f"g = concat_fits([load_fits({str(path)!r}), f])\n"
        f"save_fits({str(tmp_path / 'again.h5')!r}, g)\n"
        "assert load_fits is io.load_fits and SigmoidFit is io.SigmoidFit\n"
        "assert 'torch' not in sys.modules, 'tokenscale.fit re-exports imported torch'\n"
        "print(len(f), len(g), f.category_counts()['learned'] >= 0, f.predict().shape)\n"
    )
    assert out.split()[:3] == ["50", "100", "True"]


def test_category_and_status_names_have_one_definition():
    from tokenscale import fit
    from tokenscale.analysis import figures
    from tokenscale.analysis import samples
    from tokenscale.io import fits as fitsio
    from tokenscale.fit import problem

    assert fit.CATEGORY_NAMES is fitsio.CATEGORY_NAMES is problem.CATEGORY_NAMES
    assert samples.CATEGORY_NAMES is fitsio.CATEGORY_NAMES and figures.CATEGORY_NAMES is fitsio.CATEGORY_NAMES
    assert fit.STATUS_NAMES is fitsio.STATUS_NAMES is problem.STATUS_NAMES
    assert fit.CategoryRule is fitsio.CategoryRule


# ----------------------------------------------------------------------------- the engine registry
def test_engine_registry_is_what_the_schema_allows():
    import yaml

    schema = yaml.safe_load((SRC / "config.schema.yaml").read_text())
    engine = schema["properties"]["fit"]["properties"]["engine"]
    assert engine["enum"] == list(ENGINES)
    assert engine["default"] in ENGINES
    assert all(isinstance(v, str) and v and "\n" not in v for v in ENGINES.values())  # one line each


def test_engine_registry_is_what_the_cli_offers():
    from tokenscale.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    action = next(a for a in sub.choices["fit"]._actions if a.dest == "engine")
    assert list(action.choices) == list(ENGINES)
    assert action.default in ENGINES
    for name in ENGINES:
        assert f"{name} = " in action.help


def test_engine_registry_is_what_the_api_accepts():
    import torch

    from tokenscale import TokenscaleError
    from tokenscale.fit import api

    with pytest.raises(TokenscaleError) as e:
        api._resolve_engine("gpu", torch.device("cpu"))
    assert str(e.value) == f"engine must be one of {tuple(ENGINES)}, got 'gpu'"
    for name in ENGINES:  # each registered name is known: it runs here, or says why it cannot
        try:
            got = api._resolve_engine(name, torch.device("cpu"))
        except TokenscaleError as err:
            assert "must be one of" not in str(err)
        else:
            assert got in ENGINES and got != "auto"


# ----------------------------------------------------------------------------- shared constants
def test_the_c_kernel_box_has_the_fields_the_problem_fills():
    from tokenscale.fit.engines import native
    from tokenscale.fit.problem import Problem

    x = np.log10(np.logspace(1, 5, 16))
    consts = Problem(x, None, None, (40, 8), 10.0).kernel_constants(tol=1e-5, max_iter=30, refine=True)
    box_fields = [name for name, _ in native.Box._fields_]
    assert list(consts) == box_fields
    native.Box(**consts)  # every value fits its ctypes field
    src = (Path(native.__file__).parent / "csrc" / "fit_lm.c").read_text()
    struct = re.search(r"typedef struct \{(.*?)\} tks_box_t;", src, re.DOTALL).group(1)
    struct = re.sub(r"/\*.*?\*/", "", struct, flags=re.DOTALL)
    c_fields = [name for decl in struct.split(";") if decl.strip()
                for name in re.sub(r"^\s*(double|int)\s+", "", decl.strip()).replace(" ", "").split(",")]
    assert c_fields == box_fields


ALL_MODULES = sorted(
    "tokenscale." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
)
# file formats, series, the atomic writer, config, analysis and the CLI's start: no torch (the DAG, `tokenscale
# --help`, reading results and the analysis never pay for it)
TORCH_FREE_ELSEWHERE = ["tokenscale.io", "tokenscale.io.fits", "tokenscale.series", "tokenscale.atomic",
                        "tokenscale.config", "tokenscale.workflow", "tokenscale.analysis", "tokenscale.analysis.pipeline", "tokenscale.alignment.compute",
                        "tokenscale.analysis.tail_compare", "tokenscale.io.dependency", "tokenscale.alignment.figures", "tokenscale.analysis.figures", "tokenscale.plotting",
                        "tokenscale.cli", "tokenscale.frontiers.compute", "tokenscale.plan", "tokenscale.training.model"]


def test_package_has_no_import_cycle():
    graph = {m: {d for d in _imports(m) if d in ALL_MODULES and d != "tokenscale"} for m in ALL_MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        for d in sorted(graph[m]):
            if d in path:
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(d):] + [d])}")
            if d not in done:
                visit(d, path + [d])
        done.add(m)

    for m in ALL_MODULES:
        visit(m, [m])


def test_formats_series_and_analysis_import_no_torch():
    code = "import sys\n" + "".join(f"import {m}\n" for m in TORCH_FREE_ELSEWHERE)
    code += "from tokenscale.cli import build_parser\nbuild_parser()\n"
    code += "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    assert _run(code).strip() == "[]"
