"""The fitting problem, written once: model, bounds, start grid and the Levenberg-Marquardt constants.

Everything here is numpy; the three implementations of the iteration (:mod:`.engines.torch_lm`,
:mod:`.engines.native` (C) and :mod:`.engines.triton_lm`) receive the bounds, the grid and the constants
below from :class:`Problem` - the C kernel through its ``tks_box_t`` struct (:meth:`Problem.kernel_constants`),
the Triton kernel as ``constexpr`` arguments, the torch code by import - so that no implementation carries
its own copy.

Model (paper eq. (1)), on a transformed axis ``x = f(a)`` (``log10`` by default; ``linear`` available)::

    loss(x) = post + delta * [1 - sigmoid(lam * (x - tau))] = post + delta * sigmoid(lam * (tau - x))

with ``lam >= 0`` so that the sign of ``delta`` gives the direction (``delta > 0``: the loss descends at
``tau``; ``delta < 0``: ascending / forgetting-like).  ``pre = post + delta``.  The learning pulse,
eq. (2), is ``-dloss/dx = delta*lam/4 * sech^2(lam*(x - tau)/2)``.

Separable least squares.  For fixed ``(tau, lam)`` the model is linear in ``(post, delta)``, so those are
always the closed-form least-squares values and the iteration runs over ``theta = (tau', rho)`` only
(variable projection), with ``tau' = (tau - c)/h`` and ``rho = log(lam*h)`` on the axis standardised to
``t = (x - c)/h in [-1, 1]`` (``c``, ``h``: centre and half-width of ``[x_min, x_max]``).  With
``g = sigmoid(lam' (tau' - t))`` and a centred row ``y_c``::

    delta = (y_c . g_c) / ||g_c||^2   (clamped to |delta| <= delta_max * (max(row) - min(row)))
    post  = mean(y) - delta * mean(g)
    SSE   = ||y_c - delta g_c||^2

Bounds: ``tau in [x_min - tau_margin, x_max + tau_margin]``, ``lam in lam_bounds`` (box ``[tlo, thi]`` x
``[rlo, rhi]`` in ``theta``) and the ``delta`` clamp above.  Without the clamp a learning time pushed
outside the window lets ``delta`` run off along an SSE ridge (only the sigmoid's exponential tail is
observed).

1. **Grid start.**  For every point ``j`` of an ``n_tau x n_lam`` grid (``tau'`` uniform over its box,
   ``rho`` uniform from ``rlo`` to ``rhi - log(GRID_LAM_TOP)``) the centred unit-norm basis vector
   ``u_j = g_c / ||g_c||`` is precomputed once per axis (the (K, G) matrix ``U``).  The SSE at grid point
   ``j`` is ``||y_c||^2 - (y_c . u_j)^2``, so the best grid point of all rows is one product ``Y_c @ U``
   and a max of its square; the start then moves to the maximum of the quadratic through the 3x3 grid
   neighbourhood (at most one cell).
2. **Levenberg-Marquardt on the reduced problem**, per row: gradient ``b`` and 2x2 matrix ``H`` (the exact
   reduced Hessian where positive definite, else Kaufman's Gauss-Newton matrix), step
   ``(H + mu diag(H)) s = -b`` on the coordinates not pinned at a bound, scaled into the step caps
   (``|d tau'| <= STEP_CAP_TAU``, ``|d rho| <= STEP_CAP_RHO``) and projected onto the box.  A step is
   accepted only where the row's SSE decreases; damping starts at ``MU0``, is multiplied by ``MU_ACCEPT``
   (floor ``MU_MIN``) on an accepted step and by ``MU_GROW`` (floor ``MU_REJECT``) on a rejected one.
3. **Convergence.**  A row is ``converged`` when the undamped Gauss-Newton step predicts an SSE decrease
   ``<= tol * SSE + floor`` (``floor = 16 K (eps (|mean y| + range + 1))^2``, the float round-off of an
   SSE), when ``mu > MU_MAX``, or when a rejected step no longer moves ``theta``; ``max_iter`` otherwise.
   A finishing row takes one last undamped step, kept where it lowers the SSE.  Rows with NaN/inf are
   ``invalid_input`` (NaN parameters) without affecting other rows.

Status and category codes (:data:`STATUS_NAMES`, :data:`CATEGORY_NAMES`, :class:`CategoryRule`) are part
of the result's file format and are defined in :mod:`tokenscale.io.fits`; they are re-exported here.
"""

