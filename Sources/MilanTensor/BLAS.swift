import CMilanKernels
import Foundation
// CBLAS: OpenBLAS on Linux (system-library target COpenBLAS), Accelerate on Apple platforms.
#if canImport(Accelerate)
import Accelerate
#else
import COpenBLAS
#endif

public enum Transpose: Sendable { case none, transpose }

public enum BLAS {
  /// Pins OpenBLAS to one thread: MilanTensor splits work across cores itself. Called on first use.
  public static let configure: Void = {
    #if !canImport(Accelerate)
    openblas_set_num_threads(1)
    #endif
  }()

  /// GEMM tasks per worker thread. More tasks balance better when another process takes a core; fewer repack
  /// the shared operand less often. `MILAN_GEMM_TASKS` overrides. 1 since 2026-11-30: on the Zen 4 machine 2 tasks
  /// cost 4–6 % of the teachers' and the paper step's time (each task packs the weights again).
  nonisolated(unsafe) public static var tasksPerThread: Int = {
    if let s = ProcessInfo.processInfo.environment["MILAN_GEMM_TASKS"], let n = Int(s), n > 0 { return n }
    return 1
  }()

  /// Whether GEMMs with a long inner dimension split K across threads (`MILAN_GEMM_SPLITK=0` turns it off).
  nonisolated(unsafe) public static var splitK: Bool = ProcessInfo.processInfo.environment["MILAN_GEMM_SPLITK"] != "0"

  /// Sets the BLAS library's own thread count (benchmarks compare against raw multi-threaded OpenBLAS).
  public static func setLibraryThreads(_ n: Int) {
    #if !canImport(Accelerate)
    openblas_set_num_threads(Int32(n))
    #endif
  }

  public static var libraryDescription: String {
    #if canImport(Accelerate)
    return "Accelerate"
    #else
    let core = openblas_get_corename().map { String(cString: $0) } ?? "?"
    let cfg = openblas_get_config().map { String(cString: $0) } ?? "?"
    return "\(cfg) core=\(core)"
    #endif
  }

  /// Whether the GEMMs this thread issues — and those of the parallel regions it starts, on whichever thread runs
  /// their parts — add 2·M·N·K to the FLOP counter (benchmarks and tests check their FLOP formulas against it). A flag
  /// of the calling thread, so another thread's products are never counted. Off by default: one relaxed atomic add
  /// per call when on.
  public static var countFLOPs: Bool {
    get { milan_flop_counting() != 0 }
    set { milan_flop_counting_set(newValue ? 1 : 0) }
  }

  /// Returns the FLOPs counted since the last call and resets the counter.
  public static func takeCountedFLOPs() -> Int { Int(milan_flop_counter_take()) }

  /// Single call of cblas_sgemm, row-major: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
  @inlinable
  public static func sgemmRaw(
    _ ta: Transpose, _ tb: Transpose, _ m: Int, _ n: Int, _ k: Int, alpha: Float,
    _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, beta: Float,
    _ c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    if m == 0 || n == 0 { return }
    if milan_flop_counting() != 0 { milan_flop_counter_add(Int64(2 * m * n * k)) }
    #if canImport(Accelerate)
    cblas_sgemm(CblasRowMajor, ta == .none ? CblasNoTrans : CblasTrans, tb == .none ? CblasNoTrans : CblasTrans,
                __LAPACK_int(m), __LAPACK_int(n), __LAPACK_int(k), alpha, a, __LAPACK_int(lda), b, __LAPACK_int(ldb),
                beta, c, __LAPACK_int(ldc))
    #else
    cblas_sgemm(CblasRowMajor, ta == .none ? CblasNoTrans : CblasTrans, tb == .none ? CblasNoTrans : CblasTrans,
                blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    #endif
  }

  /// C[M,N] = alpha * op(A) * op(B) + beta * C, split across `Parallel.threads` along the larger of M and N, each part
  /// a one-thread BLAS call. Small products run as one call.
  public static func sgemm(
    _ ta: Transpose, _ tb: Transpose, _ m: Int, _ n: Int, _ k: Int, alpha: Float = 1,
    _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
    _ c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    _ = configure
    if m == 0 || n == 0 { return }
    let flops = m * n * max(k, 1)
    let threads = flops < 1 << 18 ? 1 : Parallel.threads
    if threads <= 1 {
      sgemmRaw(ta, tb, m, n, k, alpha: alpha, a, lda: lda, b, ldb: ldb, beta: beta, c, ldc: ldc)
      return
    }
    nonisolated(unsafe) let a = a, b = b, c = c
    // Weight gradients (dW = dYᵀ·X over many tokens) have a long inner dimension and a small output: splitting M or
    // N would make every part pack the whole of the other operand, so split K instead, each part packing its own
    // half of both, and add the partial products.
    if splitK && k >= 2 * max(m, n) && k >= 512 {
      Parallel.forEachPartialSum(k, minChunk: 256, rows: m, cols: n, into: c, ld: ldc) { part, r, dst, ld in
        let aOff = ta == .none ? r.lowerBound : r.lowerBound * lda  // A is [M, K] (or [K, M] transposed)
        let bOff = tb == .none ? r.lowerBound * ldb : r.lowerBound  // B is [K, N] (or [N, K] transposed)
        sgemmRaw(ta, tb, m, n, r.count, alpha: alpha, a + aOff, lda: lda, b + bOff, ldb: ldb,
                 beta: part == 0 ? beta : 0, dst, ldc: ld)
      }
      return
    }
    // Up to `tasksPerThread` tasks per thread, each at least 128 rows/columns, handed out dynamically.
    let tasks = tasksPerThread
    if m >= n {
      // Split rows of C (and of op(A)). Keep chunk boundaries at multiples of 8 rows.
      Parallel.forEachChunk((m + 7) / 8, minChunk: 16, tasksPerThread: tasks) { r in
        let lo = r.lowerBound * 8, hi = min(m, r.upperBound * 8)
        if lo >= hi { return }
        let aOff = ta == .none ? lo * lda : lo
        sgemmRaw(ta, tb, hi - lo, n, k, alpha: alpha, a + aOff, lda: lda, b, ldb: ldb, beta: beta,
                 c + lo * ldc, ldc: ldc)
      }
    } else {
      Parallel.forEachChunk((n + 15) / 16, minChunk: 8, tasksPerThread: tasks) { r in
        let lo = r.lowerBound * 16, hi = min(n, r.upperBound * 16)
        if lo >= hi { return }
        let bOff = tb == .none ? lo : lo * ldb
        sgemmRaw(ta, tb, m, hi - lo, k, alpha: alpha, a, lda: lda, b + bOff, ldb: ldb, beta: beta,
                 c + lo, ldc: ldc)
      }
    }
  }
}
