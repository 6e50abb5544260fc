"""The decomposition end to end: every stage of :mod:`tokenscale.analysis` in order (definitions there)."""

from __future__ import annotations

from tokenscale.analysis.accumulate import FINE_BINS, accumulate, layout, prepare
from tokenscale.analysis.curves import aggregate_curves
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.analysis.powerlaw import power_law_stage
from tokenscale.analysis.pulses import pulses_stage, svd_groups_stage, svd_stage
from tokenscale.analysis.reconstruct import metrics_stage, reconstruct_stage
from tokenscale.analysis.result import SpectrumResult
from tokenscale.analysis.samples import counts_stage, samples_stage
from tokenscale.analysis.spectrum import spectrum_stage

__all__ = ["analyze"]


def analyze(losses, fit, options: AnalysisOptions | None = None, **kw) -> SpectrumResult:
    """Pulse–spectrum decomposition of ``losses`` (N, K) given token sigmoid fits ``fit``.

    ``losses`` may be any array-like supporting row slicing (numpy array, memmap, h5py dataset). Options as an
    :class:`AnalysisOptions` or as its keywords; see the module docstring for every definition.
    """
    opts = options if options is not None else AnalysisOptions(**kw)
    inp = prepare(losses, fit, opts)
    lay = layout(inp, opts)
    sums = accumulate(losses, inp, lay, opts)
    cv = aggregate_curves(sums, inp, opts)
    pl, loss_pl, deriv_pl = power_law_stage(inp.a_orig, cv.post_mask, cv.loss_emp, sums.grp, sums.grp_n,
                                            transform=inp.transform, n_boot=opts.n_boot, seed=opts.seed,
                                            n_groups=sums.grp_n.size)
    spec = spectrum_stage(sums, inp, lay, opts)
    pu = pulses_stage(sums, inp, lay, spec, opts)
    svd = svd_stage(pu, lay, spec, opts, groups=svd_groups_stage(losses, sums, inp, lay, pu, opts))
    rec = reconstruct_stage(sums, inp, lay, pu)
    counts, category_counts = counts_stage(sums, inp, lay)
    smp = samples_stage(losses, sums, inp, lay, opts)
    settings = {**opts.settings(), "transient": cv.transient_rule, "n_groups": sums.grp_n.size,
                "fine_bins": FINE_BINS}
    return SpectrumResult(
        transform=inp.transform, axis_x=inp.x, axis_orig=inp.a_orig, post_mask=cv.post_mask,
        transient_start_x=cv.transient_start_x, counts=counts, category_counts=category_counts,
        loss_emp=cv.loss_emp, loss_sig=cv.loss_sig, deriv_emp=cv.deriv_emp, deriv_sig=cv.deriv_sig,
        deriv_rec=rec.deriv_rec, deriv_pl=deriv_pl, loss_pl=loss_pl, grid_x=lay.grid,
        deriv_sig_grid=cv.deriv_sig_grid, deriv_rec_grid=rec.deriv_rec_grid, powerlaw=pl,
        bin_edges_x=lay.bin_edges, bin_count=spec.bin_count, bin_mean_tau_x=spec.bin_mean_tau_x,
        density_x=spec.density_x, density_orig=spec.density_orig, tail=spec.tail, selections=spec.selections,
        pulse_emp=pu.pulse_emp, pulse_fit_grid=pu.pulse_fit_grid, u_grid=lay.u_grid, aligned_emp=pu.aligned_emp,
        aligned_fit=pu.aligned_fit, template=pu.template, template_emp=pu.template_emp,
        deriv_rec_emp=rec.deriv_rec_emp, svd=svd, metrics=metrics_stage(cv, rec, deriv_pl, pu, svd, lay),
        settings=settings, notes=[cv.note] if cv.note else [], sample_idx=smp.sample_idx, sample_losses=smp.sample_losses,
        sample_params=smp.sample_params, category_examples=smp.category_examples, scatter=smp.scatter,
    )
