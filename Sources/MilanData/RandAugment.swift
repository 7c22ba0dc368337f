// timm's RandAugment `rand-m9-mstd0.5-inc1` as MAE/MILAN finetuning uses it (reference-milan.md §6b), with Pillow's
// arithmetic reproduced op by op (tools/FIXTURES.md "randaugment"): two ops drawn uniformly with replacement from
// the 15 "increasing" ops, each applied with probability 0.5 at magnitude N(9, 0.5) clipped to [0, 10], signed ops
// negated with probability 0.5. Geometric ops are Pillow's affine transform (inverse map at pixel centres, Keys cubic
// with a = −1, edge-clamped taps, fill colour (124, 116, 104) outside); enhance ops blend with a degenerate image in
// float32 and truncate, as Pillow's Image.blend. Images are 8-bit RGB.
import Foundation
import MilanTensor

public enum RandAugmentOp: Int, CaseIterable, Sendable {
  case autoContrast, equalize, invert, rotate, posterize, solarize, solarizeAdd, color, contrast, brightness,
       sharpness, shearX, shearY, translateX, translateY

  public var name: String {
    ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
     "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
     "TranslateXRel", "TranslateYRel"][rawValue]
  }

  public init?(name: String) {
    guard let op = Self.allCases.first(where: { $0.name == name }) else { return nil }
    self = op
  }

  /// Ops whose argument timm negates with probability 0.5.
  public var isSigned: Bool {
    switch self {
    case .rotate, .color, .contrast, .brightness, .sharpness, .shearX, .shearY, .translateX, .translateY: return true
    default: return false
    }
  }
}

/// The random draws RandAugment makes, in timm's order; a test replays Python's.
public protocol AugmentRandomness {
  /// An op index in 0..<15 (numpy's choice with replacement).
  mutating func chooseOp() -> Int
  /// U[0, 1) (Python's random.random()).
  mutating func random() -> Double
  /// N(mean, std) (Python's random.gauss).
  mutating func gauss(_ mean: Double, _ std: Double) -> Double
}

extension SplitMix64: AugmentRandomness {
  public mutating func chooseOp() -> Int { Int.random(in: 0..<15, using: &self) }
  public mutating func gauss(_ mean: Double, _ std: Double) -> Double { mean + std * Sampling.normal(&self) }
}

public struct RandAugment: Sendable {
  public var numOps = 2
  public var magnitude = 9.0
  public var magnitudeStd = 0.5
  public var probability = 0.5
  public var fill: [UInt8] = [124, 116, 104]
  public init() {}

  public func callAsFunction<R: AugmentRandomness>(_ img: DecodedImage, rng: inout R) -> DecodedImage {
    var out = img.rgb()
    let ops = (0..<numOps).map { _ in RandAugmentOp(rawValue: rng.chooseOp())! }
    for op in ops {
      if rng.random() > probability { continue }
      let m = min(max(rng.gauss(magnitude, magnitudeStd), 0), 10)
      let negate = op.isSigned ? rng.random() > 0.5 : false
      out = apply(op, magnitude: m, negate: negate, to: out)
    }
    return out
  }

  /// timm's level-to-argument for `op` at magnitude m (sign applied).
  public static func argument(_ op: RandAugmentOp, magnitude m: Double, negate: Bool) -> Double {
    let s = negate ? -1.0 : 1.0
    switch op {
    case .autoContrast, .equalize, .invert: return 0
    case .rotate: return s * (m / 10) * 30
    case .posterize: return Double(4 - Int((m / 10) * 4))
    case .solarize: return Double(256 - min(256, Int((m / 10) * 256)))
    case .solarizeAdd: return Double(min(128, Int((m / 10) * 110)))
    case .color, .contrast, .brightness, .sharpness: return max(0.1, 1 + s * (m / 10) * 0.9)
    case .shearX, .shearY: return s * (m / 10) * 0.3
    case .translateX, .translateY: return s * (m / 10) * 0.45
    }
  }

