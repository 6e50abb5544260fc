"""Pulse–spectrum decomposition of an aggregate loss curve (paper §3, §4, App. A.3.5–A.3.6), in named stages.

Works on any axis (training step T, data D, model scale M): everything is expressed on the fit's
*transformed* axis ``x`` (``log10`` of the original unit, or the original unit for ``linear``),
exactly the axis on which the token sigmoids ``ℓ_i(x) = post_i + Δ_i[1 − σ(λ_i(x − τ_i))]`` were
fitted. Inputs are the (N, K) token-loss trajectories and a fit result (duck type of
``tokenscale.fit.SigmoidFit``: only the attributes ``tau, tau_orig, lam, delta, post, status,
category, axis, axis_orig, transform`` are read).

Definitions used throughout (all on the transformed axis x):

* Valid token: fit status != 2 (invalid_input), finite ``tau, lam, delta, post`` and a loss row
  with no non-finite entry. Every aggregate curve (mean loss, sigmoid-implied loss and derivative) uses the
  same valid set; the rest are counted.
* Selection (:mod:`.options`): which valid tokens enter p(τ), the pulses, g and p∗g, and their weight in p(τ)
  (``analysis.selection``; default ``all`` = every valid token). Every configured selection's tail is reported.
* Empirical mean loss ``L(x_k)`` = mean over valid tokens of ``losses[:, k]``.
* Sigmoid-implied mean loss = mean over valid tokens of the fitted sigmoid.
* Derivatives are ``L′(x) = −dL/dx`` (per unit x; for ``log10`` that is "per decade").
  Empirical: finite differences on the (possibly non-uniform) axis; ``smoothing="none"``
  (default) uses second-order ``numpy.gradient`` (one-sided at the two ends); ``"savgol"``
  resamples L on a uniform x grid with PCHIP, takes a Savitzky–Golay derivative
  (``savgol_window`` points, ``savgol_polyorder``) and interpolates back to the axis points. The
  mean over many tokens is already smooth, so no smoothing is the default: Savitzky–Golay with a
  5-point window lowers the peak of a pulse sampled ~7 points per FWHM by ~6 % (a 5-point
  quadratic derivative is the least-squares slope), which would bias the per-bin pulses; use it
  for noisy aggregates (few tokens per bin, noisy evaluations). Sigmoid-implied: analytic mean of the pulses
  ``Δλ/4 sech²(λ(x−τ)/2)`` (Eq. 2–3).
* Window: ``[x_0, x_{K−1}]``. Learning times inside it are "observed"; τ outside it is an
  extrapolation of the fit and is only used where a pulse tail reaches into the window.
* Spectrum ``p(τ)`` (Eq. 5): selected tokens' weight as a fraction of all valid tokens per unit x, on ``n_bins`` equal-width bins
  of x spanning the window (log-spaced bins in original units for ``log10``); also given as a
  density per original unit (``fraction / Δτ_orig``), whose log-log slope is −β.
* Tail: truncated power law ``p(τ) ∝ τ^−β`` on ``[τ_min, τ_max]`` with ``τ_max`` = window end
  (τ beyond the window is unobservable, so an untruncated Pareto MLE would be biased). ``β`` by
  maximum likelihood for each candidate ``τ_min``; ``τ_min`` chosen by minimising the KS distance
  (Clauset–Shalizi–Newman 2009). Computed from a fine histogram of τ (``FINE_BINS`` bins on x with
  per-bin sums of ln τ, so the MLE statistic is exact and the KS distance is evaluated at the
  fine-bin edges). CI: token bootstrap (multinomial resampling of the fine histogram, which
  equals resampling tokens), re-selecting ``τ_min`` in every replicate.
* Theory: with ``p(τ) ∝ τ^−β`` and pulses of roughly common shape, ``L(a) − E ≈ (1/N)
  Σ_{τ_i > a} Δ_i ∝ ∫_a^∞ τ^−β dτ ∝ a^{−(β−1)}``; on the log axis a pulse of fixed shape
  convolved with ``10^{−(β−1)x}`` stays an exponential of the same rate, so ``α = β − 1``
  in the asymptotic regime. Reported as ``alpha_predicted`` next to the fitted α. It holds only under
  conditions: Δ independent of τ (else the tail of Σ Δ_i is not the tail of p), pulses narrower than the scale
  on which the tail decays (else the convolution bends the curve), the tail continuing past the window (a
  cut-off spectrum makes L flatten to E faster), and the post-transient points lying in the tail's range.
* Power law ``L(a) = k a^−α + E`` fitted by least squares on the empirical mean loss at
  post-transient axis points (original units; ``k, E ≥ 0``; α by profile search). CI: token
  bootstrap by groups — every valid token is assigned at random to one of ``n_groups`` groups
  during the pass; replicates resample groups with replacement and refit. This treats tokens as
  exchangeable (within-document correlation is ignored) and does not cover misspecification.
* Transient rule (``transient=``): a float ``f`` in [0, 1) drops the first fraction ``f`` of the
  transformed-axis span (default 0.1); ``"peak"`` drops points before the maximum of the
  empirical loss; ``"dpeak"`` drops points before the maximum of the empirical −dL/dx (the initial
  random-init plateau and the onset of learning; the workflow's default); ``("start", a0)`` starts at original-unit value ``a0`` (e.g. warmup end);
  ``"none"`` keeps all points. All post-transient metrics use the same points.
* Pulses: tokens with τ in the window are grouped into ``n_bins`` equal-width x bins. Per-bin
  mean *empirical* pulse = −d/dx of the bin's mean loss curve (same smoothing as L′; the
  derivative commutes with the mean, so no per-token differencing is needed). Per-bin mean
  *fitted* pulse on the fine grid. Aligned pulses: each bin's empirical pulse is shifted by the
  bin's mean τ onto ``u = x − τ`` (NaN where ``τ_b + u`` leaves the window); fitted pulses are
  aligned per token (exact Eq. 4 restricted to the bin). Shared template ``g(u)`` (Eq. 4) = mean
  over in-window tokens of the per-token aligned fitted pulse (``template``; used for the
  reconstruction). ``template_emp`` is Eq. 4 with the empirical per-token derivative (each
  token's −dℓ_i/dx, linearly interpolated at ``τ_i + u``, averaged over the tokens for which
  ``τ_i + u`` lies in the window, ``|u| ≤ 12/median λ``); it is lower and wider than ``template``
  by the finite-difference resolution of the axis, and its reconstruction is reported as
  ``r2_reconstruction_emp_template``. Bin-aligned pulses are further broadened by the spread of
  τ inside a bin (bin width ``span/n_bins``).
* SVD (headline, :mod:`tokenscale.analysis.pulses`): the aligned empirical pulses of G ≥ 10 equal-count
  learning-time groups (``analysis.svd_groups``, null: the paper's 40), beside the energy of a null of random
  pulse widths and shapes measured the same way (``svd_null_energy1``). The earlier SVD over the spectrum's
  populated bins is kept with suffix ``_bins``:
* SVD of the aligned empirical pulse matrix (bins × u, bins with ≥ ``min_bin_count`` tokens whose
  aligned pulse is complete over ``|u| ≤ u_svd``; ``u_svd`` = 1.5 × the half-width at which the
  template falls to 1 % of its peak; where fewer than 4 empirical bin pulses are complete over that
  range - a window of a few decades cuts them - the empirical SVD range is narrowed, at most down to
  the template's half-maximum half-width, until 4 are; ``u_svd_emp`` and the template energy inside it,
  ``template_energy_in_u_svd_emp``, are reported), no centring or normalisation. Energy fraction of mode j =
  ``s_j² / Σ s²``; ``svd_energy1 = s1²/Σs²``, ``svd_energy2 = (s1²+s2²)/Σs²``. The same numbers
  for the fitted (token-aligned) pulses are reported with suffix ``_fit``.
* Reconstruction (Eq. 6): ``(p∗g)(x) = Σ_m p(x − u_m) g(u_m) h`` on a uniform fine grid of
  spacing ``h`` (``grid_points`` points across the window), with p the selected tokens as a fraction
  of all valid tokens per unit x, histogrammed over the window extended by the template half-width (so pulses
  of tokens learned just outside the window are included).
* Metrics against the empirical derivative at post-transient axis points:
  ``R² = 1 − Σ(ŷ−y)²/Σ(y−ȳ)²`` and ``nerr = ‖ŷ − y‖₂/‖y‖₂``, for the sigmoid-implied
  derivative, the reconstruction and the power-law derivative. Mean-loss error:
  ``max_k |L_sig − L_emp| / |L_emp|`` over post-transient points.

Stages (each a module; :func:`analyze` runs them in this order)::

    accumulate   validate inputs, lay out the window, one chunked pass over the losses -> sums
    curves       mean loss (empirical, sigmoid-implied), −dL/dx, the transient rule
    powerlaw     L = k a^−α + E with its token-group bootstrap
    spectrum     p(τ) per bin, the tail β of every selection (tail.py: the truncated power-law MLE)
    pulses       per-bin and aligned pulses, the template g, the SVD
    reconstruct  p∗g, metrics
    samples      bookkeeping and token samples for the figures
    result       SpectrumResult, summary.json, the analysis file (figures read it)

Cost: one chunked pass over the N tokens; per chunk the largest temporaries are
``chunk × max(K, grid_points)``; nothing of size N × grid is ever materialised.
"""

from __future__ import annotations

from tokenscale._lazy import lazy_exports

# public name -> module that defines it (PEP 562 lazy exports, as in tokenscale.fit: a stage module importing a
# sibling never waits on this package's own imports)
_EXPORTS = {
    "analyze": "tokenscale.analysis.pipeline",
    "AnalysisOptions": "tokenscale.analysis.options",
    "Selection": "tokenscale.analysis.options",
    "DEFAULT_SELECTIONS": "tokenscale.analysis.options",
    "SpectrumResult": "tokenscale.analysis.result",
    "write_summary": "tokenscale.analysis.result",
    "write_analysis": "tokenscale.analysis.result",
    "read_analysis": "tokenscale.analysis.result",
    "derivative": "tokenscale.analysis.numerics",
    "fit_quality": "tokenscale.analysis.numerics",
    "fit_power_law": "tokenscale.analysis.powerlaw",
    "fit_truncated_power_law": "tokenscale.analysis.tail",
    "FINE_BINS": "tokenscale.analysis.accumulate",
}
__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)  # PEP 562: import the defining module on first use
