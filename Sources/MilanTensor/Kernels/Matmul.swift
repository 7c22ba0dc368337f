// Linear layers and (batched) matrix products: forward/backward pairs over CBLAS, with naive references.
// Weights are stored PyTorch-style [out, in]; the forward is Y = X·Wᵀ (NT), the backward dX = dY·W (NN) and
// dW = dYᵀ·X (TN), all at full BLAS speed with no transposed copies.
import RealModule

public enum Kernels {}

extension Kernels {
  /// y[rows, outF] = x[rows, inF] · w[outF, inF]ᵀ + bias[outF]
  public static func linearForward(
    x: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, rows: Int, inFeatures: Int, outFeatures: Int
  ) {
    if prefersPackedForward(rows: rows, k: inFeatures, n: outFeatures) {
      packedProduct(x: x, rows: rows, k: inFeatures, b: weight, n: outFeatures, transposedB: true, bias: bias, y: y,
                    accumulate: false)
      return
    }
    // With a bias, C starts as the broadcast bias and the GEMM accumulates onto it (beta = 1): one pass over the
    // output instead of BLAS's beta = 0 clearing pass plus a bias pass.
    if let bias { broadcastRows(bias, into: y, rows: rows, cols: outFeatures) }
    BLAS.sgemm(.none, .transpose, rows, outFeatures, inFeatures, x, lda: inFeatures, weight, ldb: inFeatures,
               beta: bias == nil ? 0 : 1, y, ldc: outFeatures)
  }

  /// dx += dy·w, dw += dyᵀ·x, db += Σ_rows dy (each optional). With `overwrite*` a gradient is written instead of
  /// accumulated (its buffer may then be uninitialised).
  public static func linearBackward(
    dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
    rows: Int, inFeatures: Int, outFeatures: Int,
    overwriteDx: Bool = false, overwriteDWeight: Bool = false, overwriteDBias: Bool = false
  ) {
    if let dx {
      if prefersPackedProduct(rows: rows, k: outFeatures, n: inFeatures) {
        packedProduct(x: dy, rows: rows, k: outFeatures, b: weight, n: inFeatures, transposedB: false, bias: nil, y: dx,
                      accumulate: !overwriteDx)
      } else {
        BLAS.sgemm(.none, .none, rows, inFeatures, outFeatures, dy, lda: outFeatures, weight, ldb: inFeatures,
                   beta: overwriteDx ? 0 : 1, dx, ldc: inFeatures)
      }
    }
    if let dWeight {
      if prefersPackedWeightGrad(rows: rows, n: outFeatures, k: inFeatures) {
        packedWeightGrad(dy: dy, x: x, rows: rows, n: outFeatures, k: inFeatures, dw: dWeight,
                         accumulate: !overwriteDWeight)
      } else {
        BLAS.sgemm(.transpose, .none, outFeatures, inFeatures, rows, dy, lda: outFeatures, x, ldb: inFeatures,
                   beta: overwriteDWeight ? 0 : 1, dWeight, ldc: inFeatures)
      }
    }
    if let dBias {
      if overwriteDBias { dBias.update(repeating: 0, count: outFeatures) }
      columnSumAccumulate(dy, into: dBias, rows: rows, cols: outFeatures)
    }
  }

  /// c[b] = op(a[b])·op(bm[b]) for every batch b; a: [B, M, K] (or [B, K, M] when transposed), c: [B, M, N].
  public static func bmmForward(
    _ ta: Transpose, _ tb: Transpose, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    c: UnsafeMutablePointer<Float>, batch: Int, m: Int, n: Int, k: Int, beta: Float = 0
  ) {
    _ = BLAS.configure
    let lda = ta == .none ? k : m, ldb = tb == .none ? n : k
    nonisolated(unsafe) let a = a, b = b, c = c
    if batch < Parallel.threads && m * n * k >= 1 << 18 {
      for i in 0..<batch {
        BLAS.sgemm(ta, tb, m, n, k, a + i * m * k, lda: lda, b + i * k * n, ldb: ldb, beta: beta, c + i * m * n,
                   ldc: n)
      }
      return
    }
    Parallel.forEachChunk(batch, minChunk: max(1, (1 << 16) / max(1, m * n * k))) { r in
      for i in r {
        BLAS.sgemmRaw(ta, tb, m, n, k, alpha: 1, a + i * m * k, lda: lda, b + i * k * n, ldb: ldb, beta: beta,
                      c + i * m * n, ldc: n)
      }
    }
  }