  public func apply(_ op: RandAugmentOp, magnitude m: Double, negate: Bool, to img: DecodedImage) -> DecodedImage {
    let a = Self.argument(op, magnitude: m, negate: negate)
    let w = Double(img.width), h = Double(img.height)
    switch op {
    case .autoContrast: return PILOps.autoContrast(img)
    case .equalize: return PILOps.equalize(img)
    case .invert: return PILOps.lut(img) { _, v in 255 - v }
    case .posterize:
      let bits = Int(a)
      if bits >= 8 { return img }
      let mask = UInt8(truncatingIfNeeded: ~((1 << (8 - bits)) - 1))
      return PILOps.lut(img) { _, v in v & mask }
    case .solarize:
      let t = Int(a)
      return PILOps.lut(img) { _, v in Int(v) < t ? v : 255 - v }
    case .solarizeAdd:
      let add = Int(a)
      return PILOps.lut(img) { _, v in v < 128 ? UInt8(min(255, Int(v) + add)) : v }
    case .color: return PILOps.blend(PILOps.greyDegenerate(img), img, alpha: Float(a))
    case .contrast: return PILOps.blend(PILOps.meanDegenerate(img), img, alpha: Float(a))
    case .brightness:
      return PILOps.blend(DecodedImage(width: img.width, height: img.height, channels: 3,
                                       pixels: [UInt8](repeating: 0, count: img.pixels.count)), img, alpha: Float(a))
    case .sharpness: return PILOps.blend(PILOps.smooth(img), img, alpha: Float(a))
    case .shearX: return PILOps.affine(img, [1, a, 0, 0, 1, 0], fill: fill)
    case .shearY: return PILOps.affine(img, [1, 0, 0, a, 1, 0], fill: fill)
    case .translateX: return PILOps.affine(img, [1, 0, a * w, 0, 1, 0], fill: fill)
    case .translateY: return PILOps.affine(img, [1, 0, 0, 0, 1, a * h], fill: fill)
    case .rotate:
      let angle = a.truncatingRemainder(dividingBy: 360) < 0 ? a.truncatingRemainder(dividingBy: 360) + 360
        : a.truncatingRemainder(dividingBy: 360)
      if angle == 0 { return img }
      return PILOps.affine(img, PILOps.rotationMatrix(degrees: angle, width: w, height: h), fill: fill)
    }
  }
}

/// Pillow's image operations used by RandAugment, on 8-bit RGB.
public enum PILOps {
  public static func lut(_ img: DecodedImage, _ f: (Int, UInt8) -> UInt8) -> DecodedImage {
    var out = img
    let c = img.channels
    for i in 0..<img.pixels.count { out.pixels[i] = f(i % c, img.pixels[i]) }
    return out
  }

  /// ImageOps.autocontrast (cutoff 0): per channel LUT[i] = clamp(int(i·scale + offset)), identity if flat.
  public static func autoContrast(_ img: DecodedImage) -> DecodedImage {
    let c = img.channels
    var luts: [[UInt8]] = []
    for ch in 0..<c {
      var lo = 255, hi = 0
      for i in stride(from: ch, to: img.pixels.count, by: c) { lo = min(lo, Int(img.pixels[i])); hi = max(hi, Int(img.pixels[i])) }
      if hi <= lo { luts.append((0..<256).map { UInt8($0) }); continue }
      let scale = 255.0 / Double(hi - lo), offset = -Double(lo) * scale
      luts.append((0..<256).map { UInt8(min(max(Int(Double($0) * scale + offset), 0), 255)) })
    }
    return lut(img) { ch, v in luts[ch][Int(v)] }
  }

  /// ImageOps.equalize: per channel, step = (N − count of the largest value) // 255; LUT[i] = (step/2 + Σ_{j<i} h_j) // step.
  public static func equalize(_ img: DecodedImage) -> DecodedImage {
    let c = img.channels
    var luts: [[UInt8]] = []
    for ch in 0..<c {
      var hist = [Int](repeating: 0, count: 256)
      for i in stride(from: ch, to: img.pixels.count, by: c) { hist[Int(img.pixels[i])] += 1 }
      let nonzero = hist.filter { $0 > 0 }
      let step = nonzero.count <= 1 ? 0 : (nonzero.reduce(0, +) - nonzero.last!) / 255
      if step == 0 { luts.append((0..<256).map { UInt8($0) }); continue }
      var n = step / 2
      var l = [UInt8](repeating: 0, count: 256)
      for i in 0..<256 {
        l[i] = UInt8(min(n / step, 255))
        n += hist[i]
      }
      luts.append(l)
    }
    return lut(img) { ch, v in luts[ch][Int(v)] }
  }

  /// ITU-R 601-2 luma as Pillow's rgb2l: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
  @inline(__always) static func luma(_ r: UInt8, _ g: UInt8, _ b: UInt8) -> Int {
    (19595 * Int(r) + 38470 * Int(g) + 7471 * Int(b) + 0x8000) >> 16
  }

  /// ImageEnhance.Color's degenerate: the grey image as RGB.
  public static func greyDegenerate(_ img: DecodedImage) -> DecodedImage {
    var out = img
    for p in 0..<(img.width * img.height) {
      let l = UInt8(luma(img.pixels[3 * p], img.pixels[3 * p + 1], img.pixels[3 * p + 2]))
      out.pixels[3 * p] = l
      out.pixels[3 * p + 1] = l
      out.pixels[3 * p + 2] = l
    }
    return out
  }

  /// ImageEnhance.Contrast's degenerate: a constant image at int(mean(L) + 0.5).
  public static func meanDegenerate(_ img: DecodedImage) -> DecodedImage {
    var hist = [Int](repeating: 0, count: 256)
    let n = img.width * img.height
    for p in 0..<n { hist[luma(img.pixels[3 * p], img.pixels[3 * p + 1], img.pixels[3 * p + 2])] += 1 }
    var s = 0
    for j in 0..<256 { s += j * hist[j] }
    let mean = UInt8(Int(Double(s) / Double(n) + 0.5))
    return DecodedImage(width: img.width, height: img.height, channels: 3, pixels: [UInt8](repeating: mean, count: n * 3))
  }

