// Differentiable losses (scalar outputs) and reductions.
import MilanTensor

/// Mean over rows of Σ_c −targets·log_softmax(logits); logits, targets: [..., C].
public func softCrossEntropy(_ logits: Variable, targets: Tensor) -> Variable {
  precondition(targets.shape == logits.shape, "softCrossEntropy: targets \(targets.shape) vs logits \(logits.shape)")
  let c = logits.value.lastDim, rows = logits.value.rows
  let lp = Tensor(uninitialized: logits.shape)
  let loss = Kernels.softCrossEntropyForward(logits: logits.value.data, targets: targets.data, logProbs: lp.data,
                                             rows: rows, classes: c)
  return Autograd.result(Tensor(scalar: loss), [logits]) { g in
    Kernels.softCrossEntropyBackward(logProbs: lp.data, targets: targets.data, dLogits: logits.gradBuffer().data,
                                     rows: rows, classes: c, gradOutput: g.data[0])
  }
}

/// Mean cross-entropy with integer labels; logits [R, C], labels [R].
public func crossEntropy(_ logits: Variable, labels: [Int]) -> Variable {
  let c = logits.value.lastDim, rows = logits.value.rows
  let lp = Tensor(uninitialized: logits.shape)
  let loss = Kernels.crossEntropyForward(logits: logits.value.data, labels: labels, logProbs: lp.data, rows: rows,
                                         classes: c)
  return Autograd.result(Tensor(scalar: loss), [logits]) { g in
    Kernels.crossEntropyBackward(logProbs: lp.data, labels: labels, dLogits: logits.gradBuffer().data, rows: rows,
                                 classes: c, gradOutput: g.data[0])
  }
}

/// MILAN's feature loss: per token 2 − 2·cos(pred, target) over the last axis, averaged over all tokens, or
/// weighted by `weights` (one per token, e.g. the mask for a masked-only loss). No epsilon, as the reference.
public func cosineLoss(_ pred: Variable, target: Tensor, weights: Tensor? = nil) -> Variable {
  precondition(target.shape == pred.shape, "cosineLoss: target \(target.shape) vs pred \(pred.shape)")
  let d = pred.value.lastDim, rows = pred.value.rows
  if let weights { precondition(weights.count == rows, "cosineLoss: \(weights.count) weights for \(rows) tokens") }
  let saved = Tensor(uninitialized: [rows, 3])
  let loss = Kernels.cosineLossForward(pred: pred.value.data, target: target.data, weights: weights?.data,
                                       saved: saved.data, rows: rows, dim: d)
  return Autograd.result(Tensor(scalar: loss), [pred]) { g in
    Kernels.cosineLossBackward(pred: pred.value.data, target: target.data, weights: weights?.data, saved: saved.data,
                               dPred: pred.gradBuffer().data, rows: rows, dim: d, gradOutput: g.data[0])
  }
}

extension Variable {
  /// Sum over `axis` (removed from the shape).
  public func sum(axis: Int) -> Variable { reduce(axis: axis, scale: 1) }

  /// Mean over `axis` (removed from the shape).
  public func mean(axis: Int) -> Variable { reduce(axis: axis, scale: 1 / Float(shape[axis])) }

  /// Sum of all elements (scalar).
  public func sum() -> Variable { reshaped([1, count]).reduce(axis: 1, scale: 1).reshaped([]) }

  /// Mean of all elements (scalar).
  public func mean() -> Variable { reshaped([1, count]).reduce(axis: 1, scale: 1 / Float(count)).reshaped([]) }

  fileprivate func reduce(axis: Int, scale: Float) -> Variable {
    let x = self
    let split = AxisSplit(shape: shape, axis: axis)
    var outShape = shape
    outShape.remove(at: axis)
    let y = Tensor(uninitialized: outShape)
    Kernels.sumAxis(x: value.data, y: y.data, split: split, scale: scale)
    return Autograd.result(y, [x]) { g in
      Kernels.sumAxisBackward(dy: g.data, dx: x.gradBuffer().data, split: split, scale: scale)
    }
  }
}
