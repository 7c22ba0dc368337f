// Decoding JPEG and PNG files with the system's libjpeg-turbo and libpng (through CMilanCodecs), to 8-bit grey or
// RGB in row-major [H, W, C] order, as Pillow's `convert("RGB")` / mode "L" sees them.
import CMilanCodecs
import Foundation

/// A decoded 8-bit image: `pixels[(y · width + x) · channels + c]`, channels 1 (grey) or 3 (RGB).
public struct DecodedImage: Sendable, Equatable {
  public var width: Int, height: Int, channels: Int
  public var pixels: [UInt8]

  public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
    precondition(pixels.count == width * height * channels, "pixel count \(pixels.count) ≠ \(width)×\(height)×\(channels)")
    self.width = width
    self.height = height
    self.channels = channels
    self.pixels = pixels
  }

  /// The same image with 3 channels (grey replicated), as `convert("RGB")`.
  public func rgb() -> DecodedImage {
    if channels == 3 { return self }
    var out = [UInt8](repeating: 0, count: width * height * 3)
    for i in 0..<(width * height) { out[3 * i] = pixels[i]; out[3 * i + 1] = pixels[i]; out[3 * i + 2] = pixels[i] }
    return DecodedImage(width: width, height: height, channels: 3, pixels: out)
  }
}

public enum ImageDecodeError: Error, CustomStringConvertible, Equatable {
  case unreadable(path: String, reason: String)
  case corrupt(path: String, reason: String)
  case unsupportedFormat(path: String, reason: String)
  /// Over the pixel limit (a decompression bomb or a picture far larger than training needs).
  case tooLarge(path: String, reason: String)

  public var description: String {
    switch self {
    case .tooLarge(let p, let r): return "image too large \(p): \(r)"
    case .unreadable(let p, let r): return "cannot read image \(p): \(r)"
    case .corrupt(let p, let r): return "corrupt image \(p): \(r)"
    case .unsupportedFormat(let p, let r): return "unsupported image \(p): \(r)"
    }
  }
}

public enum ImageDecoder {
  /// Decodes JPEG or PNG bytes; `path` only names the source in errors.
  public static func decode(_ data: Data, path: String = "<memory>") throws -> DecodedImage {
    var img = milan_image()
    let rc = data.withUnsafeBytes { raw -> Int32 in
      milan_decode_image(raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &img)
    }
    defer { milan_image_free(&img) }
    let message = withUnsafeBytes(of: img.error) { raw in
      String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
    switch rc {
    case 0:
      let n = Int(img.width) * Int(img.height) * Int(img.channels)
      let pixels = Array(UnsafeBufferPointer(start: img.pixels, count: n))
      return DecodedImage(width: Int(img.width), height: Int(img.height), channels: Int(img.channels), pixels: pixels)
    case 2: throw ImageDecodeError.unsupportedFormat(path: path, reason: message)
    case 3: throw ImageDecodeError.tooLarge(path: path, reason: message)
    default: throw ImageDecodeError.corrupt(path: path, reason: message)
    }
  }

  public static func decode(file url: URL) throws -> DecodedImage {
    let data: Data
    do {
      data = try Data(contentsOf: url)
    } catch {
      throw ImageDecodeError.unreadable(path: url.path, reason: (error as NSError).localizedDescription)
    }
    return try decode(data, path: url.path)
  }

  /// "libjpeg-turbo 2.1.5, libpng 1.6.39".
  public static var libraryVersions: String {
    let j = Int(milan_jpeg_lib_version())
    let png = String(cString: milan_png_lib_version())
    return "libjpeg-turbo \(j / 1_000_000).\(j / 1000 % 1000).\(j % 1000), libpng \(png)"
  }
}

public enum ImageEncodeError: Error, CustomStringConvertible {
  case failed(String)
  public var description: String {
    switch self { case .failed(let m): return "PNG encoding failed: \(m)" }
  }
}

extension DecodedImage {
  /// The image as PNG bytes (libpng; grey is written as RGB).
  public func pngData() throws -> Data {
    let rgb = self.rgb()
    var out: UnsafeMutablePointer<UInt8>? = nil
    var size = 0
    var error = [CChar](repeating: 0, count: 256)
    let rc = rgb.pixels.withUnsafeBufferPointer {
      milan_encode_png_rgb($0.baseAddress, Int32(width), Int32(height), &out, &size, &error)
    }
    guard rc == 0, let out else {
      throw ImageEncodeError.failed(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    defer { milan_buffer_free(out) }
    return Data(bytes: out, count: size)
  }
}
