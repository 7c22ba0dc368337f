// The ONNX protobuf reader on hand-built messages: a valid graph, and malformed bytes that must give typed errors
// (never a crash or an out-of-bounds read).
import Foundation
import Testing

import MilanIO

/// The protobuf writer of MilanIO, under the tests' short name.
typealias PB = ProtobufWriter

func tensorProto(name: String, dims: [Int], floats: [Float], packedDims: Bool = true) -> PB {
  var t = PB()
  if packedDims {
    var d = PB()
    for x in dims { d.varint(UInt64(x)) }
    t.message(1, d)
  } else {
    for x in dims { t.int(1, x) }
  }
  t.int(2, 1)
  t.string(8, name)
  t.bytes(9, floats.flatMap { f in withUnsafeBytes(of: f.bitPattern.littleEndian) { Array($0) } })
  return t
}

func model(_ graph: PB) -> [UInt8] {
  var m = PB()
  m.int(1, 7)  // ir_version
  m.message(7, graph)
  return m.bytes
}

@Suite struct ONNXModelTests {
  func validGraph() -> PB {
    var g = PB()
    var node = PB()
    node.string(1, "x")
    node.string(1, "onnx::MatMul_7")
    node.string(2, "y")
    node.string(3, "/layer/MatMul")
    node.string(4, "MatMul")
    g.message(1, node)
    g.message(5, tensorProto(name: "onnx::MatMul_7", dims: [2, 3], floats: [1, 2, 3, 4, 5, 6]))
    g.message(5, tensorProto(name: "bias", dims: [3], floats: [0.5, -1, 2], packedDims: false))
    return g
  }

  @Test func readsNodesAndInitializers() throws {
    let m = try ONNXModel(data: Data(model(validGraph())))
    #expect(m.nodes == [ONNXNode(name: "/layer/MatMul", opType: "MatMul", inputs: ["x", "onnx::MatMul_7"], outputs: ["y"])])
    #expect(m.initializerOrder == ["onnx::MatMul_7", "bias"])
    #expect(try m.initializer("onnx::MatMul_7").dims == [2, 3])
    #expect(try m.floats("onnx::MatMul_7") == [1, 2, 3, 4, 5, 6])
    #expect(try m.floats("bias") == [0.5, -1, 2])
    #expect(try m.node(named: "/layer/MatMul").inputs[1] == "onnx::MatMul_7")
    #expect(throws: ONNXError.missingInitializer("nope")) { try m.floats("nope") }
    #expect(throws: ONNXError.missingNode("/other")) { try m.node(named: "/other") }
  }

  @Test func malformedInputsGiveTypedErrors() throws {
    let good = model(validGraph())
    // Truncated anywhere inside: an error, never a crash.
    for cut in stride(from: 1, to: good.count - 1, by: 3) {
      #expect(throws: ONNXError.self) { try ONNXModel(data: Data(good.prefix(cut))) }
    }
    // No graph.
    var noGraph = PB()
    noGraph.int(1, 7)
    #expect(throws: ONNXError.noGraph) { try ONNXModel(data: Data(noGraph.bytes)) }
    // Invalid wire type 7.
    #expect(throws: ONNXError.self) { try ONNXModel(data: Data([0x0F, 0x00])) }
    // A varint longer than 10 bytes.
    #expect(throws: ONNXError.self) { try ONNXModel(data: Data([0x08] + Array(repeating: 0xFF, count: 11) + [0x01])) }
    // External data is refused by name.
    var ext = tensorProto(name: "w", dims: [1], floats: [1])
    ext.int(14, 1)
    var g = PB()
    g.message(5, ext)
    #expect(throws: ONNXError.externalData(tensor: "w")) { try ONNXModel(data: Data(model(g))) }
    // raw_data shorter than the dims say.
    var short = PB()
    short.message(5, tensorProto(name: "s", dims: [4], floats: [1, 2]))
    let m = try ONNXModel(data: Data(model(short)))
    #expect(throws: ONNXError.sizeMismatch(tensor: "s", expected: 16, found: 8)) { try m.floats("s") }
    // Non-float data is refused.
    var ints = PB()
    var t = PB()
    t.int(1, 2)
    t.int(2, 7)
    t.string(8, "i")
    t.bytes(9, Array(repeating: 0, count: 16))
    ints.message(5, t)
    #expect(throws: ONNXError.unsupportedDataType(tensor: "i", dataType: 7)) { try ONNXModel(data: Data(model(ints))).floats("i") }
  }

  @Test func randomCorruptionNeverCrashes() throws {
    let good = model(validGraph())
    var rng: UInt64 = 12345
    for _ in 0..<3000 {
      var b = good
      rng = rng &* 6364136223846793005 &+ 1442695040888963407
      let i = Int(rng >> 33) % b.count
      b[i] = UInt8(truncatingIfNeeded: rng >> 17)
      if let m = try? ONNXModel(data: Data(b)) {
        for n in m.initializerOrder { _ = try? m.floats(n) }
      }
    }
  }
}
