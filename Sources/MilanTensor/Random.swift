// Seeded random numbers: a SplitMix64 generator (state is one UInt64, easy to checkpoint) and tensor fillers.

public struct SplitMix64: RandomNumberGenerator, Sendable, Codable, Equatable {
  public var state: UInt64
  public init(seed: UInt64) { state = seed }

  /// A generator for step `iteration` of `epoch` that does not depend on how many draws came before, so a resumed
  /// run makes the same augmentation draws; `stream` keeps different uses apart.
  public static func forStep(seed: UInt64, epoch: Int, iteration: Int, stream: UInt64) -> SplitMix64 {
    var g = SplitMix64(seed: seed ^ (UInt64(epoch + 1) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(iteration + 1) &* stream))
    _ = g.next()
    return g
  }

  /// A generator for one sample of a batch, keyed by `key` (shared by every process of a data-parallel run, e.g.
  /// drawn once per step from the run's generator) and the sample's position in the global batch order, so a draw
  /// does not depend on how the batch is split across processes.
  public static func forSample(key: UInt64, sample: Int) -> SplitMix64 {
    var g = SplitMix64(seed: key ^ (UInt64(sample + 1) &* 0xD1B5_4A32_D192_ED03))
    _ = g.next()
    return g
  }

  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// Uniform in [0, 1) with 24 bits of precision.
  public mutating func nextUniform() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

  /// Standard normal (Box–Muller).
  public mutating func nextNormal() -> Float {
    let u1 = max(Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0), 1e-300)
    let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
  }
}

@inline(__always) private func _log(_ x: Double) -> Double { x.logarithm }
@inline(__always) private func _cos(_ x: Double) -> Double { x.cosine }

import RealModule

extension Double {
  fileprivate var logarithm: Double { Double.log(self) }
  fileprivate var cosine: Double { Double.cos(self) }
}

extension Tensor {
  /// Normal(mean, std) entries.
  public static func randn(_ shape: [Int], std: Float = 1, mean: Float = 0, rng: inout SplitMix64) -> Tensor {
    let t = Tensor(uninitialized: shape)
    for i in 0..<t.count { t.data[i] = mean + std * rng.nextNormal() }
    return t
  }

  /// Uniform[lo, hi) entries.
  public static func uniform(_ shape: [Int], _ lo: Float = 0, _ hi: Float = 1, rng: inout SplitMix64) -> Tensor {
    let t = Tensor(uninitialized: shape)
    for i in 0..<t.count { t.data[i] = lo + (hi - lo) * rng.nextUniform() }
    return t
  }
}
