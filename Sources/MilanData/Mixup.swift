// timm's Mixup / CutMix in batch mode (timm 0.3.2 as MILAN pins it; reference-milan.md §6b): per batch, with
// probability `prob` mix; CutMix with probability `switchProb` (λ ~ Beta(cutmixAlpha, cutmixAlpha)), else Mixup
// (λ ~ Beta(mixupAlpha, mixupAlpha)); the partner of sample i is sample B − 1 − i. CutMix pastes the partner's box
// (side √(1 − λ)·H by √(1 − λ)·W, centre uniform, clipped) and recomputes λ from the clipped area. Targets are
// label-smoothed one-hots mixed with the same λ.
import Foundation
import MilanTensor

public struct MixupConfig: Codable, Sendable, Equatable {
  public var mixupAlpha: Double = 0.8
  public var cutmixAlpha: Double = 1.0
  public var prob: Double = 1.0
  public var switchProb: Double = 0.5
  public var labelSmoothing: Double = 0.1
  public init() {}
}

/// One batch's mixing decision: λ as drawn, and for CutMix the box centre.
public struct MixDraw: Sendable, Equatable {
  public var lambda: Double
  public var cutmix: Bool
  public var centerY: Int = 0, centerX: Int = 0
  public init(lambda: Double, cutmix: Bool, centerY: Int = 0, centerX: Int = 0) {
    self.lambda = lambda
    self.cutmix = cutmix
    self.centerY = centerY
    self.centerX = centerX
  }
}

public enum Mixup {
  public static func draw(_ c: MixupConfig, height: Int, width: Int, rng: inout SplitMix64) -> MixDraw {
    guard Sampling.uniform(&rng) < c.prob else { return MixDraw(lambda: 1, cutmix: false) }
    let cut = c.mixupAlpha > 0 && c.cutmixAlpha > 0 ? Sampling.uniform(&rng) < c.switchProb : c.cutmixAlpha > 0
    let alpha = cut ? c.cutmixAlpha : c.mixupAlpha
    let lam = Sampling.beta(alpha, alpha, &rng)
    guard cut else { return MixDraw(lambda: lam, cutmix: false) }
    return MixDraw(lambda: lam, cutmix: true, centerY: Int.random(in: 0..<height, using: &rng),
                   centerX: Int.random(in: 0..<width, using: &rng))
  }

  /// The CutMix box (yl, yh, xl, xh), timm 0.3.2's rand_bbox: cut = int(side·√(1 − λ)), [c − cut/2, c + cut/2)
  /// clipped to the image.
  public static func box(_ d: MixDraw, height h: Int, width w: Int) -> (yl: Int, yh: Int, xl: Int, xh: Int) {
    let r = (1 - d.lambda).squareRoot()
    let ch = Int(Double(h) * r), cw = Int(Double(w) * r)
    func clip(_ v: Int, _ hi: Int) -> Int { min(max(v, 0), hi) }
    return (clip(d.centerY - ch / 2, h), clip(d.centerY + ch / 2, h), clip(d.centerX - cw / 2, w), clip(d.centerX + cw / 2, w))
  }

  /// Mixes `images` [B, C, H, W] in place and returns the soft targets [B, classes] and the effective λ.
  @discardableResult
  public static func apply(_ d: MixDraw, images x: Tensor, labels: [Int], classes: Int, smoothing: Double)
    -> (targets: Tensor, lambda: Double) {
    let b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    precondition(b % 2 == 0 || d.lambda == 1, "Mixup needs an even batch size (got \(b))")
    var lam = d.lambda
    if lam != 1 {
      let src = x.copy()
      if d.cutmix {
        let (yl, yh, xl, xh) = box(d, height: h, width: w)
        for n in 0..<b {
          let p = b - 1 - n
          for ch in 0..<c {
            for y in yl..<yh {
              for xx in xl..<xh { x.data[((n * c + ch) * h + y) * w + xx] = src.data[((p * c + ch) * h + y) * w + xx] }
            }
          }
        }
        lam = 1 - Double((yh - yl) * (xh - xl)) / Double(h * w)
      } else {
        let a = Float(lam), bb = Float(1 - lam)
        let per = c * h * w
        for n in 0..<b {
          let p = b - 1 - n
          for i in 0..<per { x.data[n * per + i] = src.data[n * per + i] * a + src.data[p * per + i] * bb }
        }
      }
    }
    return (targets(labels: labels, classes: classes, lambda: lam, smoothing: smoothing), lam)
  }

  /// timm mixup_target: off = ε/K, on = 1 − ε + off; t = λ·onehot(y) + (1 − λ)·onehot(flip(y)).
  public static func targets(labels: [Int], classes k: Int, lambda: Double, smoothing: Double) -> Tensor {
    let b = labels.count
    let off = Float(smoothing / Double(k)), on = Float(1 - smoothing) + off
    let t = Tensor(uninitialized: [b, k])
    let l = Float(lambda), m = Float(1 - lambda)
    for n in 0..<b {
      for j in 0..<k {
        let y1: Float = labels[n] == j ? on : off, y2: Float = labels[b - 1 - n] == j ? on : off
        t.data[n * k + j] = y1 * l + y2 * m
      }
    }
    return t
  }
}

/// Draws from distributions the augmentations need, on our seeded generator.
public enum Sampling {
  /// U[0, 1) with 53 random bits.
  public static func uniform(_ rng: inout SplitMix64) -> Double { Double(rng.next() >> 11) * 0x1p-53 }

  public static func normal(_ rng: inout SplitMix64) -> Double {
    // Box–Muller on (0, 1].
    let u1 = 1 - uniform(&rng), u2 = uniform(&rng)
    return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
  }

  /// Gamma(shape, 1): Marsaglia–Tsang, with the shape < 1 boost.
  public static func gamma(_ shape: Double, _ rng: inout SplitMix64) -> Double {
    precondition(shape > 0, "gamma shape must be positive")
    if shape < 1 { return gamma(shape + 1, &rng) * pow(1 - uniform(&rng), 1 / shape) }
    let d = shape - 1.0 / 3, c = 1 / (9 * d).squareRoot()
    while true {
      var x: Double, v: Double
      repeat {
        x = normal(&rng)
        v = 1 + c * x
      } while v <= 0
      v = v * v * v
      let u = 1 - uniform(&rng)
      if log(u) < 0.5 * x * x + d - d * v + d * log(v) { return d * v }
    }
  }

  public static func beta(_ a: Double, _ b: Double, _ rng: inout SplitMix64) -> Double {
    let x = gamma(a, &rng), y = gamma(b, &rng)
    return x / (x + y)
  }
}
