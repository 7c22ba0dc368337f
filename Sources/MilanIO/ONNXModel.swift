// A minimal, bounds-checked reader for ONNX model files (protobuf), enough to take weights out of an exported
// network: the graph's nodes (name, op type, inputs, outputs) and its initializers (name, dims, data type, data).
//
// Protobuf wire format: each field is a varint key (field number << 3 | wire type) followed by a varint (type 0),
// 8 bytes (type 1), a varint length and that many bytes (type 2) or 4 bytes (type 5). Fields read:
//   ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; NodeProto.input = 1, output = 2, name = 3,
//   op_type = 4; TensorProto.dims = 1, data_type = 2, float_data = 4, int64_data = 7, name = 8, raw_data = 9,
//   data_location = 14 (1 = external, refused).
// Every length is checked against the enclosing message; malformed input throws ONNXError, never reads out of bounds.
import Foundation

public enum ONNXError: Error, CustomStringConvertible, Equatable {
  case unreadable(path: String, reason: String)
  case truncated(at: Int, context: String)
  case badWireType(Int, field: Int, at: Int)
  case varintTooLong(at: Int)
  case noGraph
  case externalData(tensor: String)
  case missingInitializer(String)
  case unsupportedDataType(tensor: String, dataType: Int)
  case sizeMismatch(tensor: String, expected: Int, found: Int)
  case missingNode(String)

  public var description: String {
    switch self {
    case .unreadable(let p, let r): return "onnx: cannot read '\(p)': \(r)"
    case .truncated(let at, let c): return "onnx: truncated \(c) at byte \(at)"
    case .badWireType(let w, let f, let at): return "onnx: wire type \(w) for field \(f) at byte \(at) is invalid"
    case .varintTooLong(let at): return "onnx: malformed varint at byte \(at)"
    case .noGraph: return "onnx: the file has no graph (ModelProto field 7)"
    case .externalData(let t): return "onnx: tensor '\(t)' keeps its data in an external file, which is not supported"
    case .missingInitializer(let n): return "onnx: no initializer named '\(n)'"
    case .unsupportedDataType(let t, let d): return "onnx: tensor '\(t)' has data type \(d); only float32 (1) is read"
    case .sizeMismatch(let t, let e, let f):
      return "onnx: tensor '\(t)' should hold \(e) bytes for its dims but holds \(f)"
    case .missingNode(let n): return "onnx: no node named '\(n)'"
    }
  }
}

public struct ONNXNode: Sendable, Equatable {
  public var name: String
  public var opType: String
  public var inputs: [String]
  public var outputs: [String]

  public init(name: String, opType: String, inputs: [String], outputs: [String]) {
    self.name = name
    self.opType = opType
    self.inputs = inputs
    self.outputs = outputs
  }
}

public struct ONNXInitializer: Sendable, Equatable {
  public var name: String
  public var dims: [Int]
  /// TensorProto.DataType (1 = float32, 7 = int64, ...).
  public var dataType: Int
  /// Byte range of raw_data inside the file, if the tensor uses raw_data.
  var raw: Range<Int>?
  /// float_data values, if the tensor uses them instead.
  var floatData: [Float]
  public var elementCount: Int { dims.reduce(1, *) }
}

public final class ONNXModel: @unchecked Sendable {
  public let nodes: [ONNXNode]
  public let initializers: [String: ONNXInitializer]
  /// Initializer names in file order.
  public let initializerOrder: [String]
  private let data: Data

  public convenience init(contentsOf url: URL) throws {
    let d: Data
    do {
      d = try Data(contentsOf: url, options: .alwaysMapped)
    } catch {
      throw ONNXError.unreadable(path: url.path, reason: (error as NSError).localizedDescription)
    }
    try self.init(data: d)
  }

  public init(data: Data) throws {
    self.data = data
    var nodes: [ONNXNode] = []
    var inits: [String: ONNXInitializer] = [:]
    var order: [String] = []
    try data.withUnsafeBytes { (buf: UnsafeRawBufferPointer) in
      var model = Reader(buf, 0..<buf.count, "ModelProto")
      var graphRange: Range<Int>? = nil
      while let (field, wire) = try model.nextKey() {
        if field == 7 && wire == 2 { graphRange = try model.lengthDelimited() } else { try model.skip(wire, field) }
      }
      guard let g = graphRange else { throw ONNXError.noGraph }
      var graph = Reader(buf, g, "GraphProto")
      while let (field, wire) = try graph.nextKey() {
        switch (field, wire) {
        case (1, 2): nodes.append(try Self.parseNode(buf, try graph.lengthDelimited()))
        case (5, 2):
          let t = try Self.parseTensor(buf, try graph.lengthDelimited())
          if inits[t.name] == nil { order.append(t.name) }
          inits[t.name] = t
        default: try graph.skip(wire, field)
        }
      }
    }
    self.nodes = nodes
    self.initializers = inits
    self.initializerOrder = order
  }

  static func parseNode(_ buf: UnsafeRawBufferPointer, _ r: Range<Int>) throws -> ONNXNode {
    var n = ONNXNode(name: "", opType: "", inputs: [], outputs: [])
    var rd = Reader(buf, r, "NodeProto")
    while let (field, wire) = try rd.nextKey() {
      switch (field, wire) {
      case (1, 2): n.inputs.append(try rd.string())
      case (2, 2): n.outputs.append(try rd.string())
      case (3, 2): n.name = try rd.string()
      case (4, 2): n.opType = try rd.string()
      default: try rd.skip(wire, field)
      }
    }
    return n
  }

