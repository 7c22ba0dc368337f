// Checkpoints: `model.safetensors` (the reference MILAN state-dict keys), `optimizer.safetensors`
// (`<key>.exp_avg`, `<key>.exp_avg_sq`) and `state.json` (epoch, step, RNG, config). The three are written under
// temporary names and renamed only once all are on disk, so a failed or interrupted save never leaves a broken or
// mixed checkpoint behind.
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanNN
import MilanTensor

/// A checkpoint whose files do not belong together.
public struct CheckpointError: Error, CustomStringConvertible {
  public let message: String
  public init(message: String) { self.message = message }
  public var description: String { message }
}

public enum Checkpoint {
  /// Writes `model.safetensors`, `optimizer.safetensors` and `state.json` as one unit: all three are written and
  /// fsync'ed under temporary names first and only then renamed (state.json last), so a full disk or another
  /// write error leaves the previous checkpoint complete and consistent. Both tensor files carry the step
  /// (`milan.step`), which `load` checks against state.json.
  public static func save(model: MILANModel, optimizer: AdamW, state: TrainState, to dir: URL) throws {
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let sorted = JSONEncoder()
    sorted.outputFormatting = [.sortedKeys]  // deterministic bytes: equal runs give equal files
    let configJSON = String(decoding: try sorted.encode(state.config.model), as: UTF8.self)
    var w = SafeTensorsWriter(metadata: ["format": "pt", "milan.config": configJSON, "milan.step": String(state.step)])
    for (k, p) in model.namedParameters() { try w.add(name: k, tensor: p.value) }
    let o = try optimizerWriter(optimizer, metadata: ["milan.step": String(state.step)])
    let stateJSON = try PretrainConfig.jsonEncoder().encode(state)
    try StagedFile.commitAll([
      { try o.stage(at: dir.appendingPathComponent("optimizer.safetensors")) },
      { try w.stage(at: dir.appendingPathComponent("model.safetensors")) },
      { try StagedFile.stage(stateJSON, at: dir.appendingPathComponent("state.json")) },
    ])
  }

  /// Loads weights, optimizer moments and the training state saved by `save`.
  public static func load(into model: MILANModel, optimizer: AdamW, from dir: URL) throws -> TrainState {
    // A save a crash interrupted is finished (or its leftovers removed) first.
    for line in try StagedFile.recover(in: dir) { FileHandle.standardError.write(Data("checkpoint: \(line)\n".utf8)) }
    let state = try TrainState.read(dir)
    let mf = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors"))
    let of = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("optimizer.safetensors"))
    // Files written by `save` name their step; older checkpoints (without it) are not checked.
    let steps = [("model.safetensors", mf.metadata["milan.step"]), ("optimizer.safetensors", of.metadata["milan.step"])]
    let mismatched = steps.filter { $0.1 != nil && $0.1 != String(state.step) }
    guard mismatched.isEmpty else {
      throw CheckpointError(message: "checkpoint \(dir.path) is inconsistent: state.json is at step \(state.step) but "
        + mismatched.map { "\($0.0) at step \($0.1!)" }.joined(separator: " and ")
        + " (were its files copied from different runs or moments?)")
    }
    var weights: [String: Tensor] = [:]
    for t in mf.tensors { weights[t.name] = try mf.tensor(t.name) }
    try model.load(weights, file: dir.appendingPathComponent("model.safetensors").path)
    var moments: [String: (expAvg: Tensor, expAvgSq: Tensor)] = [:]
    for (k, p) in model.trainableParameters() {
      guard (try? of.info(k + ".exp_avg")) != nil else { continue }
      let m = try of.tensor(k + ".exp_avg"), v = try of.tensor(k + ".exp_avg_sq")
      guard m.shape == p.shape, v.shape == p.shape else {
        throw LoadError(missing: [], unexpected: [], mismatched: ["\(k) optimizer state \(m.shape) vs \(p.shape)"],
                        file: dir.appendingPathComponent("optimizer.safetensors").path)
      }
      moments[k] = (m, v)
    }
    optimizer.restore(state: moments, stepCount: Int(of.metadata["step"] ?? "") ?? state.step)
    return state
  }

  /// AdamW moments (`<key>.exp_avg`, `<key>.exp_avg_sq`) and the step count, atomically.
  public static func saveOptimizer(_ optimizer: AdamW, to url: URL) throws {
    try optimizerWriter(optimizer).write(to: url)
  }

  /// The safetensors image of the AdamW moments (`step` metadata: the optimizer's step count).
  public static func optimizerWriter(_ optimizer: AdamW, metadata: [String: String] = [:]) throws -> SafeTensorsWriter {
    var o = SafeTensorsWriter(metadata: metadata.merging(["format": "pt", "step": String(optimizer.stepCount)]) { a, _ in a })
    for (k, s) in optimizer.state.sorted(by: { $0.key < $1.key }) {
      try o.add(name: k + ".exp_avg", tensor: s.expAvg)
      try o.add(name: k + ".exp_avg_sq", tensor: s.expAvgSq)
    }
    return o
  }

  /// Restores what `saveOptimizer` wrote; every moment must match its parameter's shape.
  public static func loadOptimizer(_ optimizer: AdamW, parameters: [(String, Parameter)], from url: URL) throws {
    let of = try SafeTensorsFile(contentsOf: url)
    var moments: [String: (expAvg: Tensor, expAvgSq: Tensor)] = [:]
    var bad: [String] = []
    for (k, p) in parameters {
      guard (try? of.info(k + ".exp_avg")) != nil else { continue }
      let m = try of.tensor(k + ".exp_avg"), v = try of.tensor(k + ".exp_avg_sq")
      if m.shape != p.shape || v.shape != p.shape { bad.append("\(k) optimizer state \(m.shape) vs \(p.shape)") }
      moments[k] = (m, v)
    }
    guard bad.isEmpty else { throw LoadError(missing: [], unexpected: [], mismatched: bad) }
    optimizer.restore(state: moments, stepCount: Int(of.metadata["step"] ?? "") ?? 0)
  }
}