from __future__ import annotations

import math

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.io.fits import CATEGORY_NAMES, STATUS_NAMES, CategoryRule, logistic

__all__ = [
    "STATUS_NAMES", "CATEGORY_NAMES", "CategoryRule", "TRANSFORMS", "Problem",
    "MU0", "MU_ACCEPT", "MU_MIN", "MU_GROW", "MU_REJECT", "MU_MAX", "STEP_CAP_TAU", "STEP_CAP_RHO",
    "GRID_LAM_TOP", "DEFER_AFTER",
]

TRANSFORMS = ("log10", "linear")

# Levenberg-Marquardt damping, relative to diag(H) (all three implementations)
MU0 = 1e-3  # initial damping: nearly a Newton step from the grid start
MU_ACCEPT = 0.2  # damping x MU_ACCEPT after an accepted step ...
MU_MIN = 1e-7  # ... but not below MU_MIN
MU_GROW = 10.0  # damping x MU_GROW after a rejected step ...
MU_REJECT = 0.3  # ... and at least MU_REJECT (the step shrinks markedly)
MU_MAX = 1e8  # damping above this: round-off dominates, the row counts as converged
# step caps (all three implementations)
STEP_CAP_TAU = 0.5  # max |d tau'| per LM step (standardised units: the window is [-1, 1])
STEP_CAP_RHO = 1.0  # max |d log lam| per LM step
# start grid
GRID_LAM_TOP = 4.0  # the start grid's sharpest lam is lam_hi / GRID_LAM_TOP
# the torch engine's chunking
DEFER_AFTER = 8  # LM iterations per chunk before its unconverged rows are pooled with later chunks'


