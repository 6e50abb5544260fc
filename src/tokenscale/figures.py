"""Former home of the figures, kept only so old imports keep working while callers move (issue #32).

The decomposition figures are :mod:`tokenscale.analysis.figures`, the frontier figures
:mod:`tokenscale.frontiers.figures`, the shared helpers :mod:`tokenscale.plotting`. Import from those.
"""

from __future__ import annotations

from tokenscale.analysis.figures import FIGURE_NAMES, make_figures
from tokenscale.frontiers.figures import FRONTIER_FIGURE_NAMES, frontier_figures
from tokenscale.io.fits import CATEGORY_NAMES
from tokenscale.plotting import C_EMP, C_PL, C_REC, C_SIG, C_SPEC
from tokenscale.plotting import fmt_ci as _fmt_ci
from tokenscale.plotting import save_figure as _save

__all__ = ["CATEGORY_NAMES", "C_EMP", "C_PL", "C_REC", "C_SIG", "C_SPEC", "FIGURE_NAMES", "FRONTIER_FIGURE_NAMES",
           "_fmt_ci", "_save", "frontier_figures", "make_figures"]
