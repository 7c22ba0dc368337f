// Bridges safetensors files and MilanTensor: any float dtype (F32/F16/BF16/F64) reads into a float32 Tensor, any
// integer dtype into an IndexTensor.
import MilanTensor

extension SafeTensorsFile {
  public func tensor(_ name: String) throws -> Tensor {
    let info = try self.info(name)
    let t = Tensor(uninitialized: info.shape)
    try readFloats(name, into: t.buffer)
    return t
  }

  public func indices(_ name: String) throws -> IndexTensor {
    let info = try self.info(name)
    return IndexTensor(shape: info.shape, values: try int64s(name).map { Int($0) })
  }
}

extension SafeTensorsWriter {
  public mutating func add(name: String, tensor: Tensor) throws {
    try add(name: name, shape: tensor.shape, floats: UnsafeBufferPointer(tensor.buffer))
  }

  public mutating func add(name: String, indices: IndexTensor) throws {
    try add(name: name, shape: indices.shape, int64s: indices.values.map { Int64($0) })
  }
}
