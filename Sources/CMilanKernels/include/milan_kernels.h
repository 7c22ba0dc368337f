// Row and elementwise SIMD kernels for MILAN in Swift.
//
// Every function has an AVX2+FMA body (compiled with a per-function target attribute, so no global -mavx2 flag is
// needed) and a portable scalar body, some (the softmax forward, the GELUs) an AVX-512 body too; the body is picked
// once from CPUID (`milan_simd_level`). Tests force each lower level with `milan_set_simd_level` and compare every
// body against naive Swift references.
//
// Conventions: all arrays are contiguous float32, row-major. Backward functions ACCUMULATE into their gradient
// outputs (dx += ...) unless an `accumulate` flag says otherwise. Row ranges let the caller split work across threads.
#ifndef MILAN_KERNELS_H
#define MILAN_KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

/// 0 = portable scalar code, 1 = AVX2 + FMA, 2 = AVX-512 as well.
int milan_simd_level(void);
/// Forces a level (clamped to what the CPU supports). Returns the level now in force.
int milan_set_simd_level(int level);
/// Cores in this process's affinity mask (sched_getaffinity), 0 when it cannot be read.
int milan_usable_cores(void);
/// A hint to fetch [p, p + bytes) towards the core's caches (L2) ahead of use, one request per 64-byte line
/// (`for_write`: the lines are about to be written). Never changes a result.
void milan_prefetch(const void *p, long bytes, int for_write);

// Runs fn(ctx, part) for every part in [0, parts) on the calling thread and up to threads - 1 pooled workers that
// poll for work between regions (thread_pool.c); parts are handed out one at a time. Returns 0 without running
// anything when threads < 2, or when a region is already running (another thread's, or a nested call from inside
// a part): the caller then runs the parts some other way.
typedef void (*milan_pool_fn)(void *ctx, long part);
int milan_pool_run(long parts, int threads, milan_pool_fn fn, void *ctx);

// y = f(x); dx += dy * f'(x) (or dx = dy * f'(x) when accumulate == 0). In-place (y == x) is allowed for the forwards.
void milan_gelu_erf_fwd(const float *x, float *y, long n);
// The exact GELU forward with the AVX-512 erfc tail computed per vector (any lane far: the whole vector), the
// reference that milan_gelu_erf_fwd's far-lanes-only tail is tested against; other SIMD levels: milan_gelu_erf_fwd.
void milan_gelu_erf_fwd_vectorwise(const float *x, float *y, long n);
// 1 (default): the AVX-512 forwards use their own loop where they have one (the exact GELU's far-lanes tail list);
// 0: the generated 16-lane loop for every activation (A/B runs: `milan-bench --ab gelu-tail-list`).
int milan_gelu_tail_list(void);
void milan_set_gelu_tail_list(int on);
void milan_gelu_erf_bwd(const float *x, const float *dy, float *dx, long n, int accumulate);
void milan_gelu_tanh_fwd(const float *x, float *y, long n);
void milan_gelu_tanh_bwd(const float *x, const float *dy, float *dx, long n, int accumulate);
void milan_quick_gelu_fwd(const float *x, float *y, long n);
void milan_quick_gelu_bwd(const float *x, const float *dy, float *dx, long n, int accumulate);
/// y = exp(x), n elements (used by tests and log-softmax helpers).
void milan_exp(const float *x, float *y, long n);

// LayerNorm over the last axis of x: [rows, d]. weight/bias may be NULL (no affine).
// mean, rstd: [rows] (saved for the backward).
void milan_layernorm_fwd(const float *x, const float *weight, const float *bias, float *y, float *mean,
                         float *rstd, long rows, long d, float eps);
// dx += ... (dx = ... when accumulate == 0), dweight += ..., dbias += ... (dx, dweight, dbias may be NULL).
void milan_layernorm_bwd(const float *dy, const float *x, const float *weight, const float *mean, const float *rstd,
                         float *dx, float *dweight, float *dbias, long rows, long d, int accumulate);

// y = softmax(scale * x) along rows of length n. In-place allowed.
void milan_softmax_fwd(const float *x, float *y, long rows, long n, float scale);
// g = scale * y * (dy - sum(dy * y)); dx = g (accumulate == 0, dx may alias dy) or dx += g.
void milan_softmax_bwd(const float *y, const float *dy, float *dx, long rows, long n, float scale, int accumulate);
// y = log_softmax(x) along rows of length n.
void milan_log_softmax_fwd(const float *x, float *y, long rows, long n);
// dx += dy - exp(y) * sum(dy) (dx = ... when accumulate == 0).
void milan_log_softmax_bwd(const float *y, const float *dy, float *dx, long rows, long n, int accumulate);

// Linear layers with frozen weights (the teachers), W [n, k] packed once into panels of 32 output features:
// panel p holds, for every k, the 32 floats W[32p + j, k] (zero past n). Floats the packed copy needs:
long milan_packed_weight_count(long n, long k);
void milan_pack_weight(const float *w, long n, long k, float *packed);
// Panels [p_lo, p_hi) only (callers split the packing across threads), of W [n, k] as above, or of B [k, n]
// row-major with rows ldb floats apart (the orientation of a backward product dX = dY·W: panel p holds, for every
// k, B[k, 32p ..< 32p + 32]).
void milan_pack_weight_panels(const float *w, long n, long k, long p_lo, long p_hi, float *packed);
void milan_pack_rows_panels(const float *b, long ldb, long k, long n, long p_lo, long p_hi, float *packed);
// milan_pack_weight_panels of a W [n, k] whose rows are ldw floats apart (a head's columns of a token-major buffer).
void milan_pack_weight_panels_ld(const float *w, long ldw, long n, long k, long p_lo, long p_hi, float *packed);
// Whether this CPU runs the packed product with AVX-512 (else a portable loop over the same layout).
int milan_packed_linear_avx512(void);
// y[r, :] = x[r, :] · Wᵀ + bias for rows r in [0, rows) (x rows ldx floats apart, y rows ldy apart; bias may be NULL;
// with `accumulate`, y[r, :] += … instead). 8 rows × 32 outputs per register tile, x read in place, no other packing;
// one thread (callers split rows).
void milan_packed_linear(const float *x, long ldx, long rows, long k, const float *packed, long n, const float *bias,
                         float *y, long ldy, int accumulate);
