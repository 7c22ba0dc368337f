// torchvision's image transforms on 8-bit images, as the reference runs them on PIL images: RandomResizedCrop's box
// sampling, crop, horizontal flip, Resize (shorter side), CenterCrop, and ToTensor + Normalize. Resampling is
// PILResample (Pillow's bicubic), so a given box gives the reference's pixels exactly.
import Foundation
import MilanTensor

/// A RandomResizedCrop draw: the source box and whether the crop is mirrored.
public struct CropDraw: Sendable, Equatable {
  public var top: Int, left: Int, height: Int, width: Int
  public var flip: Bool
  public init(top: Int, left: Int, height: Int, width: Int, flip: Bool) {
    self.top = top
    self.left = left
    self.height = height
    self.width = width
    self.flip = flip
  }
}

public enum Transforms {
  /// torchvision RandomResizedCrop.get_params: up to 10 tries of area ~ U(scale)·H·W and log-aspect ~ U(log ratio),
  /// w = round(√(area·r)), h = round(√(area/r)) (Python rounds half to even), accepted if it fits, then a uniform
  /// position; otherwise the central crop with the aspect clamped to `ratio`.
  public static func randomResizedCropBox(height: Int, width: Int, scale: ClosedRange<Double> = 0.08...1,
                                          ratio: ClosedRange<Double> = (3.0 / 4)...(4.0 / 3),
                                          rng: inout SplitMix64) -> (top: Int, left: Int, height: Int, width: Int) {
    let area = Double(height * width)
    let logLo = log(ratio.lowerBound), logHi = log(ratio.upperBound)
    for _ in 0..<10 {
      let target = area * uniform(scale.lowerBound, scale.upperBound, &rng)
      let aspect = exp(uniform(logLo, logHi, &rng))
      let w = Int((target * aspect).squareRoot().rounded(.toNearestOrEven))
      let h = Int((target / aspect).squareRoot().rounded(.toNearestOrEven))
      if w > 0 && w <= width && h > 0 && h <= height {
        let i = Int.random(in: 0...(height - h), using: &rng)
        let j = Int.random(in: 0...(width - w), using: &rng)
        return (i, j, h, w)
      }
    }
    let inRatio = Double(width) / Double(height)
    var w = width, h = height
    if inRatio < ratio.lowerBound {
      h = Int((Double(w) / ratio.lowerBound).rounded(.toNearestOrEven))
    } else if inRatio > ratio.upperBound {
      w = Int((Double(h) * ratio.upperBound).rounded(.toNearestOrEven))
    }
    return ((height - h) / 2, (width - w) / 2, h, w)
  }

  /// A full RandomResizedCrop + RandomHorizontalFlip(0.5) draw.
  public static func drawCrop(height: Int, width: Int, scale: ClosedRange<Double>, ratio: ClosedRange<Double>,
                              flipProbability: Double = 0.5, rng: inout SplitMix64) -> CropDraw {
    let b = randomResizedCropBox(height: height, width: width, scale: scale, ratio: ratio, rng: &rng)
    let flip = uniform(0, 1, &rng) < flipProbability
    return CropDraw(top: b.top, left: b.left, height: b.height, width: b.width, flip: flip)
  }

  /// PIL `crop((left, top, left + width, top + height))`; the box must lie inside the image.
  public static func crop(_ img: DecodedImage, top: Int, left: Int, height: Int, width: Int) -> DecodedImage {
    precondition(top >= 0 && left >= 0 && height > 0 && width > 0 && top + height <= img.height
                 && left + width <= img.width, "crop box outside the \(img.width)×\(img.height) image")
    let c = img.channels
    var out = [UInt8](repeating: 0, count: width * height * c)
    for y in 0..<height {
      let s = ((top + y) * img.width + left) * c
      for k in 0..<(width * c) { out[y * width * c + k] = img.pixels[s + k] }
    }
    return DecodedImage(width: width, height: height, channels: c, pixels: out)
  }

  public static func horizontalFlip(_ img: DecodedImage) -> DecodedImage {
    let c = img.channels, w = img.width
    var out = img.pixels
    for y in 0..<img.height {
      for x in 0..<w {
        for ch in 0..<c { out[(y * w + x) * c + ch] = img.pixels[(y * w + (w - 1 - x)) * c + ch] }
      }
    }
    return DecodedImage(width: w, height: img.height, channels: c, pixels: out)
  }

  /// torchvision `resized_crop(img, top, left, h, w, [size, size], BICUBIC)` then the optional flip.
  public static func apply(_ d: CropDraw, to img: DecodedImage, size: Int) -> DecodedImage {
    let r = PILResample.resize(crop(img, top: d.top, left: d.left, height: d.height, width: d.width),
                               width: size, height: size)
    return d.flip ? horizontalFlip(r) : r
  }

  /// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer int(size · long / short).
  public static func resizeShorter(_ img: DecodedImage, to size: Int) -> DecodedImage {
    let (w, h) = img.width <= img.height
      ? (size, Int(Double(size) * Double(img.height) / Double(img.width)))
      : (Int(Double(size) * Double(img.width) / Double(img.height)), size)
    return PILResample.resize(img, width: w, height: h)
  }

  /// torchvision `CenterCrop`: offsets int(round((H − h) / 2)) with Python's half-to-even rounding.
  public static func centerCrop(_ img: DecodedImage, height: Int, width: Int) -> DecodedImage {
    let top = Int((Double(img.height - height) / 2).rounded(.toNearestOrEven))
    let left = Int((Double(img.width - width) / 2).rounded(.toNearestOrEven))
    return crop(img, top: top, left: left, height: height, width: width)
  }

  /// The reference's evaluation transform: Resize(size / 0.875) then CenterCrop(size) (256 → 224 at ImageNet scale).
  public static func evaluation(_ img: DecodedImage, size: Int, cropFraction: Double = 0.875) -> DecodedImage {
    let r = resizeShorter(img, to: Int(Double(size) / cropFraction))
    return centerCrop(r, height: size, width: size)
  }

  /// ToTensor + Normalize into `dst` as [3, H, W] (a grey image is replicated to three channels).
  public static func normalize(_ img: DecodedImage, into dst: UnsafeMutablePointer<Float>,
                               mean: [Float] = ImageNorm.imageNetMean, std: [Float] = ImageNorm.imageNetStd) {
    let plane = img.width * img.height, c = img.channels
    for ch in 0..<3 {
      let src = c == 1 ? 0 : ch
      let m = mean[ch], s = std[ch]
      let o = dst + ch * plane
      for k in 0..<plane { o[k] = (Float(img.pixels[k * c + src]) / 255 - m) / s }
    }
  }

  /// Normalised batch [B, 3, size, size]: each image cropped and resized by its draw, or, without draws, resized
  /// (shorter side) and centre-cropped to `size`.
  public static func batch(_ images: [DecodedImage], size: Int, draws: [CropDraw]? = nil) -> Tensor {
    let out = Tensor(uninitialized: [images.count, 3, size, size])
    for (b, img) in images.enumerated() {
      let r: DecodedImage
      if let draws {
        r = apply(draws[b], to: img, size: size)
      } else {
        r = centerCrop(resizeShorter(img, to: size), height: size, width: size)
      }
      normalize(r, into: out.data + b * 3 * size * size)
    }
    return out
  }

  @inline(__always) static func uniform(_ lo: Double, _ hi: Double, _ rng: inout SplitMix64) -> Double {
    lo + (hi - lo) * Double(rng.next() >> 11) * 0x1p-53
  }
}
