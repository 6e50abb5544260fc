/* Per-row Levenberg-Marquardt of tokenscale's sigmoid fit (the native CPU engine), instantiated twice by
 * fit_lm.c: REAL = float (suffix f32) and REAL = double (suffix f64).
 *
 * This is the same algorithm as tokenscale.fit.engines.torch_lm (lm / _evaluate), written for one row at a
 * time (the math: tokenscale/fit/problem.py):
 * the reduced (variable-projection) problem over theta = (tau', rho = log lam'), closed-form (post, delta),
 * Kaufman's Gauss-Newton matrix or the exact reduced Hessian where it is positive definite, per-row
 * damping, projection onto the box, the same convergence test and the same final undamped polish step.
 * Each row iterates until it converges on its own, so there is no active set to compact; the two passes
 * over the K points of an evaluation are simple loops that the compiler vectorises (omp simd reductions).
 * Results of a row depend only on that row (never on how rows are chunked or threaded).
 */

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(name, SUFFIX)

typedef struct {
    REAL sse, delta, gbar, b0, b1, h00, h01, h11;
} FN(eval_t_);

/* basis b = sigmoid(s z), z = s lam' (tau' - t) with s = -1 for tau' > 0; fills z, b; returns delta etc. */
static inline void FN(basis_)(const REAL *restrict y, const REAL *restrict t, int k, REAL tau, REAL rho,
                              REAL dmax, REAL gvar_rel, REAL *restrict z, REAL *restrict b, REAL *lam_o,
                              REAL *sl_o, int *pos_o, REAL *bbar_o, REAL *invvar_o, int *clamped_o,
                              REAL *delta_o) {
    REAL lam = EXP(rho);
    int pos = tau > 0;
    REAL sl = pos ? -lam : lam;
    REAL slt = sl * tau;
    REAL sb = 0, sbb = 0, syb = 0;
#pragma omp simd reduction(+ : sb, sbb, syb)
    for (int j = 0; j < k; j++) {
        REAL zj = slt - sl * t[j];
        REAL bj = (REAL)1 / ((REAL)1 + EXPV(-zj));
        z[j] = zj;
        b[j] = bj;
        sb += bj;
        sbb += bj * bj;
        syb += y[j] * bj;
    }
    REAL bbar = sb * ((REAL)1 / (REAL)k);
    REAL var = sbb - sb * bbar;
    int okv = var > gvar_rel * sbb + (REAL)1e-30;
    REAL inv_var = okv ? (REAL)1 / var : (REAL)0;
    REAL delta = syb * inv_var;
    int clamped = FABS(delta) > dmax;
    if (clamped) delta = COPYSIGN(dmax, delta);
    *lam_o = lam;
    *sl_o = sl;
    *pos_o = pos;
    *bbar_o = bbar;
    *invvar_o = inv_var;
    *clamped_o = clamped;
    *delta_o = delta;
}

/* SSE, closed-form delta/gbar (g-parameterisation) only. */
static void FN(eval_sse_)(const REAL *restrict y, const REAL *restrict t, int k, REAL tau, REAL rho, REAL dmax,
                          REAL gvar_rel, REAL *restrict z, REAL *restrict b, REAL *sse, REAL *delta_g,
                          REAL *gbar_g) {
    REAL lam, sl, bbar, inv_var, delta;
    int pos, clamped;
    FN(basis_)(y, t, k, tau, rho, dmax, gvar_rel, z, b, &lam, &sl, &pos, &bbar, &inv_var, &clamped, &delta);
    REAL srr = 0;
#pragma omp simd reduction(+ : srr)
    for (int j = 0; j < k; j++) {
        REAL r = y[j] - delta * (b[j] - bbar);
        srr += r * r;
    }
    *sse = srr;
    *delta_g = pos ? -delta : delta;
    *gbar_g = pos ? (REAL)1 - bbar : bbar;
}

