// GELU (exact erf), tanh-GELU and QuickGELU: forward/backward over the SIMD C kernels, split across cores.
import CMilanKernels
import RealModule

public enum Activation: String, Sendable, Codable, CaseIterable {
  /// 0.5·x·(1 + erf(x/√2)) — timm ViT, DINOv2.
  case gelu
  /// 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) — `approximate="tanh"`.
  case geluTanh = "gelu_tanh"
  /// x·σ(1.702x) — OpenAI CLIP.
  case quickGelu = "quick_gelu"
}

extension Kernels {
  static let elementwiseChunk = 1 << 15

  /// Whether the exact GELU's AVX-512 forward computes its erfc tail for the far lanes only (a list per block, the
  /// default) or for every vector with a far lane (the same bits; `milan-bench --ab gelu-tail-list` compares them).
  public static var geluTailList: Bool {
    get { milan_gelu_tail_list() != 0 }
    set { milan_set_gelu_tail_list(newValue ? 1 : 0) }
  }

  /// y = f(x), n elements (y may equal x).
  public static func activationForward(_ kind: Activation, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                       count n: Int) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(n, minChunk: elementwiseChunk) { r in
      let c = r.count
      switch kind {
      case .gelu: milan_gelu_erf_fwd(x + r.lowerBound, y + r.lowerBound, c)
      case .geluTanh: milan_gelu_tanh_fwd(x + r.lowerBound, y + r.lowerBound, c)
      case .quickGelu: milan_quick_gelu_fwd(x + r.lowerBound, y + r.lowerBound, c)
      }
    }
  }

  /// dx += dy·f'(x) (dx = dy·f'(x) when `accumulate` is false; dx may then be uninitialised).
  public static func activationBackward(_ kind: Activation, x: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                        dx: UnsafeMutablePointer<Float>, count n: Int, accumulate: Bool = true) {
    nonisolated(unsafe) let x = x, dy = dy, dx = dx
    let acc: Int32 = accumulate ? 1 : 0
    Parallel.forEachChunk(n, minChunk: elementwiseChunk) { r in
      let o = r.lowerBound, c = r.count
      switch kind {
      case .gelu: milan_gelu_erf_bwd(x + o, dy + o, dx + o, c, acc)
      case .geluTanh: milan_gelu_tanh_bwd(x + o, dy + o, dx + o, c, acc)
      case .quickGelu: milan_quick_gelu_bwd(x + o, dy + o, dx + o, c, acc)
      }
    }
  }
}

extension Naive {
  public static func activation<T: RealScalar>(_ kind: Activation, _ x: T) -> T {
    let one: T = 1, two: T = 2
    switch kind {
    case .gelu:
      let e: T = T.erf(x / T.sqrt(two))
      return x * (one + e) / two
    case .geluTanh:
      let c: T = T.sqrt(two / T.pi)
      let k: T = T(0.044715)
      let u: T = c * (x + k * x * x * x)
      let t: T = T.tanh(u)
      return x * (one + t) / two
    case .quickGelu:
      let z: T = T(1.702) * x
      return x / (one + T.exp(-z))
    }
  }

  public static func activationGrad<T: RealScalar>(_ kind: Activation, _ x: T) -> T {
    let one: T = 1, two: T = 2, three: T = 3
    switch kind {
    case .gelu:
      let cdf: T = (one + T.erf(x / T.sqrt(two))) / two
      let pdf: T = T.exp(-x * x / two) / T.sqrt(two * T.pi)
      return cdf + x * pdf
    case .geluTanh:
      let c: T = T.sqrt(two / T.pi)
      let k: T = T(0.044715)
      let u: T = c * (x + k * x * x * x)
      let t: T = T.tanh(u)
      let du: T = c * (one + three * k * x * x)
      let a: T = (one + t) / two
      let b: T = x / two * (one - t * t)
      return a + b * du
    case .quickGelu:
      let z: T = T(1.702) * x
      let s: T = one / (one + T.exp(-z))
      let q: T = s * (one - s)
      return s + z * q
    }
  }
}
