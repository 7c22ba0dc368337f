// Differentiable LayerNorm, softmax and log-softmax over the last axis.
import MilanTensor

/// LayerNorm over the last axis (weight/bias [D] optional).
public func layerNorm(_ x: Variable, weight: Variable?, bias: Variable?, eps: Float) -> Variable {
  let d = x.value.lastDim, rows = x.value.rows
  if let weight { precondition(weight.shape == [d], "layerNorm: weight \(weight.shape) for input \(x.shape)") }
  if let bias { precondition(bias.shape == [d], "layerNorm: bias \(bias.shape) for input \(x.shape)") }
  let y = Tensor(uninitialized: x.shape)
  let stats = Tensor(uninitialized: [2, rows])
  Kernels.layerNormForward(x: x.value.data, weight: weight?.value.data, bias: bias?.value.data, y: y.data,
                           mean: stats.data, rstd: stats.data + rows, rows: rows, d: d, eps: eps)
  var inputs = [x]
  if let weight { inputs.append(weight) }
  if let bias { inputs.append(bias) }
  return Autograd.result(y, inputs) { g in
    let dx = x.requiresGrad ? x.gradForWrite() : nil
    Kernels.layerNormBackward(
      dy: g.data, x: x.value.data, weight: weight?.value.data, mean: stats.data, rstd: stats.data + rows,
      dx: dx?.tensor.data,
      dWeight: (weight?.requiresGrad ?? false) ? weight!.gradBuffer().data : nil,
      dBias: (bias?.requiresGrad ?? false) ? bias!.gradBuffer().data : nil, rows: rows, d: d,
      accumulate: dx?.accumulate ?? true)
  }
}

extension Variable {
  /// Softmax over the last axis.
  public func softmax() -> Variable {
    let x = self, n = value.lastDim, rows = value.rows
    let y = Tensor(uninitialized: shape)
    Kernels.softmaxForward(x: value.data, y: y.data, rows: rows, n: n)
    return Autograd.result(y, [x]) { g in
      let (dx, acc) = x.gradForWrite()
      Kernels.softmaxBackward(y: y.data, dy: g.data, dx: dx.data, rows: rows, n: n, accumulate: acc)
    }
  }

  /// Log-softmax over the last axis.
  public func logSoftmax() -> Variable {
    let x = self, n = value.lastDim, rows = value.rows
    let y = Tensor(uninitialized: shape)
    Kernels.logSoftmaxForward(x: value.data, y: y.data, rows: rows, n: n)
    return Autograd.result(y, [x]) { g in
      let (dx, acc) = x.gradForWrite()
      Kernels.logSoftmaxBackward(y: y.data, dy: g.data, dx: dx.data, rows: rows, n: n, accumulate: acc)
    }
  }
}