/* Full evaluation: SSE, delta, gbar and the halved gradient/Hessian of the reduced problem. */
static void FN(eval_)(const REAL *restrict y, const REAL *restrict t, int k, REAL tau, REAL rho, REAL dmax,
                      REAL gvar_rel, REAL *restrict z, REAL *restrict b, FN(eval_t_) *o) {
    REAL lam, sl, bbar, inv_var, delta;
    int pos, clamped;
    FN(basis_)(y, t, k, tau, rho, dmax, gvar_rel, z, b, &lam, &sl, &pos, &bbar, &inv_var, &clamped, &delta);
    REAL sw = 0, szw = 0, sbw = 0, szbw = 0, sww = 0, szww = 0, szzww = 0;
    REAL swr = 0, szwr = 0, srr = 0, sw2r = 0, szw2r = 0, szzw2r = 0;
#pragma omp simd reduction(+ : sw, szw, sbw, szbw, sww, szww, szzww, swr, szwr, srr, sw2r, szw2r, szzw2r)
    for (int j = 0; j < k; j++) {
        REAL bj = b[j], zj = z[j];
        REAL r = y[j] - delta * (bj - bbar);
        REAL w = bj - bj * bj; /* db/dz */
        REAL zw = zj * w;
        REAL w2r = (w - (REAL)2 * bj * w) * r; /* d2b/dz2 * r */
        sw += w;
        szw += zw;
        sbw += bj * w;
        szbw += bj * zw;
        sww += w * w;
        szww += zw * w;
        szzww += zw * zw;
        swr += r * w;
        szwr += r * zw;
        srr += r * r;
        sw2r += w2r;
        szw2r += zj * w2r;
        szzw2r += zj * zj * w2r;
    }
    REAL rk = (REAL)1 / (REAL)k;
    REAL lam2 = lam * lam;
    REAL a0 = sl * sw, a1 = szw;
    REAL c0 = sl * sbw - bbar * a0, c1 = szbw - bbar * a1;
    REAL p00 = lam2 * sww - a0 * a0 * rk, p01 = sl * szww - a0 * a1 * rk, p11 = szzww - a1 * a1 * rk;
    REAL e0 = sl * swr, e1 = szwr;
    REAL fr = clamped ? (REAL)0 : inv_var;
    REAL d2 = delta * delta;
    REAL m0 = e0 - delta * c0, m1 = e1 - delta * c1;
    REAL q00 = d2 * p00, q01 = d2 * p01, q11 = d2 * p11;
    REAL df = d2 * fr;
    REAL xh00 = q00 - m0 * m0 * fr - delta * lam2 * sw2r;
    REAL xh01 = q01 - m0 * m1 * fr - delta * sl * (swr + szw2r);
    REAL xh11 = q11 - m1 * m1 * fr - delta * (szwr + szzw2r);
    int exact = (xh00 > 0) && (xh11 > 0) && (xh00 * xh11 - xh01 * xh01 > (REAL)1e-3 * xh00 * xh11);
    REAL h00, h01, h11;
    if (exact) {
        h00 = xh00;
        h01 = xh01;
        h11 = xh11;
    } else {
        h00 = q00 - df * c0 * c0;
        h01 = q01 - df * c0 * c1;
        h11 = q11 - df * c1 * c1;
    }
    o->sse = srr;
    o->delta = pos ? -delta : delta;
    o->gbar = pos ? (REAL)1 - bbar : bbar;
    o->b0 = -delta * e0;
    o->b1 = -delta * e1;
    o->h00 = h00 > 0 ? h00 : (REAL)0;
    o->h01 = h01;
    o->h11 = h11 > 0 ? h11 : (REAL)0;
}

