// Softmax and log-softmax along the last axis.
import CMilanKernels
import RealModule

extension Kernels {
  /// y = softmax(scale·x) over rows of length n (scale > 0; y may equal x).
  public static func softmaxForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows: Int, n: Int,
                                    scale: Float = 1) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(rows, minChunk: rowChunk(n)) { r in
      milan_softmax_fwd(x + r.lowerBound * n, y + r.lowerBound * n, r.count, n, scale)
    }
  }

  /// dx += scale·y·(dy − Σ dy·y) (or `=` when `accumulate` is false; then dx may alias dy).
  public static func softmaxBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                     rows: Int, n: Int, scale: Float = 1, accumulate: Bool = true) {
    nonisolated(unsafe) let y = y, dy = dy, dx = dx
    Parallel.forEachChunk(rows, minChunk: rowChunk(n)) { r in
      let o = r.lowerBound * n
      milan_softmax_bwd(y + o, dy + o, dx + o, r.count, n, scale, accumulate ? 1 : 0)
    }
  }

  public static func logSoftmaxForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows: Int, n: Int) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(rows, minChunk: rowChunk(n)) { r in
      milan_log_softmax_fwd(x + r.lowerBound * n, y + r.lowerBound * n, r.count, n)
    }
  }

  /// dx += dy − exp(y)·Σ dy (or `=` when `accumulate` is false).
  public static func logSoftmaxBackward(y: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                        dx: UnsafeMutablePointer<Float>, rows: Int, n: Int, accumulate: Bool = true) {
    nonisolated(unsafe) let y = y, dy = dy, dx = dx
    Parallel.forEachChunk(rows, minChunk: rowChunk(n)) { r in
      let o = r.lowerBound * n
      milan_log_softmax_bwd(y + o, dy + o, dx + o, r.count, n, accumulate ? 1 : 0)
    }
  }
}

extension Naive {
  public static func softmax<T: RealScalar>(_ x: [T], rows: Int, n: Int) -> [T] {
    var y = x
    for r in 0..<rows {
      var m = -T.infinity
      for i in 0..<n { m = Swift.max(m, x[r * n + i]) }
      var s: T = 0
      for i in 0..<n { y[r * n + i] = T.exp(x[r * n + i] - m); s += y[r * n + i] }
      for i in 0..<n { y[r * n + i] /= s }
    }
    return y
  }

  public static func logSoftmax<T: RealScalar>(_ x: [T], rows: Int, n: Int) -> [T] {
    var y = x
    for r in 0..<rows {
      var m = -T.infinity
      for i in 0..<n { m = Swift.max(m, x[r * n + i]) }
      var s: T = 0
      for i in 0..<n { s += T.exp(x[r * n + i] - m) }
      let lse = m + T.log(s)
      for i in 0..<n { y[r * n + i] = x[r * n + i] - lse }
    }
    return y
  }
}
