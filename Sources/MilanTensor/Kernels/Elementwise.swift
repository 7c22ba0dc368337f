// Elementwise maps (memory-bound; plain loops that LLVM vectorises) with suffix broadcasting of the second operand:
// b may have the shape of a trailing part of a (a bias [D] on [B, L, D], a position table [1, L, D] on [B, L, D]),
// i.e. b.count divides a.count and b repeats.
extension Kernels {
  public enum BinaryOp: Sendable { case add, sub, mul }

  /// y = a ∘ b with b repeating every `bCount` elements (bCount == n for same-shape operands).
  public static func binaryForward(_ op: BinaryOp, a: UnsafePointer<Float>, b: UnsafePointer<Float>, bCount: Int,
                                   y: UnsafeMutablePointer<Float>, count n: Int) {
    precondition(bCount > 0 && n % bCount == 0, "broadcast: \(bCount) does not divide \(n)")
    nonisolated(unsafe) let a = a, b = b, y = y
    let reps = n / bCount
    Parallel.forEachChunk(reps, minChunk: max(1, elementwiseChunk / bCount)) { r in
      for rep in r {
        let ao = a + rep * bCount, yo = y + rep * bCount
        switch op {
        case .add: for i in 0..<bCount { yo[i] = ao[i] + b[i] }
        case .sub: for i in 0..<bCount { yo[i] = ao[i] - b[i] }
        case .mul: for i in 0..<bCount { yo[i] = ao[i] * b[i] }
        }
      }
    }
  }

  /// Backward of `binaryForward`: da += ∂/∂a, db += Σ_repeats ∂/∂b (each optional).
  public static func binaryBackward(_ op: BinaryOp, dy: UnsafePointer<Float>, a: UnsafePointer<Float>,
                                    b: UnsafePointer<Float>, bCount: Int, da: UnsafeMutablePointer<Float>?,
                                    db: UnsafeMutablePointer<Float>?, count n: Int) {
    let reps = n / bCount
    nonisolated(unsafe) let dy = dy, a = a, b = b, da = da
    if let da {
      Parallel.forEachChunk(reps, minChunk: max(1, elementwiseChunk / bCount)) { r in
        for rep in r {
          let g = dy + rep * bCount, d = da + rep * bCount
          switch op {
          case .add, .sub: for i in 0..<bCount { d[i] += g[i] }
          case .mul: for i in 0..<bCount { d[i] += g[i] * b[i] }
          }
        }
      }
    }
    guard let db else { return }
    switch op {
    case .add: columnSumAccumulate(dy, into: db, rows: reps, cols: bCount)
    case .sub:
      let t = Tensor(zeros: [bCount])
      columnSumAccumulate(dy, into: t.data, rows: reps, cols: bCount)
      for i in 0..<bCount { db[i] -= t.data[i] }
    case .mul:
      let prod = Tensor(uninitialized: [n])
      let p = prod.data
      for i in 0..<n { p[i] = dy[i] * a[i] }
      columnSumAccumulate(p, into: db, rows: reps, cols: bCount)
    }
  }

  /// y = alpha·x + beta (y may equal x).
  public static func affine(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count n: Int, alpha: Float,
                            beta: Float = 0) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(n, minChunk: elementwiseChunk) { r in
      for i in r { y[i] = alpha * x[i] + beta }
    }
  }

  /// y += alpha·x.
  public static func axpy(_ alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, count n: Int) {
    nonisolated(unsafe) let x = x, y = y
    Parallel.forEachChunk(n, minChunk: elementwiseChunk) { r in
      for i in r { y[i] += alpha * x[i] }
    }
  }
}
