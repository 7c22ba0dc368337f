// Protobuf encoding of the few wire types ONNX uses: the writer beside ONNXModel's reader, for building small ONNX
// messages (the reader's tests and the fuzzer's seed).
public struct ProtobufWriter: Sendable {
  public var bytes: [UInt8] = []
  public init() {}

  /// A bare varint (also the elements of a packed repeated field).
  public mutating func varint(_ v: UInt64) {
    var v = v
    while v >= 0x80 {
      bytes.append(UInt8(v & 0x7F) | 0x80)
      v >>= 7
    }
    bytes.append(UInt8(v))
  }
  public mutating func key(_ field: Int, _ wire: Int) { varint(UInt64(field << 3 | wire)) }
  /// A varint field (negative values as 10-byte two's complement, as protobuf's int64).
  public mutating func int(_ field: Int, _ v: Int) {
    key(field, 0)
    varint(UInt64(bitPattern: Int64(v)))
  }
  public mutating func fixed32(_ field: Int, _ v: UInt32) {
    key(field, 5)
    bytes += withUnsafeBytes(of: v.littleEndian, Array.init)
  }
  public mutating func bytes(_ field: Int, _ b: [UInt8]) {
    key(field, 2)
    varint(UInt64(b.count))
    bytes += b
  }
  public mutating func string(_ field: Int, _ s: String) { bytes(field, Array(s.utf8)) }
  public mutating func message(_ field: Int, _ m: ProtobufWriter) { bytes(field, m.bytes) }
}
