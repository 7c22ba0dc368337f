// timm's RandomErasing (mode 'pixel', max_count 1; reference-milan.md §6b), applied to a normalised image [C, H, W]:
// with probability p, up to 10 tries of area ~ U(0.02, 1/3)·H·W and aspect exp(U(log 0.3, log 1/0.3)),
// h = round(√(area·aspect)), w = round(√(area/aspect)) (half to even), accepted if h < H and w < W; the box at a
// uniform position (inclusive bounds) is filled with N(0, 1) per pixel. The draws go through `EraseRandomness`, so a
// test can replay Python's.
import Foundation
import MilanTensor

public protocol EraseRandomness {
  /// U[0, 1).
  mutating func random() -> Double
  /// Uniform integer in lo...hi (inclusive, as Python's random.randint).
  mutating func randint(_ lo: Int, _ hi: Int) -> Int
  mutating func normal() -> Float
}

extension SplitMix64: EraseRandomness {
  public mutating func random() -> Double { Sampling.uniform(&self) }
  public mutating func randint(_ lo: Int, _ hi: Int) -> Int { Int.random(in: lo...hi, using: &self) }
  public mutating func normal() -> Float { Float(Sampling.normal(&self)) }
}

public struct RandomErasing: Sendable {
  public var probability: Double = 0.25
  public var minArea = 0.02, maxArea = 1.0 / 3
  public var minAspect = 0.3
  public init(probability: Double = 0.25) { self.probability = probability }

  /// Erases in place one image of `image` at `offset` ([C, H, W] floats); returns the box (top, left, h, w) or nil.
  @discardableResult
  public func apply<R: EraseRandomness>(_ img: UnsafeMutablePointer<Float>, channels c: Int, height hh: Int, width ww: Int,
                                        rng: inout R) -> (top: Int, left: Int, height: Int, width: Int)? {
    if rng.random() > probability { return nil }
    let area = Double(hh * ww)
    let logLo = log(minAspect), logHi = log(1 / minAspect)
    for _ in 0..<10 {
      let target = (minArea + (maxArea - minArea) * rng.random()) * area
      let aspect = exp(logLo + (logHi - logLo) * rng.random())
      let h = Int((target * aspect).squareRoot().rounded(.toNearestOrEven))
      let w = Int((target / aspect).squareRoot().rounded(.toNearestOrEven))
      if w < ww && h < hh {
        let top = rng.randint(0, hh - h), left = rng.randint(0, ww - w)
        for ch in 0..<c {
          for y in top..<(top + h) {
            for x in left..<(left + w) { img[(ch * hh + y) * ww + x] = rng.normal() }
          }
        }
        return (top, left, h, w)
      }
    }
    return nil
  }
}
