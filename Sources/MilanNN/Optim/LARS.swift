// LARS as MAE/MILAN's linear probing uses it (util/lars.py, from MoCo v3): for parameters with more than one
// dimension, d = g + wd·p is scaled by trust·‖p‖/‖d‖ (1 when either norm is 0); 1-D parameters (the head bias) take
// plain momentum SGD. mu ← momentum·mu + d; p ← p − lr·mu.
import MilanAutograd
import MilanTensor

public final class LARS {
  public var parameters: [(String, Parameter)]
  public var lr: Float
  public let momentum: Float, weightDecay: Float, trustCoefficient: Float
  public private(set) var buffers: [String: Tensor] = [:]

  public init(parameters: [(String, Parameter)], lr: Float, momentum: Float = 0.9, weightDecay: Float = 0,
              trustCoefficient: Float = 0.001) {
    self.parameters = parameters
    self.lr = lr
    self.momentum = momentum
    self.weightDecay = weightDecay
    self.trustCoefficient = trustCoefficient
  }

  public func step() {
    for (key, p) in parameters {
      guard let g = p.grad else { continue }
      let n = p.count
      var d = [Float](repeating: 0, count: n)
      for i in 0..<n { d[i] = g.data[i] }
      if p.shape.count > 1 {
        for i in 0..<n { d[i] += weightDecay * p.value.data[i] }
        var pn: Float = 0, dn: Float = 0
        for i in 0..<n { pn += p.value.data[i] * p.value.data[i]; dn += d[i] * d[i] }
        pn = pn.squareRoot()
        dn = dn.squareRoot()
        let q: Float = pn > 0 && dn > 0 ? trustCoefficient * pn / dn : 1
        for i in 0..<n { d[i] *= q }
      }
      let mu = buffers[key] ?? Tensor(zeros: p.shape)
      buffers[key] = mu
      for i in 0..<n {
        mu.data[i] = momentum * mu.data[i] + d[i]
        p.value.data[i] -= lr * mu.data[i]
      }
    }
  }

  public func zeroGrad() { for (_, p) in parameters { p.zeroGrad() } }
}
