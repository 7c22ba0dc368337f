// Reverse-mode automatic differentiation over MilanTensor kernels.
//
// A `Variable` holds a value and, when it was produced by a differentiable op while gradients are enabled, the
// closure that propagates its gradient to its parents (micrograd/PyTorch style: the graph is the chain of
// references). `backward()` orders the graph topologically and runs the closures in reverse; each closure
// ACCUMULATES into its parents' `grad` through the kernels' backward functions, so gradients accumulate across
// several `backward()` calls until `zeroGrad()` (gradient accumulation). Inside `Autograd.noGrad { }` (frozen
// teachers, evaluation) no graph is recorded and no activations are kept.
import MilanTensor

public class Variable: CustomStringConvertible {
  public var value: Tensor
  /// Accumulated gradient (same shape as `value`), nil until a backward pass reaches this variable.
  public var grad: Tensor?
  public let requiresGrad: Bool
  public var name: String
  /// This variable's value packed for `linear` with frozen weights (`Module.packLinearWeightsForInference`; the
  /// value's own storage may hold the packed layout): `linear` then runs the packed product, forwards only. nil by
  /// default and again after `Module.load` writes plain values.
  public var packedWeight: PackedWeight?

  var parents: [Variable]
  var backwardFn: ((Tensor) -> Void)?

  public init(_ value: Tensor, requiresGrad: Bool = false, name: String = "") {
    self.value = value
    self.requiresGrad = requiresGrad
    self.name = name
    self.parents = []
  }

  init(result value: Tensor, parents: [Variable], backward: @escaping (Tensor) -> Void) {
    self.value = value
    self.requiresGrad = true
    self.name = ""
    self.parents = parents
    self.backwardFn = backward
  }

  public var shape: [Int] { value.shape }
  public var count: Int { value.count }
  public var isLeaf: Bool { backwardFn == nil }

  /// The gradient buffer, created zero-filled on first use. Backward closures accumulate into it.
  public func gradBuffer() -> Tensor {
    if let g = grad { return g }
    let g = Tensor(zeros: value.shape)
    grad = g
    return g
  }

  /// For a backward that writes this variable's whole gradient in one go: the buffer, and whether the kernel must
  /// accumulate into it (false on first use: the buffer is uninitialised and the kernel overwrites it, which saves
  /// the zero fill and a read of the gradient).
  public func gradForWrite() -> (tensor: Tensor, accumulate: Bool) {
    if let g = grad { return (g, true) }
    let g = Tensor(uninitialized: value.shape)
    grad = g
    return (g, false)
  }

  /// Adds alpha·g to the gradient. On first use the buffer is written, not zero-filled and then added to: the same
  /// bits (alpha·g + 0 = 0 + alpha·g), one pass fewer over the gradient.
  public func accumulateGrad(_ g: Tensor, alpha: Float = 1) {
    precondition(g.count == value.count, "accumulateGrad: gradient of \(g.count) elements for value \(value.shape)")
    let (d, accumulate) = gradForWrite()
    if accumulate {
      MilanTensor.Kernels.axpy(alpha, x: g.data, y: d.data, count: g.count)
    } else {
      MilanTensor.Kernels.affine(x: g.data, y: d.data, count: g.count, alpha: alpha)
    }
  }

  public func zeroGrad() { grad = nil }

  /// A leaf holding the same value, cut from the graph.
  public func detached() -> Variable { Variable(value, requiresGrad: false, name: name) }

  /// Back-propagates from this variable. `seed` is dL/dself (default: ones, i.e. L = sum(self)). The graph is freed
  /// afterwards unless `retainGraph`; gradients of intermediate results are dropped, those of leaves kept.
  /// `leafReady` is called for each leaf that requires gradients as soon as its gradient is final (every node that
  /// uses it has run), while the walk goes on: a data-parallel run starts reducing those gradients then.
  public func backward(seed: Tensor? = nil, retainGraph: Bool = false, leafReady: ((Variable) -> Void)? = nil) {
    precondition(requiresGrad, "backward() on a variable that does not require gradients")
    let s = seed ?? Tensor(shape: value.shape, repeating: 1)
    precondition(s.count == value.count, "backward: seed shape \(s.shape) for value \(value.shape)")
    if grad == nil && !isLeaf {
      grad = s.reshaped(value.shape)  // read-only from here on: closures never write their own output's gradient
    } else {
      MilanTensor.Kernels.axpy(1, x: s.data, y: gradBuffer().data, count: s.count)
    }

    // Iterative post-order DFS → topological order.
    var order: [Variable] = []
    var visited = Set<ObjectIdentifier>()
    var stack: [(Variable, Bool)] = [(self, false)]
    while let (v, expanded) = stack.popLast() {
      if expanded {
        order.append(v)
        continue
      }
      if !visited.insert(ObjectIdentifier(v)).inserted { continue }
      stack.append((v, true))
      for p in v.parents where p.requiresGrad && !visited.contains(ObjectIdentifier(p)) { stack.append((p, false)) }
    }
    // Walk in reverse topological order. Without retainGraph each node lets go of its closure, its parents and its
    // gradient once it has run, and the walk drops its own reference too, so activations and intermediate gradients
    // are freed progressively during the backward pass (as PyTorch frees saved tensors), not all at the end.
    var pending: [Variable?] = order
    order.removeAll()
    for i in stride(from: pending.count - 1, through: 0, by: -1) {
      guard let v = pending[i] else { continue }
      if !retainGraph { pending[i] = nil }
      // Topological order puts a leaf before all its consumers, so in this reverse walk every consumer has run.
      if v.backwardFn == nil, let leafReady { leafReady(v) }
      guard let fn = v.backwardFn, let gv = v.grad else { continue }
      fn(gv)
      if !retainGraph {
        v.backwardFn = nil
        v.parents = []
        if v !== self { v.grad = nil }
      }
    }
  }

  public var description: String {
    "Variable(\(name.isEmpty ? "" : name + ", ")\(value.shape)\(requiresGrad ? ", requiresGrad" : ""))"
  }
}

/// A named trainable leaf. `name` is the PyTorch state_dict key (`blocks.0.attn.qkv.weight`).
/// Fixed tables that are part of a state_dict but never trained (MAE's sin-cos `pos_embed`) are Parameters with
/// `trainable: false`.
public final class Parameter: Variable {
  public init(_ value: Tensor, name: String, trainable: Bool = true) {
    super.init(value, requiresGrad: trainable, name: name)
  }
}

public enum Autograd {
  @TaskLocal static var gradEnabled: Bool = true

  public static var isGradEnabled: Bool { gradEnabled }

  /// Runs `body` without recording a graph (frozen teachers, evaluation).
  public static func noGrad<R>(_ body: () throws -> R) rethrows -> R {
    try $gradEnabled.withValue(false) { try body() }
  }

  /// True when an op over `inputs` must record its backward.
  static func needsGrad(_ inputs: [Variable]) -> Bool {
    gradEnabled && inputs.contains { $0.requiresGrad }
  }

  /// Wraps an op's output: records `backward` only when some input requires gradients and recording is on.
  static func result(_ value: Tensor, _ inputs: [Variable], _ backward: @escaping (Tensor) -> Void) -> Variable {
    if needsGrad(inputs) { return Variable(result: value, parents: inputs, backward: backward) }
    return Variable(value)
  }
}
