// Tensors from safetensors files in every float dtype PyTorch checkpoints use (F32, F16, BF16) and index tensors
// from I64, through the MilanIO bridge.
import Foundation
import MilanIO
import MilanTensor
import Testing

@Suite struct TensorIOTests {
  @Test func readsF16BF16F32AndI64IntoTensors() throws {
    let values: [Float] = [0, 1, -2.5, 0.099975586, 65504, -1e-3]
    var w = SafeTensorsWriter(metadata: ["format": "pt"])
    let f16 = values.flatMap { v -> [UInt8] in
      let b = Float16(v).bitPattern
      return [UInt8(b & 0xFF), UInt8(b >> 8)]
    }
    let bf16 = values.flatMap { v -> [UInt8] in
      let b = UInt16(v.bitPattern >> 16)  // truncation: exact for these values' top 16 bits
      return [UInt8(b & 0xFF), UInt8(b >> 8)]
    }
    try w.add(name: "half", dtype: .F16, shape: [2, 3], bytes: f16)
    try w.add(name: "bf", dtype: .BF16, shape: [3, 2], bytes: bf16)
    try values.withUnsafeBufferPointer { try w.add(name: "full", shape: [6], floats: $0) }
    try w.add(name: "ids", indices: IndexTensor(shape: [2, 2], values: [3, 0, -1, 7]))
    let file = try SafeTensorsFile(bytes: try w.serialized())

    let half = try file.tensor("half")
    #expect(half.shape == [2, 3])
    #expect(half.toArray() == values.map { Float(Float16($0)) })
    let bf = try file.tensor("bf")
    #expect(bf.shape == [3, 2])
    #expect(bf.toArray() == values.map { Float(bitPattern: $0.bitPattern & 0xFFFF_0000) })
    #expect(try file.tensor("full").toArray() == values)
    #expect(try file.indices("ids") == IndexTensor(shape: [2, 2], values: [3, 0, -1, 7]))
    #expect(throws: SafeTensorsError.self) { try file.tensor("missing") }
    #expect(throws: SafeTensorsError.self) { try file.indices("full") }  // float data is not an index tensor
  }
}
