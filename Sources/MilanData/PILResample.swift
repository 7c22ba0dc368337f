// Pillow's `Image.resize(size, resample=BICUBIC, box=...)` on 8-bit images, reproduced exactly (Resample.c): a
// separable two-pass filter, horizontal pass first over the rows the vertical pass needs, then vertical; the kernel
// support is widened by the downscale factor (antialiasing); cubic a = −0.5; the normalised coefficients are rounded
// to fixed point with 22 fractional bits; each pass rounds and clips to 8 bits. torchvision's transforms on PIL images
// (RandomResizedCrop, Resize) call exactly this, so the reference's training inputs are reproduced bit for bit.
import Foundation

public enum PILResample {
  static let precisionBits = 32 - 8 - 2

  /// Pillow's bicubic filter (a = −0.5), support 2.
  @inline(__always) static func bicubic(_ x0: Double) -> Double {
    let a = -0.5
    let x = abs(x0)
    if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
    if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
    return 0
  }

  /// Per output position: first source index, tap count, and the fixed-point coefficients (ksize per output).
  struct Coefficients {
    var bounds: [(min: Int, count: Int)]
    var ksize: Int
    var kk: [Int32]
  }

  static func coefficients(inSize: Int, in0: Double, in1: Double, outSize: Int) -> Coefficients {
    let scale = (in1 - in0) / Double(outSize)
    let filterScale = max(scale, 1)
    let support = 2.0 * filterScale
    let ksize = Int(support.rounded(.up)) * 2 + 1
    var bounds: [(min: Int, count: Int)] = []
    bounds.reserveCapacity(outSize)
    var kk = [Int32](repeating: 0, count: outSize * ksize)
    var k = [Double](repeating: 0, count: ksize)
    for xx in 0..<outSize {
      let center = in0 + (Double(xx) + 0.5) * scale
      let ss = 1 / filterScale
      let xmin = max(Int(center - support + 0.5), 0)     // C's (int) truncation: the operands here are ≥ −0.5
      let xmax = min(Int(center + support + 0.5), inSize) - xmin
      var ww = 0.0
      for x in 0..<ksize { k[x] = 0 }
      for x in 0..<max(xmax, 0) {
        let w = bicubic((Double(x + xmin) - center + 0.5) * ss)
        k[x] = w
        ww += w
      }
      for x in 0..<max(xmax, 0) where ww != 0 { k[x] /= ww }
      for x in 0..<ksize {
        let v = k[x] * Double(1 << precisionBits)
        kk[xx * ksize + x] = Int32(v < 0 ? (-0.5 + v).rounded(.towardZero) : (0.5 + v).rounded(.towardZero))
      }
      bounds.append((xmin, max(xmax, 0)))
    }
    return Coefficients(bounds: bounds, ksize: ksize, kk: kk)
  }

  @inline(__always) static func clip8(_ v: Int64) -> UInt8 {
    if v >= Int64(1) << (precisionBits + 8) { return 255 }
    if v <= 0 { return 0 }
    return UInt8(truncatingIfNeeded: v >> precisionBits)
  }

  /// Resizes the `box` region (x0, y0, x1, y1 in source pixels; the whole image when nil) to outW × outH.
  public static func resize(_ img: DecodedImage, width outW: Int, height outH: Int,
                            box: (x0: Double, y0: Double, x1: Double, y1: Double)? = nil) -> DecodedImage {
    precondition(outW > 0 && outH > 0, "resize to \(outW)×\(outH)")
    let b = box ?? (0, 0, Double(img.width), Double(img.height))
    let c = img.channels
    let needH = outW != img.width || b.x0 != 0 || b.x1 != Double(outW)
    let needV = outH != img.height || b.y0 != 0 || b.y1 != Double(outH)
    if !needH && !needV { return img }
    let vert = coefficients(inSize: img.height, in0: b.y0, in1: b.y1, outSize: outH)
    let yFirst = vert.bounds[0].min
    let yLast = vert.bounds[outH - 1].min + vert.bounds[outH - 1].count
    var src = img
    var vBounds = vert.bounds
    if needH {
      let hor = coefficients(inSize: img.width, in0: b.x0, in1: b.x1, outSize: outW)
      let rows = yLast - yFirst
      var tmp = [UInt8](repeating: 0, count: outW * rows * c)
      let round = Int64(1) << (precisionBits - 1)
      img.pixels.withUnsafeBufferPointer { inp in
        for y in 0..<rows {
          let row = (y + yFirst) * img.width * c
          for xx in 0..<outW {
            let (xmin, count) = hor.bounds[xx]
            let kBase = xx * hor.ksize
            for ch in 0..<c {
              var ss = round
              for x in 0..<count { ss += Int64(inp[row + (x + xmin) * c + ch]) * Int64(hor.kk[kBase + x]) }
              tmp[(y * outW + xx) * c + ch] = clip8(ss)
            }
          }
        }
      }
      for i in 0..<outH { vBounds[i].min -= yFirst }
      src = DecodedImage(width: outW, height: rows, channels: c, pixels: tmp)
    }
    guard needV else { return src }
    var out = [UInt8](repeating: 0, count: src.width * outH * c)
    let round = Int64(1) << (precisionBits - 1)
    let w = src.width
    src.pixels.withUnsafeBufferPointer { inp in
      for yy in 0..<outH {
        let (ymin, count) = vBounds[yy]
        let kBase = yy * vert.ksize
        for xx in 0..<w {
          for ch in 0..<c {
            var ss = round
            for y in 0..<count { ss += Int64(inp[((y + ymin) * w + xx) * c + ch]) * Int64(vert.kk[kBase + y]) }
            out[(yy * w + xx) * c + ch] = clip8(ss)
          }
        }
      }
    }
    return DecodedImage(width: w, height: outH, channels: c, pixels: out)
  }
}
