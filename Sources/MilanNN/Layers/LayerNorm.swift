// nn.LayerNorm over the last axis: weight [D], bias [D].
import MilanAutograd
import MilanTensor

public final class LayerNorm: Module {
  public let weight: Parameter?
  public let bias: Parameter?
  public let eps: Float

  public init(_ dim: Int, eps: Float, affine: Bool = true) {
    self.eps = eps
    weight = affine ? Parameter(Tensor(shape: [dim], repeating: 1), name: "weight") : nil
    bias = affine ? Parameter(Tensor(zeros: [dim]), name: "bias") : nil
  }

  public var parameters: [(String, Parameter)] {
    var p: [(String, Parameter)] = []
    if let weight { p.append(("weight", weight)) }
    if let bias { p.append(("bias", bias)) }
    return p
  }

  public func callAsFunction(_ x: Variable) -> Variable { layerNorm(x, weight: weight, bias: bias, eps: eps) }
}
