// `milan step`: one training step of a checkpoint on a given batch, every intermediate written out. The batch file
// holds `images` [B, 3, H, W] and the masking noise (`exp_noise` [B, L] for semantic-aware sampling, or
// `uniform_noise` [B, L] for random masking), and optionally the teacher's outputs `target` [B, 1 + L, C] and
// `importance` [B, L]; without them the teacher is run on `teacher_images` [B, 3, S, S] or, without those, on the
// images resized to the teacher's input size S (the pixel target with random masking needs no teacher). The objective is the model's own (MILANModel.loss: target, decoder, loss tokens). Output: `loss`,
// `pred`, `latent`, the masking (`ids_shuffle`, `ids_restore`, `ids_keep`, `ids_dump`, `mask`), `target` and
// `importance` when a teacher was involved, `grad.<key>` for every trainable parameter, and, when an AdamW learning
// rate is given, `updated.<key>` after one AdamW step (betas 0.9/0.95, eps 1e-8, MAE's weight-decay groups) from
// zero moments or from given ones (`exp_avg.<key>`, `exp_avg_sq.<key>` are written too), optionally after gradient
// clipping.
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
  public var adamwLR: Float? = nil
  public var weightDecay: Float = 0.05
  public var gradClip: Float? = nil
  /// AdamW moments to continue from (`<key>.exp_avg`, `<key>.exp_avg_sq` and the `step` metadata, as
  /// optimizer.safetensors holds them); nil: zero moments.
  public var optimizerState: URL? = nil
  /// The teacher's input size (nil: the student's token grid × the teacher's patch). Without `teacher_images` in
  /// the batch, `images` are resized to it (PyTorch bicubic, as F.interpolate) when it differs from theirs.
  public var teacherImageSize: Int? = nil
  public init() {}
}

public enum SingleStep {
  /// The MILANConfig stored in a checkpoint written by `Checkpoint.save` (metadata `milan.config`).
  public static func config(of file: SafeTensorsFile) throws -> MILANConfig {
    guard let json = file.metadata["milan.config"] else {
      throw SingleStepError.missingInput("the model file has no `milan.config` metadata (not written by milan pretrain); "
        + "pass the configuration with --config")
    }
    do {
      let c = try JSONDecoder().decode(MILANConfig.self, from: Data(json.utf8))
      do { try c.validate() } catch { throw SingleStepError.missingInput("the model file's `milan.config` metadata: \(error)") }
      return c
    } catch let e as DecodingError {
      throw SingleStepError.missingInput("the model file's `milan.config` metadata: \(describe(e, data: Data(json.utf8)))")
    }
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
    let cfg = model.config
    let needsImportance = has("exp_noise")
    let needsTarget = cfg.target == .features
    var target: Tensor? = nil, importance: Tensor? = nil
    if (needsTarget || needsImportance) {
      if has("target") && has("importance") {
        target = try batch.tensor("target")
        importance = try batch.tensor("importance")
      } else {
        guard let teacher else { throw SingleStepError.noTeacher }
        let size = o.teacherImageSize ?? enc.gridSize * teacher.patchSize
        let input: Tensor
        if has("teacher_images") {
          input = try batch.tensor("teacher_images")
          guard input.shape == [b, 3, size, size] else {
            throw SingleStepError.shape("teacher_images are \(input.shape); the teacher expects [\(b), 3, \(size), \(size)]")
          }
        } else {
          input = size == enc.imageSize ? images : Self.resized(images, to: size)
        }
        let t = Autograd.noGrad { teacher.encode(input) }
        target = t.features
        importance = t.clsAttention
      }
      guard importance!.shape == [b, l], !needsTarget || target!.shape == [b, 1 + l, cfg.predictionDim] else {
        throw SingleStepError.shape("teacher outputs \(target!.shape) / \(importance!.shape); expected [\(b), \(1 + l), "
          + "\(cfg.predictionDim)] / [\(b), \(l)]")
      }
    }
    let m: MaskingResult
    if has("exp_noise") {
      let noise = try batch.tensor("exp_noise")
      guard noise.shape == [b, l] else { throw SingleStepError.shape("exp_noise is \(noise.shape), expected [\(b), \(l)]") }
      m = try Masking.semanticAware(importance: importance!, expNoise: noise, maskRatio: o.maskRatio)
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
    let loss = try model.loss(pred, images: images, teacher: needsTarget ? target : nil, masking: m)
    loss.backward()
    var out: [(String, Tensor)] = [
      ("loss", loss.value), ("pred", pred.value), ("latent", latent.value), ("mask", Tensor(shape: [b, l], values: m.mask)),
    ]
    if let target { out.append(("target", target)) }
    if let importance { out.append(("importance", importance)) }
    let trainable = model.trainableParameters()
    for (k, p) in trainable { out.append(("grad." + k, (p.grad ?? Tensor(zeros: p.shape)).copy())) }
    if let lr = o.adamwLR {
      if let clip = o.gradClip {
        out.append(("grad_norm", Tensor(scalar: clipGradNorm(trainable.map(\.1), maxNorm: clip))))
      }
      let opt = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: o.weightDecay),
                      lr: lr, beta1: 0.9, beta2: 0.95)
      if let url = o.optimizerState { try Checkpoint.loadOptimizer(opt, parameters: trainable, from: url) }
      opt.step()
      for (k, p) in trainable { out.append(("updated." + k, p.value.copy())) }
      for (k, st) in opt.state.sorted(by: { $0.key < $1.key }) {
        out.append(("exp_avg." + k, st.expAvg.copy()))
        out.append(("exp_avg_sq." + k, st.expAvgSq.copy()))
      }
    }
    return StepResult(tensors: out, indices: [("ids_shuffle", m.idsShuffle), ("ids_restore", m.idsRestore),
                                              ("ids_keep", m.idsKeep), ("ids_dump", m.idsDump)])
  }
}

extension SingleStep {
  /// Each image plane [B, C, H, W] resized to size × size (PyTorch bicubic, align_corners False, no antialias).
  static func resized(_ images: Tensor, to size: Int) -> Tensor {
    let b = images.shape[0], c = images.shape[1], h = images.shape[2], w = images.shape[3]
    let out = Tensor(uninitialized: [b, c, size, size])
    for p in 0..<(b * c) {
      Kernels.resizeTokenGrid(images.data + p * h * w, dim: 1, inH: h, inW: w, outH: size, outW: size,
                              antialias: false, into: out.data + p * size * size)
    }
    return out
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