/* (H + mu diag(H)) s = -b on the free coordinates (fixed ones get 0); as torch_lm._solve2. */
static inline void FN(solve2_)(REAL h00, REAL h01, REAL h11, REAL b0, REAL b1, REAL mu, int f0, int f1, REAL eps,
                               REAL *s0, REAL *s1) {
    REAL tiny = eps * (h00 + h11) + (REAL)1e-30;
    REAL A00 = f0 ? h00 + mu * (h00 > tiny ? h00 : tiny) : (REAL)1;
    REAL A11 = f1 ? h11 + mu * (h11 > tiny ? h11 : tiny) : (REAL)1;
    REAL A01 = (f0 && f1) ? h01 : (REAL)0;
    REAL r0 = f0 ? -b0 : (REAL)0;
    REAL r1 = f1 ? -b1 : (REAL)0;
    REAL det = A00 * A11 - A01 * A01;
    REAL x0, x1;
    if (det > (REAL)1e-4 * A00 * A11) {
        REAL inv = (REAL)1 / det;
        x0 = (A11 * r0 - A01 * r1) * inv;
        x1 = (A00 * r1 - A01 * r0) * inv;
    } else {
        x0 = A00 > 0 ? r0 / A00 : (REAL)0;
        x1 = A11 > 0 ? r1 / A11 : (REAL)0;
    }
    *s0 = A00 > 0 ? x0 : (REAL)0;
    *s1 = A11 > 0 ? x1 : (REAL)0;
}

static inline void FN(capped_step_)(REAL tau, REAL rho, REAL s0, REAL s1, const tks_box_t *bx, REAL *tn, REAL *rn) {
    REAL a0 = FABS(s0) * (REAL)(1.0 / bx->step_cap_tau);
    REAL a1 = FABS(s1) * (REAL)(1.0 / bx->step_cap_rho);
    REAL scale = a0 > a1 ? a0 : a1;
    if (!(scale > 1)) scale = 1; /* NaN-safe */
    REAL inv = (REAL)1 / scale;
    REAL u = tau + s0 * inv, v = rho + s1 * inv;
    u = u < (REAL)bx->tlo ? (REAL)bx->tlo : (u > (REAL)bx->thi ? (REAL)bx->thi : u);
    v = v < (REAL)bx->rlo ? (REAL)bx->rlo : (v > (REAL)bx->rhi ? (REAL)bx->rhi : v);
    *tn = u;
    *rn = v;
}

/* Coordinates not pinned at a bound by a gradient pointing out of the box; as torch_lm._free_mask. */
static inline void FN(free_mask_)(REAL tau, REAL rho, REAL b0, REAL b1, REAL tlo, REAL thi, REAL rlo, REAL rhi,
                                  int *f0, int *f1) {
    *f0 = !(((tau <= tlo) && (b0 > 0)) || ((tau >= thi) && (b0 < 0)));
    *f1 = !(((rho <= rlo) && (b1 > 0)) || ((rho >= rhi) && (b1 < 0)));
}

/* The damping after an accepted (lowered, not below mu_min) or rejected (raised, to at least mu_reject) step. */
static inline REAL FN(next_mu_)(REAL mu, int accepted, const tks_box_t *bx) {
    if (accepted) {
        mu = mu * (REAL)bx->mu_accept;
        if (mu < (REAL)bx->mu_min) mu = (REAL)bx->mu_min;
    } else {
        mu = mu * (REAL)bx->mu_grow;
        if (mu < (REAL)bx->mu_reject) mu = (REAL)bx->mu_reject;
    }
    return mu;
}

