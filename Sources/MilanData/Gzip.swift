// gzip decompression through the system zlib (inflate with automatic gzip header detection).
import CZlib
import Foundation

public enum GzipError: Error, CustomStringConvertible, Equatable {
  case corrupt(String, detail: String)
  case truncated(String)
  case tooLarge(String, limit: Int)

  public var description: String {
    switch self {
    case .tooLarge(let what, let limit): return "gzip: \(what) decompresses to more than \(limit) bytes (the limit)"
    case .corrupt(let what, let d): return "gzip: \(what) is not valid gzip data (\(d))"
    case .truncated(let what): return "gzip: \(what) ends before the end of its compressed stream"
    }
  }
}

public enum Gzip {
  /// Decompresses a whole gzip (or zlib) stream. `label` names the source in errors. Output beyond `limit` bytes
  /// (default 4 GiB, far above any IDX set) is refused, so a small "bomb" cannot take the machine's memory.
  public static func decompress(_ input: Data, label: String, limit: Int = 1 << 32) throws -> [UInt8] {
    var stream = z_stream()
    // 15 + 32: zlib window with automatic gzip/zlib header detection.
    guard inflateInit2_(&stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
      throw GzipError.corrupt(label, detail: "inflateInit failed")
    }
    defer { inflateEnd(&stream) }
    var out = [UInt8]()
    out.reserveCapacity(min(input.count * 4, limit))
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    try input.withUnsafeBytes { (src: UnsafeRawBufferPointer) in
      guard let base = src.baseAddress else { throw GzipError.truncated(label) }
      stream.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
      stream.avail_in = uInt(src.count)
      while true {
        let status: Int32 = chunk.withUnsafeMutableBufferPointer { buf in
          stream.next_out = buf.baseAddress
          stream.avail_out = uInt(buf.count)
          return inflate(&stream, Z_NO_FLUSH)
        }
        let produced = chunk.count - Int(stream.avail_out)
        guard out.count + produced <= limit else { throw GzipError.tooLarge(label, limit: limit) }
        out.append(contentsOf: chunk[0..<produced])
        switch status {
        case Z_STREAM_END: return
        case Z_OK: if stream.avail_in == 0 && produced == 0 { throw GzipError.truncated(label) }
        case Z_BUF_ERROR: throw GzipError.truncated(label)
        default:
          let msg = stream.msg.map { String(cString: $0) } ?? "zlib error \(status)"
          throw GzipError.corrupt(label, detail: msg)
        }
      }
    }
    return out
  }
}
