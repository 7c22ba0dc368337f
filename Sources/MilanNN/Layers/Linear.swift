// nn.Linear: weight [out, in], bias [out].
import MilanAutograd
import MilanTensor

public final class Linear: Module {
  public let weight: Parameter
  public let bias: Parameter?

  public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
    weight = Parameter(Tensor(zeros: [outFeatures, inFeatures]), name: "weight")
    self.bias = bias ? Parameter(Tensor(zeros: [outFeatures]), name: "bias") : nil
  }

  public var parameters: [(String, Parameter)] {
    [("weight", weight)] + (bias.map { [("bias", $0)] } ?? [])
  }

  public var inFeatures: Int { weight.shape[1] }
  public var outFeatures: Int { weight.shape[0] }

  // x: [..., in] → [..., out]
  public func callAsFunction(_ x: Variable) -> Variable { linear(x, weight, bias) }
}