  /// Backward of c = a·bm (no transposes): da += dc·bmᵀ, dbm += aᵀ·dc.
  public static func bmmBackward(
    dc: UnsafePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
    da: UnsafeMutablePointer<Float>?, db: UnsafeMutablePointer<Float>?, batch: Int, m: Int, n: Int, k: Int
  ) {
    // da[M,K] = dc[M,N]·b[K,N]ᵀ ; db[K,N] = a[M,K]ᵀ·dc[M,N]
    if let da { bmmForward(.none, .transpose, a: dc, b: b, c: da, batch: batch, m: m, n: k, k: n, beta: 1) }
    if let db { bmmForward(.transpose, .none, a: a, b: dc, c: db, batch: batch, m: k, n: n, k: m, beta: 1) }
  }

  /// y[r, :] = v for every row r, split over rows.
  public static func broadcastRows(_ v: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, rows: Int,
                                   cols: Int) {
    nonisolated(unsafe) let y = y, v = v
    Parallel.forEachChunk(rows, minChunk: max(1, (1 << 15) / max(cols, 1))) { r in
      for i in r { (y + i * cols).update(from: v, count: cols) }
    }
  }

  /// out[c] += Σ_r x[r, c], split over rows with per-part partial sums.
  public static func columnSumAccumulate(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                                         rows: Int, cols: Int) {
    let parts = Parallel.parts(rows, minChunk: max(1, (1 << 15) / max(cols, 1)))
    if parts <= 1 {
      for i in 0..<rows {
        let xr = x + i * cols
        for j in 0..<cols { out[j] += xr[j] }
      }
      return
    }
    let partial = Tensor(zeros: [parts, cols])
    nonisolated(unsafe) let x = x, p = partial.data
    Parallel.forEachChunkIndexed(rows, minChunk: max(1, (1 << 15) / max(cols, 1))) { part, r in
      let acc = p + part * cols
      for i in r {
        let xr = x + i * cols
        for j in 0..<cols { acc[j] += xr[j] }
      }
    }
    for part in 0..<parts {
      let acc = p + part * cols
      for j in 0..<cols { out[j] += acc[j] }
    }
  }
}

// MARK: - Naive references (generic, so tests can run them in Double for finite differences)

public enum Naive {}

extension Naive {
  /// y = x·wᵀ + b; x: [rows, inF], w: [outF, inF].
  public static func linear<T: RealScalar>(_ x: [T], _ w: [T], _ b: [T]?, rows: Int, inF: Int, outF: Int) -> [T] {
    var y = [T](repeating: 0, count: rows * outF)
    for r in 0..<rows {
      for o in 0..<outF {
        var s: T = b?[o] ?? 0
        for i in 0..<inF { s += x[r * inF + i] * w[o * inF + i] }
        y[r * outF + o] = s
      }
    }
    return y
  }

  /// c[b] = a[b]·bm[b]; a: [B, M, K], bm: [B, K, N].
  public static func bmm<T: RealScalar>(_ a: [T], _ bm: [T], batch: Int, m: Int, n: Int, k: Int) -> [T] {
    var c = [T](repeating: 0, count: batch * m * n)
    for b in 0..<batch {
      for i in 0..<m {
        for j in 0..<n {
          var s: T = 0
          for p in 0..<k { s += a[(b * m + i) * k + p] * bm[(b * k + p) * n + j] }
          c[(b * m + i) * n + j] = s
        }
      }
    }
    return c
  }
}

/// Scalar type of the naive references: Float for comparisons, Double for finite differences.
public typealias RealScalar = Real & BinaryFloatingPoint
