// Image decoding (libjpeg-turbo / libpng) against Pillow, torchvision's crops and resizes on PIL images (Pillow's
// fixed-point bicubic), the ImageNet-style folder, and unreadable-image accounting. Fixtures:
// tools/make_image_fixtures.py (Pillow 13.0.0, torchvision; Tests/Fixtures/images).
import Foundation
import MilanData
import MilanIO
import MilanTensor
import MilanTestSupport
import Testing

func imageFile(_ name: String) -> URL { Fixtures.url("images/files/\(name)") }

func u8(_ f: SafeTensorsFile, _ key: String) throws -> (shape: [Int], bytes: [UInt8]) {
  (try f.info(key).shape, try f.int64s(key).map { UInt8($0) })
}

/// Number of differing bytes and the largest difference.
func diff(_ a: [UInt8], _ b: [UInt8]) -> (count: Int, max: Int) {
  var n = 0, m = 0
  for (x, y) in zip(a, b) where x != y { n += 1; m = max(m, abs(Int(x) - Int(y))) }
  return (n + abs(a.count - b.count), m)
}

@Suite struct ImageDecodingTests {
  @Test(arguments: ["rgb.jpg", "grey.jpg", "rgb_progressive.jpg", "rgb_444.jpg", "cmyk.jpg", "rgb.png", "rgba.png",
                    "grey.png", "palette.png", "rgb16.png", "png_disguised.jpg"])
  func decodesAsPillow(_ name: String) throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("images/decoded.safetensors"))
    let key = name.replacingOccurrences(of: ".", with: "_")
    let ref = try u8(f, key)
    let img = try ImageDecoder.decode(file: imageFile(name))
    #expect([img.height, img.width, 3] == ref.shape, "\(name): \(img.width)×\(img.height)")
    #expect(img.channels == (name.hasPrefix("grey") ? 1 : 3), "\(name): \(img.channels) channels")
    let d = diff(img.rgb().pixels, ref.bytes)
    #expect(d.count == 0, "\(name): \(d.count) bytes differ from Pillow (max \(d.max))")
    print("ok  decode \(name) (\(img.width)×\(img.height)×\(img.channels)): identical to Pillow")
  }

  /// 16-bit grey keeps the high byte (a documented difference: Pillow clamps I;16 to 255).
  @Test func sixteenBitGreyKeepsHighByte() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("images/decoded.safetensors"))
    let raw = try f.int64s("grey16_png_raw")
    let img = try ImageDecoder.decode(file: imageFile("grey16.png"))
    #expect(img.channels == 1 && img.pixels == raw.map { UInt8($0 >> 8) })
  }

  @Test func brokenFilesGiveNamedErrors() throws {
    for (name, expected) in [("truncated.jpg", "Premature end"), ("garbage.jpg", "not a JPEG or PNG"), ("empty.png", "empty")] {
      do {
        _ = try ImageDecoder.decode(file: imageFile(name))
        Issue.record("\(name) decoded without error")
      } catch {
        let message = String(describing: error)
        #expect(message.contains(name) && message.contains(expected), "\(name): \(message)")
      }
    }
    #expect(throws: ImageDecodeError.self) { try ImageDecoder.decode(file: imageFile("missing.png")) }
  }
}

@Suite struct ImageFolderTests {
  let root = Fixtures.url("images/files/tiny_folder")

  @Test func scansLikeTorchvision() throws {
    let folder = try ImageFolder(root: root)
    #expect(folder.classNames == ["n01440764", "n01443537"])
    #expect(folder.paths.map { ($0 as NSString).lastPathComponent } == ["a.JPEG", "b.jpg", "c.png", "corrupt.jpg", "d.jpg", "e.png", "f.JPEG"])
    #expect(folder.labels == [0, 0, 0, 1, 1, 1, 1])
    #expect(folder.ignoredFiles.map { ($0 as NSString).lastPathComponent } == ["notes.txt"])
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("images/decoded.safetensors"))
    for (i, key) in [(0, "tiny_n01440764_a_JPEG"), (1, "tiny_n01440764_b_jpg"), (6, "tiny_n01443537_f_JPEG")] {
      #expect(diff(try folder.load(i).rgb().pixels, try u8(f, key).bytes).count == 0, "\(key)")
    }
    #expect(throws: ImageFolderError.self) { try ImageFolder(root: Fixtures.url("images/files/rgb.jpg")) }
  }

  @Test func unreadableImagesAreSkippedAndCounted() throws {
    let folder = try ImageFolder(root: root)
    let warnings = WarningBox()
    let tolerant = SafeImageLoader(dataset: folder, maxUnreadableFraction: 0.2, warn: { warnings.append($0) })
    let (used, img) = try tolerant.load(3)  // corrupt.jpg → the next readable image, d.jpg
    #expect(used == 4 && img.width == 10 && img.height == 14)
    #expect(tolerant.failureCount == 1 && warnings.lines.count == 1 && warnings.lines[0].contains("corrupt.jpg"))
    _ = try tolerant.load(3)  // remembered: no second warning
    #expect(warnings.lines.count == 1)

    let strict = SafeImageLoader(dataset: folder, maxUnreadableFraction: 0.1, warn: { _ in })
    do {
      _ = try strict.load(3)
      Issue.record("a corrupt image above the allowed fraction did not stop loading")
    } catch let e as DataLoadError {
      #expect(String(describing: e).contains("1 of 7 images could not be read"), "\(e)")
    }
  }
}

