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

  /// Every float tensor whose name starts with `prefix`, keyed by the name without it.
  public func tensors(prefix: String = "") throws -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for t in tensors where t.name.hasPrefix(prefix) { out[String(t.name.dropFirst(prefix.count))] = try tensor(t.name) }
    return out
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
