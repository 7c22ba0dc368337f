// SHA-256 of a file, streamed in 8 MiB pieces (swift-crypto; BoringSSL's implementation on Linux), so a run can
// record exactly which weights it used and a resumed run can tell whether they changed; and the first bytes that
// tell a safetensors file from other weight formats.
import Crypto
import Foundation

public enum FileDigest {
  /// Lower-case hex SHA-256 of the file at `url`; the error names the file.
  public static func sha256(_ url: URL) throws -> String {
    guard let handle = FileHandle(forReadingAtPath: url.path) else {
      throw SafeTensorsError.inFile(path: url.path, underlying: FileManager.default.fileExists(atPath: url.path)
        ? .permissionDenied(path: url.path) : .fileNotFound(path: url.path))
    }
    defer { try? handle.close() }
    var hasher = SHA256()
    while true {
      let chunk: Data?
      do { chunk = try handle.read(upToCount: 8 << 20) } catch {
        throw SafeTensorsError.readFailed(path: url.path, operation: "read", errno: Int32((error as NSError).code))
      }
      guard let chunk, !chunk.isEmpty else { break }
      hasher.update(data: chunk)
    }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
  }
}

extension SafeTensorsFile {
  /// Whether the file starts as a safetensors file does (an 8-byte little-endian header length, then `{`), so a
  /// reader can tell it from an ONNX protobuf or a PyTorch zip by content rather than by name.
  public static func looksLikeSafeTensors(_ url: URL) -> Bool {
    guard let h = FileHandle(forReadingAtPath: url.path) else { return false }
    defer { try? h.close() }
    let head = [UInt8]((try? h.read(upToCount: 9)) ?? Data())
    return head.count == 9 && head[8] == UInt8(ascii: "{")
  }
}
