// `milan step`: one training step of a checkpoint on a given batch, every intermediate written out. The batch file
// holds `images` [B, 3, H, W] and the masking noise (`exp_noise` [B, L] for semantic-aware sampling, or
// `uniform_noise` [B, L] for random masking), and optionally the teacher's outputs `target` [B, 1 + L, C] and
// `importance` [B, L]; without them the teacher is run on the images. Output: `loss`, `pred`, `latent`, the masking
// (`ids_shuffle`, `ids_restore`, `ids_keep`, `ids_dump`, `mask`), `target`, `importance`, `grad.<key>` for every
// trainable parameter, and, when an AdamW learning rate is given, `updated.<key>` after one AdamW step from zero
// moments (betas 0.9/0.95, eps 1e-8, MAE's weight-decay groups), optionally after gradient clipping.
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanNN
import MilanTensor

public enum SingleStepError: Error, CustomStringConvertible {
  case missingInput(String)
  case shape(String)
  case noTeacher

  public var description: String {
    switch self {
    case .missingInput(let m): return "step: \(m)"
    case .shape(let m): return "step: \(m)"
    case .noTeacher: return "step: the batch has no `target`/`importance`, so a teacher is needed (--teacher)"
    }
  }
}

public struct SingleStepOptions: Sendable {
  public var maskRatio: Double = 0.75
  public var maskedLossOnly = false
  public var adamwLR: Float? = nil
  public var weightDecay: Float = 0.05
  public var gradClip: Float? = nil
  public init() {}
}

public enum SingleStep {
  /// The MILANConfig stored in a checkpoint written by `Checkpoint.save` (metadata `milan.config`).
  public static func config(of file: SafeTensorsFile) throws -> MILANConfig {
    guard let json = file.metadata["milan.config"] else {
      throw SingleStepError.missingInput("the model file has no `milan.config` metadata (not written by milan pretrain); "
        + "pass the configuration with --config")
    }
    return try JSONDecoder().decode(MILANConfig.self, from: Data(json.utf8))
  }

  public static func run(model: MILANModel, batch: SafeTensorsFile, teacher: (any Teacher)?,
                         options o: SingleStepOptions = SingleStepOptions()) throws -> StepResult {
    func has(_ k: String) -> Bool { (try? batch.info(k)) != nil }
    guard has("images") else { throw SingleStepError.missingInput("the batch file has no `images` tensor") }
    let images = try batch.tensor("images")
    let enc = model.config.encoder
    guard images.shape == [images.shape[0], 3, enc.imageSize, enc.imageSize] else {
      throw SingleStepError.shape("images are \(images.shape); the model expects [B, 3, \(enc.imageSize), \(enc.imageSize)]")
    }
    let b = images.shape[0], l = enc.numPatches
    let target: Tensor, importance: Tensor
    if has("target") && has("importance") {
      target = try batch.tensor("target")
      importance = try batch.tensor("importance")
    } else {
      guard let teacher else { throw SingleStepError.noTeacher }
      let t = Autograd.noGrad { teacher.encode(images) }
      target = t.features
      importance = t.clsAttention
    }
    guard target.shape == [b, 1 + l, model.config.predictionDim], importance.shape == [b, l] else {
      throw SingleStepError.shape("teacher outputs \(target.shape) / \(importance.shape); expected [\(b), \(1 + l), "
        + "\(model.config.predictionDim)] / [\(b), \(l)]")
    }
    let m: MaskingResult
    if has("exp_noise") {
      let noise = try batch.tensor("exp_noise")
      guard noise.shape == [b, l] else { throw SingleStepError.shape("exp_noise is \(noise.shape), expected [\(b), \(l)]") }
      m = Masking.semanticAware(importance: importance, expNoise: noise, maskRatio: o.maskRatio)
    } else if has("uniform_noise") {
      let noise = try batch.tensor("uniform_noise")
      guard noise.shape == [b, l] else { throw SingleStepError.shape("uniform_noise is \(noise.shape), expected [\(b), \(l)]") }
      m = Masking.random(noise: noise, maskRatio: o.maskRatio)
    } else {
      throw SingleStepError.missingInput("the batch file needs `exp_noise` (semantic-aware) or `uniform_noise` (random)")
    }
    model.zeroGrad()
    var rng = SplitMix64(seed: 0)
    let latent = model.forwardEncoder(Variable(images), masking: m, training: false, rng: &rng)
    let pred = model.kdPred.map { $0(latent) } ?? model.forwardDecoder(latent, masking: m, rng: &rng)
    let loss = model.featureLoss(pred, teacher: target, masking: m, maskedOnly: o.maskedLossOnly)
    loss.backward()
    var out: [(String, Tensor)] = [
      ("loss", loss.value), ("pred", pred.value), ("latent", latent.value), ("target", target),
      ("importance", importance), ("mask", Tensor(shape: [b, l], values: m.mask)),
    ]
    let trainable = model.trainableParameters()
    for (k, p) in trainable { out.append(("grad." + k, (p.grad ?? Tensor(zeros: p.shape)).copy())) }
    if let lr = o.adamwLR {
      if let clip = o.gradClip {
        out.append(("grad_norm", Tensor(scalar: clipGradNorm(trainable.map(\.1), maxNorm: clip))))
      }
      let opt = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: o.weightDecay),
                      lr: lr, beta1: 0.9, beta2: 0.95)
      opt.step()
      for (k, p) in trainable { out.append(("updated." + k, p.value.copy())) }
    }
    return StepResult(tensors: out, indices: [("ids_shuffle", m.idsShuffle), ("ids_restore", m.idsRestore),
                                              ("ids_keep", m.idsKeep), ("ids_dump", m.idsDump)])
  }
}

public struct StepResult {
  public var tensors: [(String, Tensor)]
  public var indices: [(String, IndexTensor)]

  public func tensor(_ name: String) -> Tensor? { tensors.first { $0.0 == name }?.1 }

  /// Writes every result to `output` (atomically: temp file, then rename).
  public func write(to output: URL) throws {
    var w = SafeTensorsWriter(metadata: ["format": "pt", "generator": "milan step"])
    for (k, t) in tensors { try w.add(name: k, tensor: t) }
    for (k, i) in indices { try w.add(name: k, indices: i) }
    try w.write(to: output)
  }
}
