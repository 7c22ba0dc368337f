// LayerNorm over the last axis: forward saves mean and 1/std per row; backward accumulates dx, dweight, dbias.
import CMilanKernels
import RealModule

extension Kernels {
  static func rowChunk(_ d: Int) -> Int { max(1, (1 << 14) / max(d, 1)) }

  /// y = (x - mean)/sqrt(var + eps)·w + b over rows of length d. mean, rstd: [rows].
  public static func layerNormForward(
    x: UnsafePointer<Float>, weight: UnsafePointer<Float>?, bias: UnsafePointer<Float>?,
    y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
    rows: Int, d: Int, eps: Float
  ) {
    nonisolated(unsafe) let x = x, w = weight, b = bias, y = y, mean = mean, rstd = rstd
    Parallel.forEachChunk(rows, minChunk: rowChunk(d)) { r in
      let o = r.lowerBound
      milan_layernorm_fwd(x + o * d, w, b, y + o * d, mean + o, rstd + o, r.count, d, eps)
    }
  }

  /// dx += … (or dx = … when `accumulate` is false), dweight += …, dbias += … (each optional). Weight and bias
  /// gradients are summed per thread first.
  public static func layerNormBackward(
    dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>?,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
    rows: Int, d: Int, accumulate: Bool = true
  ) {
    let acc: Int32 = accumulate ? 1 : 0
    let parts = Parallel.parts(rows, minChunk: rowChunk(d))
    let needParams = dWeight != nil || dBias != nil
    let scratch = needParams && parts > 1 ? Tensor(zeros: [parts, 2, d]) : nil
    nonisolated(unsafe) let dy = dy, x = x, w = weight, mean = mean, rstd = rstd, dx = dx, dw = dWeight,
      db = dBias, sp = scratch?.data
    Parallel.forEachChunkIndexed(rows, minChunk: rowChunk(d)) { part, r in
      let o = r.lowerBound
      var pw = dw, pb = db
      if let sp {
        pw = dw == nil ? nil : sp + part * 2 * d
        pb = db == nil ? nil : sp + part * 2 * d + d
      }
      milan_layernorm_bwd(dy + o * d, x + o * d, w, mean + o, rstd + o, dx.map { $0 + o * d }, pw, pb, r.count, d, acc)
    }
    if let sp {
      for part in 0..<parts {
        if let dw { for i in 0..<d { dw[i] += sp[part * 2 * d + i] } }
        if let db { for i in 0..<d { db[i] += sp[part * 2 * d + d + i] } }
      }
    }
  }
}

extension Naive {
  /// LayerNorm of rows of length d (weight/bias optional).
  public static func layerNorm<T: RealScalar>(_ x: [T], _ w: [T]?, _ b: [T]?, rows: Int, d: Int, eps: T) -> [T] {
    var y = [T](repeating: 0, count: rows * d)
    for r in 0..<rows {
      var m: T = 0
      for i in 0..<d { m += x[r * d + i] }
      m /= T(d)
      var v: T = 0
      for i in 0..<d { v += (x[r * d + i] - m) * (x[r * d + i] - m) }
      v /= T(d)
      let rs = 1 / T.sqrt(v + eps)
      for i in 0..<d {
        y[r * d + i] = (x[r * d + i] - m) * rs * (w?[i] ?? 1) + (b?[i] ?? 0)
      }
    }
    return y
  }
}
