// Modules: trees of named parameters, addressed by their PyTorch state_dict keys.
//
// Each module lists its own parameters and its children with the key the reference implementation uses
// (`("qkv", qkv)`, `("blocks.3", block)`), declared once next to the Swift property. The tree walk joins keys with
// dots, so `namedParameters()` yields exactly the reference state_dict keys and a checkpoint round-trips to PyTorch.
import MilanAutograd
import MilanTensor

public protocol Module: AnyObject {
  /// This module's own parameters (and fixed buffers), with their local keys.
  var parameters: [(String, Parameter)] { get }
  /// Child modules with their local keys (a list element's key is its index: "blocks.0" is child "0" of "blocks",
  /// or directly "blocks.0").
  var children: [(String, any Module)] { get }
}

extension Module {
  public var parameters: [(String, Parameter)] { [] }
  public var children: [(String, any Module)] { [] }

  /// Every parameter in the tree with its full key, depth first, in declaration order.
  public func namedParameters(prefix: String = "") -> [(String, Parameter)] {
    var out: [(String, Parameter)] = []
    for (k, p) in parameters { out.append((prefix + k, p)) }
    for (k, c) in children { out += c.namedParameters(prefix: prefix + k + ".") }
    return out
  }

  /// Trainable parameters only (fixed buffers such as MAE's sin-cos position tables excluded).
  public func trainableParameters() -> [(String, Parameter)] {
    namedParameters().filter { $0.1.requiresGrad }
  }

  public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.1.count } }

  public func zeroGrad() { for (_, p) in namedParameters() { p.zeroGrad() } }

  /// Copies tensors into the parameters by key. With `strict`, every parameter must be present with its exact shape
  /// and no other key may appear; otherwise missing keys are left as they are (unexpected keys are still reported
  /// unless `ignoreUnexpected`). All problems are collected and thrown together.
  public func load(_ tensors: [String: Tensor], strict: Bool = true, ignoreUnexpected: Bool = false) throws {
    let params = namedParameters()
    var missing: [String] = [], mismatched: [String] = []
    var known = Set<String>()
    for (key, p) in params {
      known.insert(key)
      guard let t = tensors[key] else {
        missing.append(key)
        continue
      }
      if t.shape != p.value.shape {
        mismatched.append("\(key): file \(t.shape), model \(p.value.shape)")
      }
    }
    let unexpected = ignoreUnexpected ? [] : tensors.keys.filter { !known.contains($0) }.sorted()
    if (strict && !missing.isEmpty) || !mismatched.isEmpty || !unexpected.isEmpty {
      throw LoadError(missing: strict ? missing : [], unexpected: unexpected, mismatched: mismatched)
    }
    for (key, p) in params {
      if let t = tensors[key] {
        p.value.assign(t)
        p.packedWeight = nil  // packed from the old values
      }
    }
  }

  /// Packs the weight of every `Linear` in the tree, and `extra` weights used by `linear` directly, for forwards
  /// without gradients (`PackedWeight`): for modules whose weights no longer change, such as a teacher. A weight of
  /// 32k outputs is packed in its own storage (no extra memory; its `value` then holds the packed layout, which only
  /// `linear` reads, until `load` writes plain values again); others get a packed copy. Weights already packed are
  /// kept; on a CPU without AVX-512 nothing is packed (BLAS is faster there).
  public func packLinearWeightsForInference(extra: [Parameter] = []) {
    guard PackedWeight.fast else { return }
    PackedWeight.packingLock.lock()
    defer { PackedWeight.packingLock.unlock() }
    func pack(_ p: Parameter) {
      guard p.packedWeight == nil, p.value.rank == 2 else { return }
      p.packedWeight = PackedWeight.packing(p.value)
    }
    func walk(_ m: any Module) {
      if let l = m as? Linear { pack(l.weight) }
      for (_, c) in m.children { walk(c) }
    }
    walk(self)
    extra.forEach(pack)
  }

  /// `load` for tensors read from `file`: a mismatch names the file.
  public func load(_ tensors: [String: Tensor], file: String, strict: Bool = true) throws {
    do { try load(tensors, strict: strict) } catch var e as LoadError {
      e.file = file
      throw e
    }
  }

  /// The parameters as (key, tensor) pairs, in declaration order.
  public func stateDict() -> [(String, Tensor)] { namedParameters().map { ($0.0, $0.1.value) } }
}

/// Strict-loading failure: every missing, unexpected and mis-shaped key at once.
public struct LoadError: Error, CustomStringConvertible, Equatable {
  public var missing: [String]
  public var unexpected: [String]
  public var mismatched: [String]
  /// The weights file, when the caller knows it (named first in the message).
  public var file: String?

  public init(missing: [String], unexpected: [String], mismatched: [String], file: String? = nil) {
    self.missing = missing
    self.unexpected = unexpected
    self.mismatched = mismatched
    self.file = file
  }

  public var description: String {
    var parts: [String] = []
    func list(_ xs: [String]) -> String {
      xs.count <= 12 ? xs.joined(separator: ", ") : xs.prefix(12).joined(separator: ", ") + ", … (\(xs.count) in all)"
    }
    if !missing.isEmpty { parts.append("missing \(missing.count): \(list(missing))") }
    if !unexpected.isEmpty { parts.append("unexpected \(unexpected.count): \(list(unexpected))") }
    if !mismatched.isEmpty { parts.append("wrong shape \(mismatched.count): \(list(mismatched))") }
    return (file.map { "\($0): " } ?? "") + "weights do not match the model — " + parts.joined(separator: "; ")
  }
}

/// A list of modules keyed "0", "1", ... (PyTorch `nn.ModuleList` / `nn.Sequential`).
public final class ModuleList<M: Module>: Module {
  public let items: [M]
  public init(_ items: [M]) { self.items = items }
  public var children: [(String, any Module)] { items.enumerated().map { (String($0.offset), $0.element) } }
  public subscript(i: Int) -> M { items[i] }
  public var count: Int { items.count }
}