/* Levenberg-Marquardt of one centred row y from (tau, rho); writes the result to *_o. */
static void FN(lm_row_)(const REAL *restrict y, const REAL *restrict t, int k, REAL tau, REAL rho, REAL dm, REAL fl,
                        const tks_box_t *bx, REAL *restrict z, REAL *restrict b, REAL *tau_o, REAL *rho_o,
                        REAL *sse_o, REAL *delta_o, REAL *gbar_o, signed char *status_o, int *niter_o) {
    const REAL eps = (REAL)EPS;
    const REAL gvar_rel = (REAL)(64.0 * EPS);
    const REAL tol = (REAL)bx->tol;
    const REAL tlo = (REAL)bx->tlo, thi = (REAL)bx->thi, rlo = (REAL)bx->rlo, rhi = (REAL)bx->rhi;
    REAL mu = (REAL)bx->mu0;
    int it = 0, done = 0;
    FN(eval_t_) st, sn;
    FN(eval_)(y, t, k, tau, rho, dm, gvar_rel, z, b, &st);
    for (;;) {
        int f0, f1;
        FN(free_mask_)(tau, rho, st.b0, st.b1, tlo, thi, rlo, rhi, &f0, &f1);
        REAL g0, g1;
        FN(solve2_)(st.h00, st.h01, st.h11, st.b0, st.b1, 0, f0, f1, eps, &g0, &g1);
        REAL dec = -(g0 * st.b0 + g1 * st.b1);
        int conv = (dec <= tol * st.sse + fl) || (mu > (REAL)bx->mu_max) || done;
        if (conv || it >= bx->max_iter) {
            /* polish: the final undamped step, kept where it lowers the SSE */
            REAL tn, rn, sse_n, del_n, gb_n;
            FN(capped_step_)(tau, rho, g0, g1, bx, &tn, &rn);
            FN(eval_sse_)(y, t, k, tn, rn, dm, gvar_rel, z, b, &sse_n, &del_n, &gb_n);
            int better = sse_n < st.sse;
            *tau_o = better ? tn : tau;
            *rho_o = better ? rn : rho;
            *sse_o = better ? sse_n : st.sse;
            *delta_o = better ? del_n : st.delta;
            *gbar_o = better ? gb_n : st.gbar;
            *status_o = (signed char)(conv ? 0 : 1);
            *niter_o = it;
            return;
        }
        REAL s0, s1, tn, rn;
        FN(solve2_)(st.h00, st.h01, st.h11, st.b0, st.b1, mu, f0, f1, eps, &s0, &s1);
        FN(capped_step_)(tau, rho, s0, s1, bx, &tn, &rn);
        FN(eval_)(y, t, k, tn, rn, dm, gvar_rel, z, b, &sn);
        if (sn.sse < st.sse) { /* accepted (NaN-safe) */
            done = 0;
            st = sn;
            tau = tn;
            rho = rn;
            mu = FN(next_mu_)(mu, 1, bx);
        } else {
            /* a rejected step that does not move theta: nothing left to gain at this precision */
            done = (FABS(tn - tau) <= 4 * eps * (1 + FABS(tau))) && (FABS(rn - rho) <= 4 * eps * (1 + FABS(rho)));
            mu = FN(next_mu_)(mu, 0, bx);
        }
        it++;
    }
}

/* The LM step alone, for the shared test table (tests/test_lm_step.py): for each of n cases, in (n, 8) =
 * h00, h01, h11, b0, b1, mu, tau, rho; out (n, 6) = the step s0, s1 on the free coordinates, the capped and
 * projected point tau_n, rho_n, and the damping after accepting / rejecting it.  The same inline functions as
 * lm_row_ (free_mask_, solve2_, capped_step_, next_mu_). */
int FN(tks_lm_step_)(int64_t n, const REAL *in, const tks_box_t *bx, REAL *out) {
    const REAL eps = (REAL)EPS;
    for (int64_t i = 0; i < n; i++) {
        const REAL *c = in + 8 * i;
        REAL *o = out + 6 * i;
        int f0, f1;
        FN(free_mask_)(c[6], c[7], c[3], c[4], (REAL)bx->tlo, (REAL)bx->thi, (REAL)bx->rlo, (REAL)bx->rhi, &f0, &f1);
        FN(solve2_)(c[0], c[1], c[2], c[3], c[4], c[5], f0, f1, eps, o + 0, o + 1);
        FN(capped_step_)(c[6], c[7], o[0], o[1], bx, o + 2, o + 3);
        o[4] = FN(next_mu_)(c[5], 1, bx);
        o[5] = FN(next_mu_)(c[5], 0, bx);
    }
    return 0;
}