class Problem:
    """Axis-dependent constants shared by all rows: standardised axis, bounds and the start grid (numpy).

    ``x`` (K,) is the transformed axis; the other arguments are the validated user options of
    :func:`tokenscale.fit.fit_sigmoids` (``None`` for the documented defaults).  Attributes: ``k``,
    ``x_min``, ``x_max``, ``c``, ``h``, ``t`` (K,) the standardised axis, ``tau_margin``, ``lam_bounds``,
    ``delta_max``, the box ``tlo``, ``thi``, ``rlo``, ``rhi`` of ``(tau', rho)``, and the start grid:
    ``n_tau``, ``n_lam``, its spacing ``grid_dt``, ``grid_dr``, ``grid_tau``, ``grid_rho`` (G,) (flat index
    ``i_tau * n_lam + i_lam``) and ``U`` (K, G) its centred unit-norm basis vectors.
    """

    def __init__(self, x: np.ndarray, tau_margin, lam_bounds, grid_shape, delta_max):
        self.x = x
        self.k = x.shape[0]
        self.x_min, self.x_max = float(x[0]), float(x[-1])
        span = self.x_max - self.x_min
        self.c = 0.5 * (self.x_min + self.x_max)
        self.h = 0.5 * span
        t = (x - self.c) / self.h  # standardised axis in [-1, 1]
        if tau_margin is None:
            tau_margin = 0.25 * span
        try:
            tau_margin = float(tau_margin)
        except (TypeError, ValueError):
            raise TokenscaleError(f"tau_margin must be a number, got {tau_margin!r}") from None
        if not (np.isfinite(tau_margin) and tau_margin >= 0):
            raise TokenscaleError(f"tau_margin must be finite and >= 0, got {tau_margin}")
        if lam_bounds is None:
            lam_bounds = (1.0 / span, 10.0 / float(np.min(np.diff(x))))
        try:
            lam_lo, lam_hi = (float(v) for v in lam_bounds)
        except (TypeError, ValueError):
            raise TokenscaleError(f"lam_bounds must be (lo, hi), got {lam_bounds!r}") from None
        if not (np.isfinite(lam_lo) and np.isfinite(lam_hi) and 0 < lam_lo < lam_hi):
            raise TokenscaleError(
                f"lam_bounds must satisfy 0 < lo < hi < inf (lo > 0 keeps delta identifiable), "
                f"got {(lam_lo, lam_hi)!r}"
            )
        try:
            delta_max = float(delta_max)
        except (TypeError, ValueError):
            raise TokenscaleError(f"delta_max must be a number, got {delta_max!r}") from None
        if not (delta_max > 0 and np.isfinite(delta_max)):
            raise TokenscaleError(f"delta_max must be finite and > 0, got {delta_max}")
        self.delta_max = delta_max
        self.tau_margin = tau_margin
        self.lam_bounds = (lam_lo, lam_hi)
        # bounds of the internal variables: tau' (standardised), rho = log(lam * h)
        self.tlo = -1.0 - tau_margin / self.h
        self.thi = 1.0 + tau_margin / self.h
        self.rlo = math.log(lam_lo * self.h)
        self.rhi = math.log(lam_hi * self.h)

        n_tau, n_lam = (int(v) for v in grid_shape)
        self.n_tau, self.n_lam = n_tau, n_lam
        gt = np.linspace(self.tlo, self.thi, n_tau)
        # the grid stops short of the step limit: a step-like start sits on an SSE plateau (no gradient
        # between axis points); LM sharpens further where the data ask for it.
        gr = np.linspace(self.rlo, max(self.rlo, self.rhi - math.log(GRID_LAM_TOP)), n_lam)
        self.grid_dt = float(gt[1] - gt[0])
        self.grid_dr = float(gr[1] - gr[0]) if n_lam > 1 else 0.0
        GT, GR = np.meshgrid(gt, gr, indexing="ij")  # flat index = i_tau * n_lam + i_lam
        GT, GR = GT.ravel(), GR.ravel()
        z = np.exp(GR)[None, :] * (GT[None, :] - t[:, None])  # (K, G)
        g = logistic(z)
        gc = g - g.mean(axis=0, keepdims=True)
        nrm = np.sqrt((gc * gc).sum(axis=0))
        ok = nrm > 1e-3 * math.sqrt(self.k)  # sigmoid not ~flat over the window
        U = np.where(ok[None, :], gc / np.where(ok, nrm, 1.0)[None, :], 0.0)
        self.t = t
        self.U = U
        self.grid_tau = GT
        self.grid_rho = GR

    def kernel_constants(self, *, tol: float, max_iter: int, refine: bool) -> dict:
        """The scalars a compiled kernel needs besides the arrays: box, grid spacing, the iteration's
        options and the LM constants of this module (the fields of ``tks_box_t`` in
        ``engines/csrc/fit_lm.c``, i.e. :class:`tokenscale.fit.engines.native.Box`)."""
        return {
            "tlo": self.tlo, "thi": self.thi, "rlo": self.rlo, "rhi": self.rhi, "tol": tol,
            "delta_max": self.delta_max, "grid_dt": self.grid_dt, "grid_dr": self.grid_dr,
            "step_cap_tau": STEP_CAP_TAU, "step_cap_rho": STEP_CAP_RHO, "mu0": MU0, "mu_reject": MU_REJECT,
            "mu_accept": MU_ACCEPT, "mu_min": MU_MIN, "mu_grow": MU_GROW, "mu_max": MU_MAX,
            "max_iter": max_iter, "n_tau": self.n_tau, "n_lam": self.n_lam, "refine": int(bool(refine)),
        }