// y[r, j] = Σ_kk x[r·ldx + kk·ldk] · B[kk, j] for r < rows, j < n (y += … with `accumulate`), B packed into panels
// as above: x read in place with either ldk = 1 (rows of x) or ldx = 1 (x transposed: the product Xᵀ·B of a
// backward); the same 8 × 32 register tile. One thread. The attention heads' six products run on it.
void milan_packed_product(const float *x, long ldx, long ldk, long rows, long k, const float *packed, long n,
                          float *y, long ldy, int accumulate);
// y[rows, n] (+)= x[rows, k]·op(B) + bias (bias may be NULL) over the 32-output panels [p_lo, p_hi) only, B not
// packed beforehand: each panel is packed into `scratch` (32·k floats, so it stays in L2) right before every row of
// x (rows ldx floats apart, read in place) runs against it, while the next panel's source is prefetched a share per
// 8-row tile. op(B) is Wᵀ of a W [n, k] (`transposed_b`: a forward) or B [k, n] (a backward dX = dY·W), rows ldb
// floats apart. The same tiles and sums as milan_pack_weight_panels / milan_pack_rows_panels followed by
// milan_packed_linear (bit for bit); callers split the panels across threads, each with its own scratch. Few rows
// against a large B (the paper's encoder: 400 tokens) save writing and re-reading B's packed copy.
void milan_packed_product_panels(const float *x, long ldx, long rows, long k, const float *b, long ldb,
                                 int transposed_b, long n, long p_lo, long p_hi, const float *bias, float *y,
                                 long ldy, int accumulate, float *scratch);

// A linear layer's weight gradient dW[n, k] = dY[rows, n]ᵀ · X[rows, k] (dW += … with `accumulate`; all three
// row-major and contiguous), restricted to the block of outputs [i_lo, i_hi) × columns [c_lo, c_hi) (callers split
// the outputs or the columns across threads, or the rows, adding the partial results); one thread. The reduction
// runs in equal chunks of at most 512 rows (256 for blocks under 256 columns): X's chunk packed into 32-column
// panels and, for wide blocks, dY's into 8-wide micro-panels (milan_packed_weight_grad_scratch(rows, c_hi - c_lo)
// floats of `scratch`, enough for any call with at most `rows` rows), then the 8 × 32 register tile over every
// panel. AVX-512 where the CPU has it, else a portable loop.
long milan_packed_weight_grad_scratch(long rows, long cols);
// 1 (default): on the micro-panel path the next 16 outputs' dY micro-panels are copied inside the current block's
// first tiles; 0: each block's copied before its tiles (the same bits; A/B runs: `milan-bench --ab weight-grad-carry`).
int milan_weight_grad_carry(void);
void milan_set_weight_grad_carry(int on);
void milan_packed_weight_grad(const float *dy, const float *x, long rows, long n, long k, long i_lo, long i_hi,
                              long c_lo, long c_hi, float *dw, int accumulate, float *scratch);
// 1 (default): the packed products' edge tiles, of at most 4 rows or at most 16 columns, run on a 4 × 32 or 8 × 16
// register tile (half the FMAs of the 8 × 32 tile with rows repeated or columns masked off); 0: on the 8 × 32 tile
// (the same bits; A/B runs: `milan-bench --ab edge-tiles`).
int milan_edge_tiles(void);
void milan_set_edge_tiles(int on);

// One AdamW update (PyTorch's torch.optim.AdamW, single-tensor) over n elements:
//   w *= decay (= 1 - lr * weight_decay); m += (1 - b1) * (g - m); v = b2 * v + (1 - b2) * g * g;
//   w -= step_size * m / (sqrt(v) / bc2_sqrt + eps)   with step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t).
// The AVX2 body uses separate multiplies and adds (no FMA) and IEEE sqrt/div, so both paths give identical bits.
void milan_adamw_step(float *w, const float *g, float *m, float *v, long n, float decay, float b1, float b2,
                      float step_size, float bc2_sqrt, float eps);

// The FP32 FMA limit (fma_peak.c). Bit mask of the vector widths (in floats) this CPU runs FMAs at: 4 (NEON),
// 8 (AVX2 + FMA), 16 (AVX-512F); 0 when none is known.
int milan_fma_peak_widths(void);
// Runs `iterations` × 24 independent FMAs of `width` lanes on distinct registers (inline assembly) and returns the
// FLOPs done (2 per lane per FMA), or 0 when this CPU has no such width. The caller times it.
double milan_fma_peak_run(int width, long iterations);

// A process-wide FLOP counter (relaxed atomics) that BLAS.sgemmRaw feeds while counting is on. Counting is a flag of
// the calling thread (Parallel.run sets it on the threads running a counting thread's parts), so products another
// thread runs meanwhile are not counted.
void milan_flop_counter_add(long long flops);
long long milan_flop_counter_take(void);
void milan_flop_counting_set(int on);
int milan_flop_counting(void);

#ifdef __cplusplus
}
#endif
#endif