/* Start point from the grid scores c (G,) = y_c . u_j: the best grid point (largest c^2, first of ties)
 * moved by the Newton step of the quadratic through its 3x3 neighbourhood (as torch_lm.grid_start). */
static void FN(grid_start_)(const REAL *restrict c, const REAL *grid_tau, const REAL *grid_rho,
                            const tks_box_t *bx, REAL *tau_o, REAL *rho_o) {
    const int nt = bx->n_tau, nl = bx->n_lam, g = nt * nl;
    REAL qmax = 0;
#pragma omp simd reduction(max : qmax)
    for (int j = 0; j < g; j++) {
        REAL v = c[j] * c[j];
        qmax = v > qmax ? v : qmax;
    }
    int best = 0;
    for (int j = 0; j < g; j++) {
        if (c[j] * c[j] == qmax) {
            best = j;
            break;
        }
    }
    REAL tau = grid_tau[best], rho = grid_rho[best];
    if (bx->refine && nt >= 3) {
#define Q(a, r) (c[(a) * nl + (r)] * c[(a) * nl + (r)])
        int it = best / nl, ir = best - it * nl;
        int itp = it + 1 < nt - 1 ? it + 1 : nt - 1, itm = it - 1 > 0 ? it - 1 : 0;
        REAL q0 = Q(it, ir), qtp = Q(itp, ir), qtm = Q(itm, ir);
        REAL gt = (REAL)0.5 * (qtp - qtm), ht = qtp - 2 * q0 + qtm;
        int in_t = it > 0 && it < nt - 1;
        REAL st = (in_t && ht < 0) ? -gt / ht : (REAL)0;
        if (nl >= 3) {
            int irp = ir + 1 < nl - 1 ? ir + 1 : nl - 1, irm = ir - 1 > 0 ? ir - 1 : 0;
            REAL qrp = Q(it, irp), qrm = Q(it, irm);
            REAL qpp = Q(itp, irp), qpm = Q(itp, irm), qmp = Q(itm, irp), qmm = Q(itm, irm);
            REAL gr = (REAL)0.5 * (qrp - qrm), hr = qrp - 2 * q0 + qrm;
            REAL htr = (REAL)0.25 * (qpp - qpm - qmp + qmm);
            int in_r = ir > 0 && ir < nl - 1;
            REAL sr = (in_r && hr < 0) ? -gr / hr : (REAL)0;
            REAL det = ht * hr - htr * htr;
            if (in_t && in_r && ht < 0 && det > 0) {
                REAL inv = (REAL)1 / det;
                st = -(hr * gt - htr * gr) * inv;
                sr = -(ht * gr - htr * gt) * inv;
            }
            sr = sr < -1 ? (REAL)-1 : (sr > 1 ? (REAL)1 : sr);
            rho = rho + sr * (REAL)bx->grid_dr;
        }
#undef Q
        st = st < -1 ? (REAL)-1 : (st > 1 ? (REAL)1 : st);
        tau = tau + st * (REAL)bx->grid_dt;
        tau = tau < (REAL)bx->tlo ? (REAL)bx->tlo : (tau > (REAL)bx->thi ? (REAL)bx->thi : tau);
        rho = rho < (REAL)bx->rlo ? (REAL)bx->rlo : (rho > (REAL)bx->rhi ? (REAL)bx->rhi : rho);
    }
    *tau_o = tau;
    *rho_o = rho;
}

/* Stage 0 for rows [0, n) of Y (row stride ldy): row mean, centred copy Yc (n x k, zeros for rows with a
 * non-finite value), SST, range max - min and a validity flag. */
