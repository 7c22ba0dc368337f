// Bicubic resizing of a token grid (position-embedding interpolation), matching PyTorch's
// `F.interpolate(mode="bicubic", align_corners=False)` (cubic coefficient a = −0.75, source indices clamped at the
// border) and, with `antialias`, `F.interpolate(..., antialias=True)` (a = −0.5, taps truncated at the border and
// renormalised, support widened by the scale when downsampling), which timm's `resample_abs_pos_embed` uses.
import RealModule

extension Kernels {
  /// Per-axis interpolation weights: for each output index, (first source index, weights over consecutive sources).
  public static func bicubicTaps(inSize: Int, outSize: Int, antialias: Bool) -> [(Int, [Double])] {
    let scale = Double(inSize) / Double(outSize)
    func cubic(_ x: Double, _ a: Double) -> Double {
      let t = abs(x)
      if t <= 1 { return ((a + 2) * t - (a + 3)) * t * t + 1 }
      if t < 2 { return (((t - 5) * t + 8) * t - 4) * a }
      return 0
    }
    var taps: [(Int, [Double])] = []
    for o in 0..<outSize {
      if !antialias {
        let src = (Double(o) + 0.5) * scale - 0.5
        let i0 = Int(src.rounded(.down))
        let t = src - Double(i0)
        let w = [cubic(t + 1, -0.75), cubic(t, -0.75), cubic(1 - t, -0.75), cubic(2 - t, -0.75)]
        // Clamp sources to the border by folding weights onto the edge pixels.
        var folded = [Double](repeating: 0, count: inSize)
        for k in 0..<4 { folded[min(max(i0 - 1 + k, 0), inSize - 1)] += w[k] }
        let lo = folded.firstIndex { $0 != 0 } ?? 0, hi = folded.lastIndex { $0 != 0 } ?? 0
        taps.append((lo, Array(folded[lo...hi])))
      } else {
        let support = 2.0 * max(scale, 1)
        let invScale = scale >= 1 ? 1 / scale : 1
        let center = scale * (Double(o) + 0.5)
        let xmin = max(Int(center - support + 0.5), 0)
        let xmax = min(Int(center + support + 0.5), inSize)
        var w = (xmin..<xmax).map { cubic((Double($0) - center + 0.5) * invScale, -0.5) }
        let s = w.reduce(0, +)
        if s != 0 { w = w.map { $0 / s } }
        taps.append((xmin, w))
      }
    }
    return taps
  }

  /// grid [inH·inW, D] (row-major tokens) → [outH·outW, D].
  public static func resizeTokenGrid(_ src: UnsafePointer<Float>, dim d: Int, inH: Int, inW: Int, outH: Int,
                                     outW: Int, antialias: Bool, into dst: UnsafeMutablePointer<Float>) {
    let th = bicubicTaps(inSize: inH, outSize: outH, antialias: antialias)
    let tw = bicubicTaps(inSize: inW, outSize: outW, antialias: antialias)
    // Along W first into [inH, outW, D], then along H.
    var mid = [Double](repeating: 0, count: inH * outW * d)
    for i in 0..<inH {
      for (o, (start, w)) in tw.enumerated() {
        for (k, wk) in w.enumerated() where wk != 0 {
          let s = src + (i * inW + start + k) * d
          for c in 0..<d { mid[(i * outW + o) * d + c] += wk * Double(s[c]) }
        }
      }
    }
    for (o, (start, w)) in th.enumerated() {
      for j in 0..<outW {
        let out = dst + (o * outW + j) * d
        for c in 0..<d {
          var acc = 0.0
          for (k, wk) in w.enumerated() { acc += wk * mid[((start + k) * outW + j) * d + c] }
          out[c] = Float(acc)
        }
      }
    }
  }
}
