// nn.BatchNorm1d(C, affine=False): no parameters, two buffers (state-dict keys running_mean, running_var; PyTorch
// also stores num_batches_tracked, which we write as a count for compatibility but never use).
import MilanAutograd
import MilanTensor

public final class BatchNorm1d: Module {
  public let runningMean: Tensor
  public let runningVar: Tensor
  public let eps: Float, momentum: Float
  public var training = true

  public init(_ features: Int, eps: Float = 1e-6, momentum: Float = 0.1) {
    runningMean = Tensor(zeros: [features])
    runningVar = Tensor(shape: [features], values: [Float](repeating: 1, count: features))
    self.eps = eps
    self.momentum = momentum
  }

  // x: [N, C] → [N, C]
  public func callAsFunction(_ x: Variable) -> Variable {
    batchNorm(x, runningMean: runningMean, runningVar: runningVar, training: training, momentum: momentum, eps: eps)
  }
}
