// torch.optim.AdamW (decoupled weight decay), step for step as PyTorch computes it:
//   p ← p·(1 − lr·wd);  m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²;
//   p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)
// Parameter groups follow timm 0.3.2 `add_weight_decay` as MAE/MILAN use it: no decay for 1-D tensors and names
// ending in ".bias", decay for everything else (including cls_token and mask_token); frozen tables are left out.
import CMilanKernels
import MilanAutograd
import MilanTensor

public struct ParamGroup {
  public var parameters: [(String, Parameter)]
  public var weightDecay: Float
  /// Multiplier on the optimizer's learning rate (layer-wise decay for finetuning).
  public var lrScale: Float = 1

  public init(parameters: [(String, Parameter)], weightDecay: Float, lrScale: Float = 1) {
    self.parameters = parameters
    self.weightDecay = weightDecay
    self.lrScale = lrScale
  }

  /// timm `add_weight_decay(model, weightDecay)`: [decay group, no-decay group].
  public static func weightDecayGroups(_ named: [(String, Parameter)], weightDecay: Float) -> [ParamGroup] {
    let trainable = named.filter { $0.1.requiresGrad }
    let noDecay = trainable.filter { $0.1.shape.count <= 1 || $0.0.hasSuffix(".bias") }
    let decay = trainable.filter { !($0.1.shape.count <= 1 || $0.0.hasSuffix(".bias")) }
    return [ParamGroup(parameters: decay, weightDecay: weightDecay), ParamGroup(parameters: noDecay, weightDecay: 0)]
  }
}

public final class AdamW {
  public var groups: [ParamGroup]
  public var lr: Float
  public let beta1: Float, beta2: Float, eps: Float
  /// Steps taken (PyTorch keeps one per parameter; they advance together here).
  public private(set) var stepCount: Int = 0
  /// First and second moments by parameter key (PyTorch's `exp_avg`, `exp_avg_sq`).
  public private(set) var state: [String: (expAvg: Tensor, expAvgSq: Tensor)] = [:]

  public init(groups: [ParamGroup], lr: Float, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
    self.groups = groups
    self.lr = lr
    self.beta1 = beta1
    self.beta2 = beta2
    self.eps = eps
  }

  /// Restores moments and the step count (checkpoint resume).
  public func restore(state: [String: (expAvg: Tensor, expAvgSq: Tensor)], stepCount: Int) {
    self.state = state
    self.stepCount = stepCount
  }

  /// One update of every parameter that has a gradient.
  public func step() {
    stepCount += 1
    let t = Float(stepCount)
    let bc1 = 1 - Float.pow(beta1, t)
    let bc2Sqrt = (1 - Float.pow(beta2, t)).squareRoot()
    for g in groups {
      let lrG = lr * g.lrScale
      let stepSize = lrG / bc1
      let decay = 1 - lrG * g.weightDecay
      for (key, p) in g.parameters {
        guard let grad = p.grad else { continue }
        let s = state[key] ?? (Tensor(zeros: p.shape), Tensor(zeros: p.shape))
        state[key] = s
        nonisolated(unsafe) let w = p.value.data, gr = grad.data, m = s.expAvg.data, v = s.expAvgSq.data
        let b1 = beta1, b2 = beta2, eps = eps
        Parallel.forEachChunk(p.count, minChunk: 1 << 15) { r in
          milan_adamw_step(w + r.lowerBound, gr + r.lowerBound, m + r.lowerBound, v + r.lowerBound, r.count, decay,
                           b1, b2, stepSize, bc2Sqrt, eps)
        }
      }
    }
  }

  public func zeroGrad() { for g in groups { for (_, p) in g.parameters { p.zeroGrad() } } }
}

/// MAE util/lr_sched.py: linear warmup, then half-cycle cosine to `minLR`, evaluated per iteration at the
/// fractional epoch `epoch`.
public func maeLearningRate(epoch: Double, baseLR: Double, minLR: Double = 0, warmupEpochs: Double,
                            epochs: Double) -> Double {
  if epoch < warmupEpochs { return baseLR * epoch / warmupEpochs }
  let progress = (epoch - warmupEpochs) / max(epochs - warmupEpochs, 1e-12)
  return minLR + (baseLR - minLR) * 0.5 * (1 + Double.cos(Double.pi * progress))
}

import RealModule
