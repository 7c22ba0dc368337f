// Sums and means along one axis. A shape is viewed as [outer, n, inner] around the reduced axis.
import RealModule

public struct AxisSplit: Sendable, Equatable {
  public var outer: Int, n: Int, inner: Int
  public init(shape: [Int], axis: Int) {
    precondition(axis >= 0 && axis < shape.count, "axis \(axis) for shape \(shape)")
    outer = shape[..<axis].reduce(1, *)
    n = shape[axis]
    inner = shape[(axis + 1)...].reduce(1, *)
  }
}

extension Kernels {
  /// y[o, i] = scale·Σ_k x[o, k, i].
  public static func sumAxis(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, split s: AxisSplit,
                             scale: Float = 1) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(s.outer, minChunk: max(1, (1 << 15) / max(1, s.n * s.inner))) { r in
      for o in r {
        let yo = y + o * s.inner
        if s.inner == 1 {
          let xo = x + o * s.n
          var acc = SIMD8<Float>(), k = 0
          while k + 8 <= s.n {
            acc += UnsafeRawPointer(xo + k).loadUnaligned(as: SIMD8<Float>.self)
            k += 8
          }
          var t = acc.sum()
          while k < s.n { t += xo[k]; k += 1 }
          yo[0] = t * scale
          continue
        }
        yo.update(repeating: 0, count: s.inner)
        for k in 0..<s.n {
          let xk = x + (o * s.n + k) * s.inner
          for i in 0..<s.inner { yo[i] += xk[i] }
        }
        if scale != 1 { for i in 0..<s.inner { yo[i] *= scale } }
      }
    }
  }

  /// dx[o, k, i] += scale·dy[o, i].
  public static func sumAxisBackward(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, split s: AxisSplit,
                                     scale: Float = 1) {
    nonisolated(unsafe) let dy = dy, dx = dx
    Parallel.forEachChunk(s.outer, minChunk: max(1, (1 << 15) / max(1, s.n * s.inner))) { r in
      for o in r {
        let g = dy + o * s.inner
        for k in 0..<s.n {
          let d = dx + (o * s.n + k) * s.inner
          for i in 0..<s.inner { d[i] += scale * g[i] }
        }
      }
    }
  }

  /// Σ x in double precision (for scalar losses and metrics).
  public static func sumAll(_ x: UnsafePointer<Float>, count: Int) -> Double {
    var acc = SIMD8<Double>(), i = 0
    while i + 8 <= count {
      let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
      acc += SIMD8<Double>(v)
      i += 8
    }
    var t = acc.sum()
    while i < count { t += Double(x[i]); i += 1 }
    return t
  }
}

extension Naive {
  public static func sumAxis<T: RealScalar>(_ x: [T], split s: AxisSplit) -> [T] {
    var y = [T](repeating: 0, count: s.outer * s.inner)
    for o in 0..<s.outer { for k in 0..<s.n { for i in 0..<s.inner { y[o * s.inner + i] += x[(o * s.n + k) * s.inner + i] } } }
    return y
  }
}
