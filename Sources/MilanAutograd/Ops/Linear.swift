// Differentiable linear layer and batched matrix product.
import MilanTensor

/// y[..., out] = x[..., in]·weightᵀ + bias; weight: [out, in] (PyTorch layout).
public func linear(_ x: Variable, _ weight: Variable, _ bias: Variable? = nil) -> Variable {
  let inF = x.value.lastDim, outF = weight.shape[0]
  precondition(weight.shape == [outF, inF], "linear: weight \(weight.shape) for input \(x.shape)")
  if let bias { precondition(bias.shape == [outF], "linear: bias \(bias.shape), expected [\(outF)]") }
  let rows = x.value.rows
  let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outF])
  if let packed = weight.packedWeight {
    // Frozen weights packed once (a teacher's forward; the weight's own storage may hold the packed layout, so this is
    // the only way to use it): forwards only, without gradients.
    precondition(!Autograd.isGradEnabled, "linear: a weight packed for inference (\(weight.name)) used with gradients")
    Kernels.packedLinearForward(x: x.value.data, packed: packed, bias: bias?.value.data, y: y.data, rows: rows)
    return Variable(y)
  }
  Kernels.linearForward(x: x.value.data, weight: weight.value.data, bias: bias?.value.data, y: y.data, rows: rows,
                        inFeatures: inF, outFeatures: outF)
  let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
  return Autograd.result(y, inputs) { g in
    let dx = x.requiresGrad ? x.gradForWrite() : nil
    let dw = weight.requiresGrad ? weight.gradForWrite() : nil
    let db = (bias?.requiresGrad ?? false) ? bias!.gradForWrite() : nil
    Kernels.linearBackward(
      dy: g.data, x: x.value.data, weight: weight.value.data, dx: dx?.tensor.data, dWeight: dw?.tensor.data,
      dBias: db?.tensor.data, rows: rows, inFeatures: inF, outFeatures: outF,
      overwriteDx: !(dx?.accumulate ?? true), overwriteDWeight: !(dw?.accumulate ?? true),
      overwriteDBias: !(db?.accumulate ?? true))
  }
}

/// c[b] = a[b]·bm[b]; a: [B, M, K], bm: [B, K, N] → [B, M, N].
public func bmm(_ a: Variable, _ b: Variable) -> Variable {
  precondition(a.shape.count == 3 && b.shape.count == 3 && a.shape[0] == b.shape[0] && a.shape[2] == b.shape[1],
               "bmm: \(a.shape) · \(b.shape)")
  let batch = a.shape[0], m = a.shape[1], k = a.shape[2], n = b.shape[2]
  let c = Tensor(uninitialized: [batch, m, n])
  Kernels.bmmForward(.none, .none, a: a.value.data, b: b.value.data, c: c.data, batch: batch, m: m, n: n, k: k)
  return Autograd.result(c, [a, b]) { g in
    Kernels.bmmBackward(dc: g.data, a: a.value.data, b: b.value.data,
                        da: a.requiresGrad ? a.gradBuffer().data : nil,
                        db: b.requiresGrad ? b.gradBuffer().data : nil, batch: batch, m: m, n: n, k: k)
  }
}