  static func parseTensor(_ buf: UnsafeRawBufferPointer, _ r: Range<Int>) throws -> ONNXInitializer {
    var t = ONNXInitializer(name: "", dims: [], dataType: 0, raw: nil, floatData: [])
    var external = false
    var rd = Reader(buf, r, "TensorProto")
    while let (field, wire) = try rd.nextKey() {
      switch (field, wire) {
      case (1, 0): t.dims.append(Int(truncatingIfNeeded: try rd.varint()))
      case (1, 2):  // packed dims
        var p = Reader(buf, try rd.lengthDelimited(), "TensorProto.dims")
        while !p.atEnd { t.dims.append(Int(truncatingIfNeeded: try p.varint())) }
      case (2, 0): t.dataType = Int(truncatingIfNeeded: try rd.varint())
      case (4, 2):
        let fr = try rd.lengthDelimited()
        guard fr.count % 4 == 0 else { throw ONNXError.truncated(at: fr.lowerBound, context: "float_data") }
        t.floatData = stride(from: fr.lowerBound, to: fr.upperBound, by: 4).map {
          Float(bitPattern: buf.loadUnaligned(fromByteOffset: $0, as: UInt32.self).littleEndian)
        }
      case (4, 5): t.floatData.append(Float(bitPattern: try rd.fixed32()))
      case (8, 2): t.name = try rd.string()
      case (9, 2): t.raw = try rd.lengthDelimited()
      case (14, 0): external = try rd.varint() == 1
      default: try rd.skip(wire, field)
      }
    }
    if external { throw ONNXError.externalData(tensor: t.name) }
    if t.dims.contains(where: { $0 < 0 }) { throw ONNXError.sizeMismatch(tensor: t.name, expected: -1, found: 0) }
    return t
  }

  public func initializer(_ name: String) throws -> ONNXInitializer {
    guard let t = initializers[name] else { throw ONNXError.missingInitializer(name) }
    return t
  }

  /// Float32 values of an initializer (raw_data little-endian or float_data).
  public func floats(_ name: String) throws -> [Float] {
    let t = try initializer(name)
    guard t.dataType == 1 else { throw ONNXError.unsupportedDataType(tensor: name, dataType: t.dataType) }
    let n = t.elementCount
    if let raw = t.raw {
      guard raw.count == n * 4 else { throw ONNXError.sizeMismatch(tensor: name, expected: n * 4, found: raw.count) }
      return data.withUnsafeBytes { buf in
        (0..<n).map { Float(bitPattern: buf.loadUnaligned(fromByteOffset: raw.lowerBound + 4 * $0, as: UInt32.self).littleEndian) }
      }
    }
    guard t.floatData.count == n else { throw ONNXError.sizeMismatch(tensor: name, expected: n * 4, found: t.floatData.count * 4) }
    return t.floatData
  }

  public func node(named name: String) throws -> ONNXNode {
    guard let n = nodes.first(where: { $0.name == name }) else { throw ONNXError.missingNode(name) }
    return n
  }
}

/// Cursor over one protobuf message.
struct Reader {
  let buf: UnsafeRawBufferPointer
  var pos: Int
  let end: Int
  let context: String

  init(_ buf: UnsafeRawBufferPointer, _ range: Range<Int>, _ context: String) {
    self.buf = buf
    pos = range.lowerBound
    end = range.upperBound
    self.context = context
  }

  var atEnd: Bool { pos >= end }

  mutating func varint() throws -> UInt64 {
    var v: UInt64 = 0, shift: UInt64 = 0
    let start = pos
    while true {
      guard pos < end else { throw ONNXError.truncated(at: start, context: context) }
      let b = buf[pos]
      pos += 1
      v |= UInt64(b & 0x7F) << shift
      if b & 0x80 == 0 { return v }
      shift += 7
      if shift >= 64 { throw ONNXError.varintTooLong(at: start) }
    }
  }

  /// Next (field number, wire type), or nil at the end of the message.
  mutating func nextKey() throws -> (Int, Int)? {
    if atEnd { return nil }
    let k = try varint()
    return (Int(k >> 3), Int(k & 7))
  }

  mutating func lengthDelimited() throws -> Range<Int> {
    let start = pos
    let n = try varint()
    guard n <= UInt64(end - pos) else { throw ONNXError.truncated(at: start, context: context) }
    let r = pos..<(pos + Int(n))
    pos += Int(n)
    return r
  }

  mutating func string() throws -> String {
    let r = try lengthDelimited()
    return String(decoding: UnsafeRawBufferPointer(rebasing: buf[r]), as: UTF8.self)
  }

  mutating func fixed32() throws -> UInt32 {
    guard end - pos >= 4 else { throw ONNXError.truncated(at: pos, context: context) }
    let v = buf.loadUnaligned(fromByteOffset: pos, as: UInt32.self).littleEndian
    pos += 4
    return v
  }

  mutating func skip(_ wire: Int, _ field: Int) throws {
    switch wire {
    case 0: _ = try varint()
    case 1:
      guard end - pos >= 8 else { throw ONNXError.truncated(at: pos, context: context) }
      pos += 8
    case 2: _ = try lengthDelimited()
    case 5:
      guard end - pos >= 4 else { throw ONNXError.truncated(at: pos, context: context) }
      pos += 4
    default: throw ONNXError.badWireType(wire, field: field, at: pos)
    }
  }
}