final class WarningBox: @unchecked Sendable {
  private let lock = NSLock()
  private var store: [String] = []
  func append(_ s: String) { lock.withLock { store.append(s) } }
  var lines: [String] { lock.withLock { store } }
}

@Suite struct TransformTests {
  func src() throws -> (SafeTensorsFile, DecodedImage) {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("images/transforms.safetensors"))
    let s = try u8(f, "src")
    return (f, DecodedImage(width: s.shape[1], height: s.shape[0], channels: 3, pixels: s.bytes))
  }

  @Test func resizedCropIsPillowExact() throws {
    let (f, img) = try src()
    let boxes = try f.int64s("rrc_boxes").map { Int($0) }
    let ref = try u8(f, "rrc_out").bytes
    for k in 0..<3 {
      let d = CropDraw(top: boxes[4 * k], left: boxes[4 * k + 1], height: boxes[4 * k + 2], width: boxes[4 * k + 3], flip: false)
      let out = Transforms.apply(d, to: img, size: 24)
      let r = Array(ref[(k * 24 * 24 * 3)..<((k + 1) * 24 * 24 * 3)])
      let dd = diff(out.pixels, r)
      #expect(dd.count == 0, "box \(k): \(dd.count) bytes differ (max \(dd.max))")
      if k == 0 {
        var flipped = d
        flipped.flip = true
        #expect(Transforms.apply(flipped, to: img, size: 24).pixels == (try u8(f, "rrc_flip0")).bytes)
        let t = Tensor(uninitialized: [3, 24, 24])
        Transforms.normalize(out, into: t.data)
        #expect(compare(t, try f.tensor("rrc_norm0"), atol: 0, rtol: 0, "ToTensor + Normalize").ok)
      }
    }
    print("ok  resized_crop: 3 boxes (downscale, whole image, upscale) bit-identical to torchvision on PIL")
  }

  @Test func evaluationResizeAndCenterCrop() throws {
    let (f, img) = try src()
    let r = Transforms.resizeShorter(img, to: 32)
    #expect(r.width == 42 && r.height == 32)
    #expect(diff(r.pixels, try u8(f, "eval_resized").bytes).count == 0, "Resize(32)")
    #expect(Transforms.centerCrop(r, height: 28, width: 28).pixels == (try u8(f, "eval_out")).bytes, "CenterCrop(28)")
    let r2 = Transforms.centerCrop(Transforms.resizeShorter(img, to: 31), height: 28, width: 28)
    #expect(r2.pixels == (try u8(f, "eval2_out")).bytes, "CenterCrop with round-half-even offsets")
  }

  @Test func randomResizedCropFallbackAndBounds() throws {
    let (f, _) = try src()
    let rows = try f.int64s("rrc_fallback").map { Int($0) }
    for k in 0..<3 {
      let r = Array(rows[(6 * k)..<(6 * k + 6)])
      var rng = SplitMix64(seed: 1)
      let b = Transforms.randomResizedCropBox(height: r[0], width: r[1], scale: 0.2...1, ratio: (3.0 / 4)...(4.0 / 3), rng: &rng)
      #expect([b.top, b.left, b.height, b.width] == Array(r[2...]), "fallback for \(r[0])×\(r[1])")
    }
    // Drawn boxes: inside the image, area fraction and aspect within the ranges (up to rounding).
    var rng = SplitMix64(seed: 7)
    for _ in 0..<2000 {
      let b = Transforms.randomResizedCropBox(height: 45, width: 60, scale: 0.2...1, ratio: (3.0 / 4)...(4.0 / 3), rng: &rng)
      #expect(b.top >= 0 && b.left >= 0 && b.top + b.height <= 45 && b.left + b.width <= 60)
      let frac = Double(b.height * b.width) / Double(45 * 60)
      #expect(frac > 0.17 && frac <= 1.0001)
    }
  }
}
