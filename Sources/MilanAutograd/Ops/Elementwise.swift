// Differentiable elementwise arithmetic with suffix broadcasting of the right operand (bias [D] or position table
// [1, L, D] over [B, L, D]), scaling, activations and shape views.
import MilanTensor

extension Variable {
  fileprivate func binary(_ op: Kernels.BinaryOp, _ other: Variable) -> Variable {
    let a = self, b = other
    precondition(b.count > 0 && a.count % b.count == 0 && Variable.isSuffixBroadcast(b.shape, of: a.shape),
                 "elementwise: cannot broadcast \(b.shape) onto \(a.shape)")
    let y = Tensor(uninitialized: a.shape)
    Kernels.binaryForward(op, a: a.value.data, b: b.value.data, bCount: b.count, y: y.data, count: a.count)
    return Autograd.result(y, [a, b]) { g in
      Kernels.binaryBackward(op, dy: g.data, a: a.value.data, b: b.value.data, bCount: b.count,
                             da: a.requiresGrad ? a.gradBuffer().data : nil,
                             db: b.requiresGrad ? b.gradBuffer().data : nil, count: a.count)
    }
  }

  /// b broadcasts onto a when, after dropping b's leading 1s, b's shape is a suffix of a's.
  static func isSuffixBroadcast(_ b: [Int], of a: [Int]) -> Bool {
    var bs = b[...]
    while let f = bs.first, f == 1, bs.count > 0 { bs = bs.dropFirst() }
    return bs.count <= a.count && Array(a.suffix(bs.count)) == Array(bs)
  }

  public static func + (a: Variable, b: Variable) -> Variable { a.binary(.add, b) }
  public static func - (a: Variable, b: Variable) -> Variable { a.binary(.sub, b) }
  public static func * (a: Variable, b: Variable) -> Variable { a.binary(.mul, b) }

  /// alpha·self + beta.
  public func affine(_ alpha: Float, _ beta: Float = 0) -> Variable {
    let x = self
    let y = Tensor(uninitialized: shape)
    Kernels.affine(x: value.data, y: y.data, count: count, alpha: alpha, beta: beta)
    return Autograd.result(y, [x]) { g in x.accumulateGrad(g, alpha: alpha) }
  }

  public func activation(_ kind: Activation) -> Variable {
    let x = self
    let y = Tensor(uninitialized: shape)
    Kernels.activationForward(kind, x: value.data, y: y.data, count: count)
    return Autograd.result(y, [x]) { g in
      let (dx, acc) = x.gradForWrite()
      Kernels.activationBackward(kind, x: x.value.data, dy: g.data, dx: dx.data, count: g.count, accumulate: acc)
    }
  }

  public func gelu() -> Variable { activation(.gelu) }

  /// A view with a new shape (one axis may be -1); the gradient flows back reshaped.
  public func reshaped(_ newShape: [Int]) -> Variable {
    let x = self
    let y = value.reshaped(newShape)
    return Autograd.result(y, [x]) { g in x.accumulateGrad(g) }
  }
}

extension Variable {
  /// y[b, ...] = scale[b]·x[b, ...] for a per-sample scale [B] (drop path / stochastic depth).
  public func scaledPerSample(_ scale: [Float]) -> Variable {
    let x = self, b = shape[0]
    precondition(scale.count == b, "scaledPerSample: \(scale.count) scales for batch \(b)")
    let inner = count / max(b, 1)
    let y = Tensor(uninitialized: shape)
    for i in 0..<b { Kernels.affine(x: value.data + i * inner, y: y.data + i * inner, count: inner, alpha: scale[i]) }
    return Autograd.result(y, [x]) { g in
      let d = x.gradBuffer()
      for i in 0..<b { Kernels.axpy(scale[i], x: g.data + i * inner, y: d.data + i * inner, count: inner) }
    }
  }
}

/// The residual connection x + branch(x), computed in place in `branch`'s buffer: a transformer block's branch output
/// (a linear layer's output, possibly scaled) is needed by nothing but this sum, so reusing its storage keeps one
/// activation per residual fewer alive for the backward pass. `branch` must not be used anywhere else afterwards
/// (its value now holds the sum); both inputs receive the incoming gradient.
public func residualAdd(_ x: Variable, _ branch: Variable) -> Variable {
  precondition(x.shape == branch.shape, "residualAdd: \(x.shape) vs \(branch.shape)")
  precondition(!(branch is Parameter), "residualAdd: the branch must be a computed result, not a parameter")
  let y = branch.value
  Kernels.axpy(1, x: x.value.data, y: y.data, count: y.count)
  return Autograd.result(y, [x, branch]) { g in
    if x.requiresGrad { x.accumulateGrad(g) }
    if branch.requiresGrad { branch.accumulateGrad(g) }
  }
}