  /// ImageFilter.SMOOTH (1 1 1 / 1 5 1 / 1 1 1)/13 in float32, +0.5 then truncation; border pixels copied.
  public static func smooth(_ img: DecodedImage) -> DecodedImage {
    var out = img
    let w = img.width, h = img.height, c = img.channels
    guard w >= 3 && h >= 3 else { return img }
    let k: Float = 1 / 13, kc: Float = 5 / 13
    @inline(__always) func px(_ x: Int, _ y: Int, _ ch: Int) -> Float { Float(img.pixels[(y * w + x) * c + ch]) }
    for y in 1..<(h - 1) {
      for x in 1..<(w - 1) {
        for ch in 0..<c {
          var ss: Float = 0.5
          ss += (px(x - 1, y + 1, ch) * k + px(x, y + 1, ch) * k) + px(x + 1, y + 1, ch) * k
          ss += (px(x - 1, y, ch) * k + px(x, y, ch) * kc) + px(x + 1, y, ch) * k
          ss += (px(x - 1, y - 1, ch) * k + px(x, y - 1, ch) * k) + px(x + 1, y - 1, ch) * k
          out.pixels[(y * w + x) * c + ch] = ss <= 0 ? 0 : ss < 255 ? UInt8(ss) : 255
        }
      }
    }
    return out
  }

  /// Image.blend(degenerate, img, alpha) as Pillow's Blend.c: float32 deg + alpha·(img − deg), truncated.
  public static func blend(_ deg: DecodedImage, _ img: DecodedImage, alpha: Float) -> DecodedImage {
    if alpha == 0 { return deg }
    if alpha == 1 { return img }
    var out = img
    let inside = alpha >= 0 && alpha <= 1
    for i in 0..<img.pixels.count {
      let d = deg.pixels[i]
      let t = Float(d) + alpha * Float(Int(img.pixels[i]) - Int(d))
      out.pixels[i] = inside ? UInt8(t) : (t <= 0 ? 0 : t >= 255 ? 255 : UInt8(t))
    }
    return out
  }

  /// Image.rotate(degrees, BICUBIC) matrix (output → input), rotation about the image centre.
  public static func rotationMatrix(degrees angle: Double, width w: Double, height h: Double) -> [Double] {
    func round15(_ v: Double) -> Double { (v * 1e15).rounded(.toNearestOrEven) / 1e15 }
    let t = -angle * Double.pi / 180
    let a = round15(cos(t)), b = round15(sin(t)), d = round15(-sin(t)), e = round15(cos(t))
    let cx = w / 2, cy = h / 2
    return [a, b, a * -cx + b * -cy + 0 + cx, d, e, d * -cx + e * -cy + 0 + cy]
  }

  /// Image.transform(size, AFFINE, m, BICUBIC, fillcolor): Keys cubic a = −1 on edge-clamped 4×4 neighbourhoods.
  public static func affine(_ img: DecodedImage, _ m: [Double], fill: [UInt8]) -> DecodedImage {
    let w = img.width, h = img.height, c = img.channels
    var out = img
    @inline(__always) func cubic(_ v1: Double, _ v2: Double, _ v3: Double, _ v4: Double, _ d: Double) -> Double {
      let p1 = v2, p2 = -v1 + v3, p3 = 2 * (v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4
      return p1 + d * (p2 + d * (p3 + d * p4))
    }
    for y in 0..<h {
      for x in 0..<w {
        let xo = Double(x) + 0.5, yo = Double(y) + 0.5
        let xin = m[0] * xo + m[1] * yo + m[2], yin = m[3] * xo + m[4] * yo + m[5]
        let o = (y * w + x) * c
        guard xin >= 0 && xin < Double(w) && yin >= 0 && yin < Double(h) else {
          for ch in 0..<c { out.pixels[o + ch] = fill[ch % fill.count] }
          continue
        }
        let xf = xin - 0.5, yf = yin - 0.5
        let x0 = Int(xf.rounded(.down)), y0 = Int(yf.rounded(.down))
        let dx = xf - Double(x0), dy = yf - Double(y0)
        for ch in 0..<c {
          var rows = [Double](repeating: 0, count: 4)
          for r in 0..<4 {
            let yy = min(max(y0 - 1 + r, 0), h - 1)
            var v = [Double](repeating: 0, count: 4)
            for q in 0..<4 {
              let xx = min(max(x0 - 1 + q, 0), w - 1)
              v[q] = Double(img.pixels[(yy * w + xx) * c + ch])
            }
            rows[r] = cubic(v[0], v[1], v[2], v[3], dx)
          }
          let val = cubic(rows[0], rows[1], rows[2], rows[3], dy)
          out.pixels[o + ch] = val <= 0 ? 0 : val >= 255 ? 255 : UInt8(val)
        }
      }
    }
    return out
  }
}