int FN(tks_prep_)(int64_t n, int k, const REAL *Y, int64_t ldy, REAL *Yc, REAL *ybar_o, REAL *sst_o, REAL *rng_o,
                  signed char *valid_o) {
    const REAL rk = (REAL)1 / (REAL)k;
    for (int64_t i = 0; i < n; i++) {
        const REAL *restrict y = Y + i * ldy;
        REAL *restrict yc = Yc + i * (int64_t)k;
        REAL s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < k; j++) s += y[j];
        REAL mean = s * rk;
        ybar_o[i] = mean;
        if (!isfinite(mean)) { /* a NaN/inf entry makes the mean non-finite */
            for (int j = 0; j < k; j++) yc[j] = 0;
            valid_o[i] = 0;
            sst_o[i] = 0;
            rng_o[i] = 0;
            continue;
        }
        REAL mn = y[0], mx = y[0], ss = 0;
#pragma omp simd reduction(min : mn) reduction(max : mx) reduction(+ : ss)
        for (int j = 0; j < k; j++) {
            REAL v = y[j];
            REAL d = v - mean;
            yc[j] = d;
            ss += d * d;
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        valid_o[i] = 1;
        sst_o[i] = ss;
        rng_o[i] = mx - mn;
    }
    return 0;
}

/* Grid scores c (G,) = y . U[:, j] of one centred row: U is (k, G) row-major; the sum over k runs in a fixed
 * order (one FMA chain per score), so a row's scores never depend on the other rows. */
static void FN(scores_)(const REAL *restrict y, const REAL *restrict U, int k, int g, REAL *restrict c) {
    int j0 = 0;
    for (; j0 + TKS_TILE <= g; j0 += TKS_TILE) { /* a tile of scores stays in registers */
        REAL acc[TKS_TILE];
        for (int j = 0; j < TKS_TILE; j++) acc[j] = 0;
        for (int i = 0; i < k; i++) {
            const REAL yi = y[i];
            const REAL *restrict u = U + (int64_t)i * g + j0;
#pragma omp simd
            for (int j = 0; j < TKS_TILE; j++) acc[j] += yi * u[j];
        }
        for (int j = 0; j < TKS_TILE; j++) c[j0 + j] = acc[j];
    }
    for (int j = j0; j < g; j++) c[j] = 0;
    for (int i = 0; i < k; i++) {
        const REAL yi = y[i];
        const REAL *restrict u = U + (int64_t)i * g;
        for (int j = j0; j < g; j++) c[j] += yi * u[j];
    }
}

/* Stages 1-2 for rows [0, n): grid scores and start, then LM.  Rows with valid[i] == 0 are skipped (their
 * outputs are left as they are).  Outputs are indexed by i. */
int FN(tks_fit_)(int64_t n, int k, const REAL *Yc, const REAL *U, const REAL *ybar, const REAL *rng,
                 const signed char *valid, const REAL *t, const REAL *grid_tau, const REAL *grid_rho,
                 const tks_box_t *bx, REAL *out_tau, REAL *out_rho, REAL *out_sse, REAL *out_delta, REAL *out_gbar,
                 signed char *out_status, int *out_niter) {
    const int g = bx->n_tau * bx->n_lam;
    REAL *z = (REAL *)malloc((2 * (size_t)k + (size_t)g) * sizeof(REAL));
    if (!z) return 1;
    REAL *b = z + k, *c = z + 2 * k;
    const REAL eps = (REAL)EPS;
    for (int64_t i = 0; i < n; i++) {
        if (!valid[i]) continue;
        REAL tau, rho;
        FN(scores_)(Yc + i * (int64_t)k, U, k, g, c);
        FN(grid_start_)(c, grid_tau, grid_rho, bx, &tau, &rho);
        REAL dm = (REAL)bx->delta_max * rng[i];
        REAL e = eps * (FABS(ybar[i]) + rng[i] + 1);
        REAL fl = (REAL)16 * (REAL)k * e * e; /* SSE round-off floor */
        FN(lm_row_)(Yc + i * (int64_t)k, t, k, tau, rho, dm, fl, bx, z, b, out_tau + i, out_rho + i, out_sse + i,
                    out_delta + i, out_gbar + i, out_status + i, out_niter + i);
    }
    free(z);
    return 0;
}

#undef FN
#undef CAT
#undef CAT2
