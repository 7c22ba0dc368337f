// torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=2): the L2 norm of all gradients together; when it
// exceeds max_norm every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm before clipping.
import MilanAutograd

@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Float) -> Float {
  precondition(maxNorm > 0, "clipGradNorm: max_norm must be positive, got \(maxNorm)")
  var sq = 0.0
  for p in parameters {
    guard let g = p.grad else { continue }
    var s = 0.0
    for i in 0..<g.count { s += Double(g.data[i]) * Double(g.data[i]) }
    sq += s
  }
  let total = Float(sq.squareRoot())
  let coef = maxNorm / (total + 1e-6)
  if coef < 1 {
    for p in parameters {
      guard let g = p.grad else { continue }
      for i in 0..<g.count { g.data[i] *= coef }
    }
  }
  return total
}
