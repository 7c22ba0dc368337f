// BatchNorm1d without affine parameters (MAE/MILAN's linear-probe head): per feature over the batch,
// y = (x − μ) / √(σ² + ε) with the biased batch variance in training, or the running statistics in evaluation.
// Training updates running_mean ← (1 − m)·running_mean + m·μ and running_var ← (1 − m)·running_var + m·σ²·N/(N − 1)
// (the unbiased variance, as torch.nn.BatchNorm1d). Backward (training): dx = (g − mean(g) − x̂·mean(g·x̂)) / √(σ² + ε).
import MilanTensor

public func batchNorm(_ x: Variable, runningMean: Tensor, runningVar: Tensor, training: Bool, momentum: Float = 0.1,
                      eps: Float = 1e-6) -> Variable {
  precondition(x.shape.count == 2 && runningMean.count == x.shape[1] && runningVar.count == x.shape[1],
               "batchNorm: x must be [N, C] with C running statistics, got \(x.shape)")
  let n = x.shape[0], c = x.shape[1]
  let y = Tensor(uninitialized: x.shape)
  var invStd = [Float](repeating: 0, count: c)
  for j in 0..<c {
    var mean: Double, variance: Double
    if training {
      precondition(n > 1, "batchNorm: training needs more than one sample per batch")
      var s = 0.0
      for i in 0..<n { s += Double(x.value.data[i * c + j]) }
      mean = s / Double(n)
      var v = 0.0
      for i in 0..<n { let d = Double(x.value.data[i * c + j]) - mean; v += d * d }
      variance = v / Double(n)
      runningMean.data[j] = (1 - momentum) * runningMean.data[j] + momentum * Float(mean)
      runningVar.data[j] = (1 - momentum) * runningVar.data[j] + momentum * Float(variance * Double(n) / Double(n - 1))
    } else {
      mean = Double(runningMean.data[j])
      variance = Double(runningVar.data[j])
    }
    let inv = 1 / (variance + Double(eps)).squareRoot()
    invStd[j] = Float(inv)
    for i in 0..<n { y.data[i * c + j] = Float((Double(x.value.data[i * c + j]) - mean) * inv) }
  }
  return Autograd.result(y, [x]) { g in
    let dx = x.gradBuffer()
    for j in 0..<c {
      if !training {
        for i in 0..<n { dx.data[i * c + j] += g.data[i * c + j] * invStd[j] }
        continue
      }
      var sg = 0.0, sgy = 0.0
      for i in 0..<n {
        sg += Double(g.data[i * c + j])
        sgy += Double(g.data[i * c + j]) * Double(y.data[i * c + j])
      }
      let mg = sg / Double(n), mgy = sgy / Double(n)
      for i in 0..<n {
        let v = (Double(g.data[i * c + j]) - mg - Double(y.data[i * c + j]) * mgy) * Double(invStd[j])
        dx.data[i * c + j] += Float(v)
      }
    }
  }
}
