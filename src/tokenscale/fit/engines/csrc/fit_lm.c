/* tokenscale native fit kernel: per-row Levenberg-Marquardt for the sigmoid fit on CPU.
 *
 * Built at first use by tokenscale/fit/engines/native.py with the system C compiler (cc -O3 -march=native
 * -fopenmp-simd -shared) and loaded with ctypes; no Python headers and no OpenMP runtime are needed
 * (threads are Python threads: ctypes releases the GIL during the call).  The algorithm is documented in
 * tokenscale/fit/problem.py and fit_lm_impl.h; its bounds and LM constants come from there through
 * tks_box_t (Problem.kernel_constants).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TKS_ABI_VERSION 6
#define TKS_TILE 16

/* bounds, options and LM constants shared by all rows (mirrors native.Box; filled from
 * tokenscale.fit.problem: Problem.kernel_constants) */
typedef struct {
    double tlo, thi, rlo, rhi; /* box of tau' and rho = log lam' */
    double tol, delta_max, grid_dt, grid_dr;
    double step_cap_tau, step_cap_rho;            /* problem.STEP_CAP_TAU, STEP_CAP_RHO */
    double mu0, mu_reject, mu_accept, mu_min, mu_grow, mu_max; /* problem.MU0, MU_REJECT, ... */
    int max_iter, n_tau, n_lam, refine;
} tks_box_t;

int tks_abi_version(void) { return TKS_ABI_VERSION; }

/* exp for float that the compiler can vectorise (Cephes expf: range reduction by ln 2 and a degree-5
 * polynomial, ~1 ulp); the argument is clamped so that 2^n stays a normal float. */
static inline float tks_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float fx = x * 1.44269504088896341f;
    float n = (fx + 12582912.0f) - 12582912.0f; /* round to nearest (|fx| < 2^22) */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float e = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return e * scale;
}

#define REAL float
#define SUFFIX f32
#define EXP(v) expf(v)
#define EXPV(v) tks_expf(v)
#define FABS(v) fabsf(v)
#define COPYSIGN(a, b) copysignf(a, b)
#define EPS 1.1920928955078125e-07
#include "fit_lm_impl.h"
#undef REAL
#undef SUFFIX
#undef EXP
#undef EXPV
#undef FABS
#undef COPYSIGN
#undef EPS

#define REAL double
#define SUFFIX f64
#define EXP(v) exp(v)
#define EXPV(v) exp(v)
#define FABS(v) fabs(v)
#define COPYSIGN(a, b) copysign(a, b)
#define EPS 2.220446049250313e-16
#include "fit_lm_impl.h"
