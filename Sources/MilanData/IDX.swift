// IDX files (MNIST, Fashion-MNIST): big-endian header — magic 0x00000803 (u8 images, 3 dims) or 0x00000801
// (u8 labels, 1 dim), then one u32 per dimension — followed by the raw bytes. Files may be gzip-compressed (.gz).
import Foundation

public enum IDXError: Error, CustomStringConvertible, Equatable {
  case unreadable(path: String, reason: String)
  case badMagic(path: String, found: UInt32, expected: UInt32)
  case sizeMismatch(path: String, expected: Int, found: Int)
  case countMismatch(images: Int, labels: Int)

  public var description: String {
    switch self {
    case .unreadable(let p, let r): return "idx: cannot read '\(p)': \(r)"
    case .badMagic(let p, let f, let e):
      return "idx: '\(p)' has magic 0x\(String(f, radix: 16)), expected 0x\(String(e, radix: 16)) — not an IDX file of this kind"
    case .sizeMismatch(let p, let e, let f):
      return "idx: '\(p)' should hold \(e == Int.max ? "more than 2^63" : String(e)) data bytes after its header (its dimensions) but holds \(f)"
    case .countMismatch(let i, let l): return "idx: \(i) images but \(l) labels"
    }
  }
}

/// A set of grey u8 images [count, rows, cols] with optional labels.
public struct IDXDataset: Sendable {
  public let count: Int, rows: Int, cols: Int
  public let pixels: [UInt8]
  public let labels: [Int]?

  public init(images: URL, labels: URL? = nil) throws {
    let (dims, img) = try Self.read(images, magic: 0x0000_0803, rank: 3)
    count = dims[0]
    rows = dims[1]
    cols = dims[2]
    pixels = img
    if let labels {
      let (ld, lab) = try Self.read(labels, magic: 0x0000_0801, rank: 1)
      guard ld[0] == dims[0] else { throw IDXError.countMismatch(images: dims[0], labels: ld[0]) }
      self.labels = lab.map(Int.init)
    } else {
      self.labels = nil
    }
  }

  /// Image i as floats in [0, 1], [rows·cols].
  public func image(_ i: Int) -> ArraySlice<UInt8> { pixels[(i * rows * cols)..<((i + 1) * rows * cols)] }

  static func read(_ url: URL, magic: UInt32, rank: Int) throws -> ([Int], [UInt8]) {
    let raw: Data
    do {
      raw = try Data(contentsOf: url)
    } catch {
      throw IDXError.unreadable(path: url.path, reason: (error as NSError).localizedDescription)
    }
    let bytes = url.pathExtension == "gz" ? try Gzip.decompress(raw, label: url.path) : [UInt8](raw)
    let header = 4 + 4 * rank
    guard bytes.count >= header else { throw IDXError.sizeMismatch(path: url.path, expected: header, found: bytes.count) }
    func u32(_ o: Int) -> UInt32 {
      UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3])
    }
    guard u32(0) == magic else { throw IDXError.badMagic(path: url.path, found: u32(0), expected: magic) }
    let dims = (0..<rank).map { Int(u32(4 + 4 * $0)) }
    // Each dimension is a u32, so their product can overflow Int: such a header cannot match the file's size.
    var n = 1
    for d in dims {
      let (p, overflow) = n.multipliedReportingOverflow(by: d)
      guard !overflow else {
        throw IDXError.sizeMismatch(path: url.path, expected: Int.max, found: bytes.count - header)
      }
      n = p
    }
    guard bytes.count - header == n else {
      throw IDXError.sizeMismatch(path: url.path, expected: n, found: bytes.count - header)
    }
    return (dims, Array(bytes[header...]))
  }
}
