// Float32, row-major, contiguous tensors with shapes and views.
//
// `Tensor` is a value holding a reference to its storage, like `torch.Tensor`: copies of a Tensor share elements,
// and writing through `data` is visible to every view. Views (`reshaped`, `slice`) share storage; everything that
// would need strides (`transposed`, `permuted`) makes a contiguous copy.

public struct Tensor: @unchecked Sendable, CustomStringConvertible {
  public let storage: TensorStorage
  /// Element offset of this view inside `storage`.
  public let offset: Int
  public let shape: [Int]
  public let count: Int

  /// Uninitialised tensor (contents undefined). Use for outputs that a kernel fully overwrites.
  public init(uninitialized shape: [Int]) {
    let n = Tensor.elementCount(shape)
    self.storage = TensorStorage.allocate(count: n, zeroed: false)
    self.offset = 0
    self.shape = shape
    self.count = n
  }

  public init(zeros shape: [Int]) {
    let n = Tensor.elementCount(shape)
    self.storage = TensorStorage.allocate(count: n, zeroed: true)
    self.offset = 0
    self.shape = shape
    self.count = n
  }

  public init(shape: [Int], repeating value: Float) {
    self.init(uninitialized: shape)
    data.update(repeating: value, count: count)
  }

  public init(shape: [Int], values: [Float]) {
    precondition(Tensor.elementCount(shape) == values.count,
                 "Tensor: shape \(shape) needs \(Tensor.elementCount(shape)) values, got \(values.count)")
    self.init(uninitialized: shape)
    values.withUnsafeBufferPointer { if let p = $0.baseAddress, count > 0 { data.update(from: p, count: count) } }
  }

  public init(scalar: Float) { self.init(shape: [], values: [scalar]) }

  init(storage: TensorStorage, offset: Int, shape: [Int]) {
    self.storage = storage
    self.offset = offset
    self.shape = shape
    self.count = Tensor.elementCount(shape)
    precondition(offset + count <= storage.capacity, "Tensor view out of bounds")
  }

  public static func elementCount(_ shape: [Int]) -> Int {
    var n = 1
    for d in shape {
      precondition(d >= 0, "Tensor: negative dimension in shape \(shape)")
      n *= d
    }
    return n
  }

  public var rank: Int { shape.count }
  public var data: UnsafeMutablePointer<Float> { storage.pointer + offset }
  public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

  /// Size of the last axis (1 for scalars).
  public var lastDim: Int { shape.last ?? 1 }
  /// Product of all axes but the last.
  public var rows: Int { lastDim == 0 ? 0 : count / lastDim }

  /// A view with another shape over the same elements. One axis may be -1.
  public func reshaped(_ newShape: [Int]) -> Tensor {
    var s = newShape
    if let i = s.firstIndex(of: -1) {
      let rest = s.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
      precondition(rest > 0 && count % rest == 0, "reshape: cannot infer -1 in \(newShape) for \(shape)")
      s[i] = count / rest
    }
    precondition(Tensor.elementCount(s) == count, "reshape: \(shape) (\(count) elements) to \(s)")
    return Tensor(storage: storage, offset: offset, shape: s)
  }

  /// A view of `range` along the first axis.
  public func slice(_ range: Range<Int>) -> Tensor {
    precondition(rank >= 1 && range.lowerBound >= 0 && range.upperBound <= shape[0], "slice \(range) of \(shape)")
    let inner = count / max(shape[0], 1)
    var s = shape
    s[0] = range.count
    return Tensor(storage: storage, offset: offset + range.lowerBound * inner, shape: s)
  }

  /// A contiguous copy in fresh storage.
  public func copy() -> Tensor {
    let t = Tensor(uninitialized: shape)
    t.data.update(from: data, count: count)
    return t
  }

  /// Tensors of equal trailing shape stacked along their first axis (e.g. q, k and v weights into one in_proj).
  public init(stackingRows parts: [Tensor]) {
    precondition(!parts.isEmpty && parts.allSatisfy { $0.shape.dropFirst() == parts[0].shape.dropFirst() },
                 "stackingRows: trailing shapes differ")
    var shape = parts[0].shape
    shape[0] = parts.reduce(0) { $0 + $1.shape[0] }
    self.init(uninitialized: shape)
    var o = 0
    for t in parts {
      (data + o).update(from: t.data, count: t.count)
      o += t.count
    }
  }

  public func toArray() -> [Float] { Array(buffer) }

  public func fill(_ v: Float) { data.update(repeating: v, count: count) }
  public func zero() { data.update(repeating: 0, count: count) }

  /// Copies the elements of `other` (same element count) into this tensor.
  public func assign(_ other: Tensor) {
    precondition(other.count == count, "assign: \(other.shape) into \(shape)")
    data.update(from: other.data, count: count)
  }

  /// Element at a multi-index (slow; for tests and printing).
  public subscript(_ index: Int...) -> Float {
    get { data[flatIndex(index)] }
    nonmutating set { data[flatIndex(index)] = newValue }
  }

  func flatIndex(_ index: [Int]) -> Int {
    precondition(index.count == rank, "index \(index) for shape \(shape)")
    var f = 0
    for (i, d) in zip(index, shape) {
      precondition(i >= 0 && i < d, "index \(index) out of range for shape \(shape)")
      f = f * d + i
    }
    return f
  }

  /// A contiguous copy with axes permuted (`out.shape[i] = shape[perm[i]]`).
  public func permuted(_ perm: [Int]) -> Tensor {
    precondition(perm.sorted() == Array(0..<rank), "permute: \(perm) for rank \(rank)")
    let outShape = perm.map { shape[$0] }
    let out = Tensor(uninitialized: outShape)
    var inStrides = [Int](repeating: 1, count: rank)
    for i in stride(from: rank - 2, through: 0, by: -1) { inStrides[i] = inStrides[i + 1] * shape[i + 1] }
    let strides = perm.map { inStrides[$0] }
    var idx = [Int](repeating: 0, count: rank)
    let src = data, dst = out.data
    for o in 0..<count {
      var off = 0
      for i in 0..<rank { off += idx[i] * strides[i] }
      dst[o] = src[off]
      var a = rank - 1
      while a >= 0 {
        idx[a] += 1
        if idx[a] < outShape[a] { break }
        idx[a] = 0
        a -= 1
      }
    }
    return out
  }

  /// Swaps two axes (copy).
  public func transposed(_ a: Int, _ b: Int) -> Tensor {
    var p = Array(0..<rank)
    p.swapAt(a, b)
    return permuted(p)
  }

  public var description: String {
    let n = min(count, 8)
    let head = (0..<n).map { String(format: "%.5g", Double(data[$0])) }.joined(separator: ", ")
    return "Tensor(shape: \(shape), [\(head)\(count > n ? ", ..." : "")])"
  }
}

/// Integer index tensor (token ids, labels): row-major `Int` values.
public struct IndexTensor: Sendable, Equatable {
  public var shape: [Int]
  public var values: [Int]

  public init(shape: [Int], values: [Int]) {
    precondition(Tensor.elementCount(shape) == values.count, "IndexTensor: shape \(shape) vs \(values.count) values")
    self.shape = shape
    self.values = values
  }
}

import Foundation
