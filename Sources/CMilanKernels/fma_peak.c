// The machine's FP32 FMA limit, measured: a loop of independent fused multiply-adds on distinct registers, written
// in inline assembly so the compiler can neither merge nor reorder them (an intrinsics loop was folded to ~40 GF/s
// per core on a Zen 4 machine whose real limit is ~115). milan_fma_peak_run returns the FLOPs done (2 per lane per FMA).
#include "milan_kernels.h"

#if defined(__x86_64__)
// 12 accumulators: enough independent chains to cover the FMA latency (4-5 cycles) on both FMA pipes.
#define FMA12(op, r) \
  op " %%" r "14, %%" r "15, %%" r "0\n\t" op " %%" r "14, %%" r "15, %%" r "1\n\t" \
  op " %%" r "14, %%" r "15, %%" r "2\n\t" op " %%" r "14, %%" r "15, %%" r "3\n\t" \
  op " %%" r "14, %%" r "15, %%" r "4\n\t" op " %%" r "14, %%" r "15, %%" r "5\n\t" \
  op " %%" r "14, %%" r "15, %%" r "6\n\t" op " %%" r "14, %%" r "15, %%" r "7\n\t" \
  op " %%" r "14, %%" r "15, %%" r "8\n\t" op " %%" r "14, %%" r "15, %%" r "9\n\t" \
  op " %%" r "14, %%" r "15, %%" r "10\n\t" op " %%" r "14, %%" r "15, %%" r "11\n\t"

// The loop for register kind r (ymm or zmm): zero the accumulators and the two sources, then 24 FMAs an iteration.
#define ZERO(r, n) "vxorps %%" r #n ", %%" r #n ", %%" r #n "\n\t"
#define FMA_LOOP(r)                                                                                           \
  __asm__ volatile(ZERO(r, 0) ZERO(r, 1) ZERO(r, 2) ZERO(r, 3) ZERO(r, 4) ZERO(r, 5) ZERO(r, 6) ZERO(r, 7)     \
                   ZERO(r, 8) ZERO(r, 9) ZERO(r, 10) ZERO(r, 11) ZERO(r, 14) ZERO(r, 15)                       \
                   "1:\n\t" FMA12("vfmadd231ps", r) FMA12("vfmadd231ps", r)                                   \
                   "dec %0\n\t jnz 1b\n\t vzeroupper\n\t"                                                     \
                   : "+r"(iterations)                                                                         \
                   :                                                                                          \
                   : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",  \
                     "xmm11", "xmm14", "xmm15", "cc")

__attribute__((target("avx2,fma"))) static void fma_avx2(long iterations) { FMA_LOOP("ymm"); }
__attribute__((target("avx512f"))) static void fma_avx512(long iterations) { FMA_LOOP("zmm"); }
#endif

#if defined(__aarch64__)
static void fma_neon(long iterations) {
  __asm__ volatile(
      "movi v0.4s, #0\n\t movi v1.4s, #0\n\t movi v2.4s, #0\n\t movi v3.4s, #0\n\t movi v4.4s, #0\n\t"
      "movi v5.4s, #0\n\t movi v6.4s, #0\n\t movi v7.4s, #0\n\t movi v8.4s, #0\n\t movi v9.4s, #0\n\t"
      "movi v10.4s, #0\n\t movi v11.4s, #0\n\t movi v14.4s, #0\n\t movi v15.4s, #0\n\t"
      "1:\n\t"
      "fmla v0.4s, v14.4s, v15.4s\n\t fmla v1.4s, v14.4s, v15.4s\n\t fmla v2.4s, v14.4s, v15.4s\n\t"
      "fmla v3.4s, v14.4s, v15.4s\n\t fmla v4.4s, v14.4s, v15.4s\n\t fmla v5.4s, v14.4s, v15.4s\n\t"
      "fmla v6.4s, v14.4s, v15.4s\n\t fmla v7.4s, v14.4s, v15.4s\n\t fmla v8.4s, v14.4s, v15.4s\n\t"
      "fmla v9.4s, v14.4s, v15.4s\n\t fmla v10.4s, v14.4s, v15.4s\n\t fmla v11.4s, v14.4s, v15.4s\n\t"
      "fmla v0.4s, v14.4s, v15.4s\n\t fmla v1.4s, v14.4s, v15.4s\n\t fmla v2.4s, v14.4s, v15.4s\n\t"
      "fmla v3.4s, v14.4s, v15.4s\n\t fmla v4.4s, v14.4s, v15.4s\n\t fmla v5.4s, v14.4s, v15.4s\n\t"
      "fmla v6.4s, v14.4s, v15.4s\n\t fmla v7.4s, v14.4s, v15.4s\n\t fmla v8.4s, v14.4s, v15.4s\n\t"
      "fmla v9.4s, v14.4s, v15.4s\n\t fmla v10.4s, v14.4s, v15.4s\n\t fmla v11.4s, v14.4s, v15.4s\n\t"
      "subs %0, %0, #1\n\t b.ne 1b\n\t"
      : "+r"(iterations)
      :
      : "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v14", "v15", "cc");
}
#endif

int milan_fma_peak_widths(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  int w = 0;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) w |= 8;
  if (__builtin_cpu_supports("avx512f")) w |= 16;
  return w;
#elif defined(__aarch64__)
  return 4;
#else
  return 0;
#endif
}

double milan_fma_peak_run(int width, long iterations) {
  if (iterations < 1) return 0;
  // 24 FMAs per iteration, `width` lanes each, 2 FLOPs per lane.
  double flops = 24.0 * 2.0 * (double)width * (double)iterations;
#if defined(__x86_64__)
  if (width == 8 && (milan_fma_peak_widths() & 8)) { fma_avx2(iterations); return flops; }
  if (width == 16 && (milan_fma_peak_widths() & 16)) { fma_avx512(iterations); return flops; }
#elif defined(__aarch64__)
  if (width == 4) { fma_neon(iterations); return flops; }
#endif
  return 0;
}

static long long g_flops = 0;
void milan_flop_counter_add(long long flops) { __atomic_fetch_add(&g_flops, flops, __ATOMIC_RELAXED); }
long long milan_flop_counter_take(void) { return __atomic_exchange_n(&g_flops, 0, __ATOMIC_RELAXED); }
static _Thread_local int t_counting = 0;
void milan_flop_counting_set(int on) { t_counting = on; }
int milan_flop_counting(void) { return t_counting; }
