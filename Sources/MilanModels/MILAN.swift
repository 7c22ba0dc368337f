// Mirrors zejiangh/MILAN models_milan.py MaskedAutoencoderViT (with --use_clip --change_decoder --attn_mask), and
// MAE's decoder and pixel loss for the ablation (reference-milan.md §1–5, §12). State-dict keys are the reference's:
// the encoder's timm keys at top level (cls_token, pos_embed, patch_embed, blocks, norm), then mask_token,
// decoder_embed, decoder_pos_embed, decoder_blocks.{j}, decoder_norm, decoder_pred.
import MilanAutograd
import MilanNN
import MilanTensor

public struct MILANConfig: Codable, Sendable, Equatable {
  /// prompting: MILAN's decoder; mae: MAE's self-attention decoder (ablation); kd: no decoder — a linear head
  /// `kd_pred` maps the encoder's own tokens (class + visible) to the teacher's features (the paper's KD row).
  public enum Decoder: String, Codable, Sendable, CaseIterable { case prompting, mae, kd }
  /// What the student reconstructs: the teacher's per-token features (MILAN) or the image's pixels (MAE).
  public enum Target: String, Codable, Sendable, CaseIterable { case features, pixels }
  /// Which tokens the loss averages over (the reference's three options): `all` = class token and every patch (the
  /// released code's feature loss), `patches` = every patch without the class token, `masked` = the masked patches
  /// only (the paper's wording; MAE's pixel loss). kd predicts the class token and the visible patches only, so
  /// `all` means those and `patches` the visible ones.
  public enum LossTokens: String, Codable, Sendable, CaseIterable { case all, patches, masked }

  public var encoder: ViTConfig
  public var decoderDim: Int
  public var decoderDepth: Int
  public var decoderHeads: Int
  public var decoderMlpRatio: Double = 4
  public var decoder: Decoder = .prompting
  public var target: Target = .features
  /// Pixel target only: each patch normalised by its own mean and variance (MAE's norm_pix_loss, the reference's
  /// PRETRAIN.sh).
  public var normPixLoss: Bool = true
  /// Default: `all` for the feature target, `masked` for pixels.
  public var lossTokens: LossTokens
  /// Width of decoder_pred / kd_pred: the teacher's feature size for the feature target, patch·patch·channels for
  /// pixels. 0 in a configuration file means "follow the teacher (or the patch size)"; `resolved` fills it in.
  public var predictionDim: Int

  public init(encoder: ViTConfig, decoderDim: Int = 512, decoderDepth: Int = 8, decoderHeads: Int = 16,
              decoderMlpRatio: Double = 4, decoder: Decoder = .prompting, target: Target = .features,
              normPixLoss: Bool = true, lossTokens: LossTokens? = nil, predictionDim: Int = 0) {
    self.encoder = encoder
    self.decoderDim = decoderDim
    self.decoderDepth = decoderDepth
    self.decoderHeads = decoderHeads
    self.decoderMlpRatio = decoderMlpRatio
    self.decoder = decoder
    self.target = target
    self.normPixLoss = normPixLoss
    self.lossTokens = lossTokens ?? (target == .pixels ? .masked : .all)
    self.predictionDim = predictionDim
  }

  enum CodingKeys: String, CodingKey {
    case encoder, decoderDim, decoderDepth, decoderHeads, decoderMlpRatio, decoder, target, normPixLoss, lossTokens,
         predictionDim
  }

  /// Every field but the encoder may be left out of a configuration file: decoder 512 × 8 with 16 heads (the
  /// reference's), prompting decoder, feature target, norm_pix_loss, the loss tokens of the target, and a prediction
  /// size that follows the teacher. The encoder may be a timm model name (`"vit_base_patch16_224"`).
  public init(from d: any Swift.Decoder) throws {
    let c = try d.container(keyedBy: CodingKeys.self)
    self.init(encoder: try c.decode(ViTConfig.self, forKey: .encoder),
              decoderDim: try c.decodeIfPresent(Int.self, forKey: .decoderDim) ?? 512,
              decoderDepth: try c.decodeIfPresent(Int.self, forKey: .decoderDepth) ?? 8,
              decoderHeads: try c.decodeIfPresent(Int.self, forKey: .decoderHeads) ?? 16,
              decoderMlpRatio: try c.decodeIfPresent(Double.self, forKey: .decoderMlpRatio) ?? 4,
              decoder: try c.decodeIfPresent(Decoder.self, forKey: .decoder) ?? .prompting,
              target: try c.decodeIfPresent(Target.self, forKey: .target) ?? .features,
              normPixLoss: try c.decodeIfPresent(Bool.self, forKey: .normPixLoss) ?? true,
              lossTokens: try c.decodeIfPresent(LossTokens.self, forKey: .lossTokens),
              predictionDim: try c.decodeIfPresent(Int.self, forKey: .predictionDim) ?? 0)
  }

  /// Prediction width of the pixel target: patch · patch · channels.
  public var pixelDim: Int { encoder.patchSize * encoder.patchSize * encoder.inChannels }

  /// This configuration with `predictionDim` set: the pixel size for the pixel target, `teacherFeatures` for the
  /// feature target (nil: no teacher known, e.g. a weights file's own configuration). Refuses an explicit size that
  /// disagrees.
  public func resolved(teacherFeatures: Int?) throws -> MILANConfig {
    var c = self
    let want: Int? = target == .pixels ? pixelDim : teacherFeatures
    if let want {
      if c.predictionDim == 0 { c.predictionDim = want }
      guard c.predictionDim == want else {
        throw MILANConfigError(target == .pixels
          ? "model.predictionDim is \(c.predictionDim) but the pixel target of \(encoder.patchSize)×\(encoder.patchSize) "
            + "patches has \(want) values"
          : "model.predictionDim is \(c.predictionDim) but the teacher's features have \(want) channels "
            + "(leave predictionDim out to follow the teacher)")
      }
    }
    guard c.predictionDim > 0 else {
      throw MILANConfigError("model.predictionDim is not set and no teacher gives it")
    }
    try c.validate()
    return c
  }

  /// Combinations the objective cannot train, each named by its field.
  public func validate() throws {
    func bad(_ m: String) -> MILANConfigError { MILANConfigError(m) }
    switch (decoder, target, lossTokens) {
    case (.kd, .pixels, _):
      throw bad("model.decoder kd regresses the teacher's features; it has no pixel target (use decoder mae or prompting)")
    case (.kd, _, .masked):
      throw bad("model.lossTokens masked: the kd objective predicts only the class token and the visible patches "
        + "(use all or patches)")
    case (_, .pixels, .all):
      throw bad("model.lossTokens all: the pixel target has no class token (use masked, MAE's, or patches)")
    default: break
    }
    do { try encoder.validate(field: "model.encoder") } catch let e as ViTConfigError { throw bad(e.message) }
    guard encoder.inChannels == 3 else {
      throw bad("model.encoder.inChannels must be 3: images are read as RGB (got \(encoder.inChannels))")
    }
    guard encoder.numClasses == 0, encoder.globalPool == .token else {
      throw bad("model.encoder: MILAN's encoder has no classification head and pools the class token (numClasses 0, "
        + "globalPool token; got \(encoder.numClasses), \(encoder.globalPool.rawValue)); finetuning adds the head")
    }
    guard predictionDim >= 0, predictionDim <= ViTConfig.maxSize * 64 else { throw bad("model.predictionDim must be in 0...\(ViTConfig.maxSize * 64) (got \(predictionDim))") }
    if decoder != .kd {
      guard decoderDim > 0, decoderDepth > 0, decoderHeads > 0, decoderDim % decoderHeads == 0,
            decoderDim <= ViTConfig.maxSize, decoderDepth <= ViTConfig.maxDepth else {
        throw bad("model.decoderDim \(decoderDim) must be positive, at most \(ViTConfig.maxSize) and a multiple of "
          + "decoderHeads \(decoderHeads) (depth \(decoderDepth) in 1...\(ViTConfig.maxDepth))")
      }
      guard decoderDim % 4 == 0 else {
        throw bad("model.decoderDim: the decoder's sin-cos position table needs a width divisible by 4 (got \(decoderDim))")
      }
      guard decoderMlpRatio.isFinite, decoderMlpRatio > 0, Double(decoderDim) * decoderMlpRatio >= 1,
            Double(decoderDim) * decoderMlpRatio < Double(1 << 31) else {
        throw bad("model.decoderMlpRatio \(decoderMlpRatio) must be positive and give an MLP width of at least 1")
      }
    }
  }
}

extension MILANConfig {
  /// A student by name (`ViTConfig.named`) with its decoder: MILAN's 512 × 8 (16 heads) for the timm sizes, 96 × 2
  /// (4 heads) for the demo model. The prediction size follows the teacher.
  public static func preset(_ name: String) -> MILANConfig? {
    guard let enc = ViTConfig.named(name) else { return nil }
    if name == ViTConfig.demoName {
      return MILANConfig(encoder: enc, decoderDim: 96, decoderDepth: 2, decoderHeads: 4)
    }
    return MILANConfig(encoder: enc)
  }
}

/// A MILAN model configuration that cannot be trained, with the field that says so.
public struct MILANConfigError: Error, CustomStringConvertible {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

public final class MILANModel: Module {
  public let config: MILANConfig
  public let encoder: VisionTransformer
  // Decoder parts (nil for the kd objective).
  public let maskToken: Parameter!        // [1, 1, d]
  public let decoderEmbed: Linear!
  public let decoderPosEmbed: Parameter!  // [1, 1 + L, d], fixed sin-cos
  public let promptingBlocks: ModuleList<PromptingBlock>?
  public let maeBlocks: ModuleList<Block>?
  public let decoderNorm: LayerNorm!
  public let decoderPred: Linear!
  /// KD head (kd objective only): Linear(D, predictionDim), key `kd_pred`.
  public let kdPred: Linear?

  /// `c` must be resolved (`MILANConfig.resolved`): its prediction size known.
  public init(_ c: MILANConfig, seed: UInt64 = 0) {
    precondition(c.encoder.numClasses == 0 && c.encoder.globalPool == .token,
                 "MILAN's encoder has no head and keeps the final norm")
    precondition(c.predictionDim > 0, "MILANModel: resolve the configuration's predictionDim first")
    config = c
    encoder = VisionTransformer(c.encoder, seed: seed)
    let d = c.decoderDim, l = c.encoder.numPatches
    if c.decoder == .kd {
      maskToken = nil
      decoderEmbed = nil
      decoderPosEmbed = nil
      promptingBlocks = nil
      maeBlocks = nil
      decoderNorm = nil
      decoderPred = nil
      kdPred = Linear(c.encoder.embedDim, c.predictionDim)
      initializeDecoder(seed: seed &+ 1)
      return
    }
    kdPred = nil
    maskToken = Parameter(Tensor(zeros: [1, 1, d]), name: "mask_token")
    decoderEmbed = Linear(c.encoder.embedDim, d)
    decoderPosEmbed = Parameter(Tensor(zeros: [1, 1 + l, d]), name: "decoder_pos_embed", trainable: false)
    let hidden = Int(Double(d) * c.decoderMlpRatio)
    switch c.decoder {
    case .prompting:
      promptingBlocks = ModuleList((0..<c.decoderDepth).map { _ in PromptingBlock(dim: d, heads: c.decoderHeads, mlpHidden: hidden) })
      maeBlocks = nil
    case .mae:
      maeBlocks = ModuleList((0..<c.decoderDepth).map { _ in
        Block(dim: d, numHeads: c.decoderHeads, mlpHidden: hidden, qkvBias: true, eps: 1e-6)
      })
      promptingBlocks = nil
    case .kd:
      preconditionFailure("handled above")
    }
    decoderNorm = LayerNorm(d, eps: 1e-6)
    decoderPred = Linear(d, c.predictionDim)
    initializeDecoder(seed: seed &+ 1)
  }

  public var parameters: [(String, Parameter)] {
    guard config.decoder != .kd else { return encoder.parameters }
    return encoder.parameters + [("mask_token", maskToken), ("decoder_pos_embed", decoderPosEmbed)]
  }

  public var children: [(String, any Module)] {
    var c = encoder.children
    if let kdPred { return c + [("kd_pred", kdPred)] }
    c.append(("decoder_embed", decoderEmbed))
    if let promptingBlocks { c.append(("decoder_blocks", promptingBlocks)) }
    if let maeBlocks { c.append(("decoder_blocks", maeBlocks)) }
    c += [("decoder_norm", decoderNorm), ("decoder_pred", decoderPred)]
    return c
  }

  /// MAE initialize_weights for the decoder part: sin-cos decoder_pos_embed, normal(0.02) mask token,
  /// xavier_uniform Linear weights, zero biases.
  func initializeDecoder(seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    if let kdPred {
      Init.xavierUniform(kdPred.weight.value, fanIn: kdPred.inFeatures, fanOut: kdPred.outFeatures, rng: &rng)
      return
    }
    let g = config.encoder.gridSize
    decoderPosEmbed.value.assign(Init.sinCos2D(dim: config.decoderDim, gridH: g, gridW: g, classToken: true))
    for i in 0..<maskToken.count { maskToken.value.data[i] = 0.02 * rng.nextNormal() }
    var linears: [Linear] = [decoderEmbed, decoderPred]
    for b in promptingBlocks?.items ?? [] { linears += [b.attn.q, b.attn.kv, b.attn.proj, b.mlp.fc1, b.mlp.fc2] }
    for b in maeBlocks?.items ?? [] { linears += [b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2] }
    for l in linears { Init.xavierUniform(l.weight.value, fanIn: l.inFeatures, fanOut: l.outFeatures, rng: &rng) }
  }

  /// Encoder on the kept patches (VisionTransformer.forwardFeatures(keep:)): patch_embed + pos (before masking),
  /// gather ids_keep, prepend cls + pos[0], blocks, norm → [B, 1 + K, D] (visible tokens in ids_keep order).
  public func forwardEncoder(_ images: Variable, masking m: MaskingResult, training: Bool = true,
                             rng: inout SplitMix64, firstSample: Int = 0) -> Variable {
    encoder.forwardFeatures(images, keep: m.idsKeep, training: training, rng: &rng, firstSample: firstSample)
  }

  /// Decoder → predictions [B, 1 + L, P] for [cls, all L patches in spatial order] with the feature target, or
  /// [B, L, P] (patches only, the class token dropped) with the pixel target — for both decoders, as the reference's
  /// forward_decoder returns `x if use_clip else x[:, 1:]`.
  public func forwardDecoder(_ latent: Variable, masking m: MaskingResult, rng: inout SplitMix64) -> Variable {
    let k = m.lenKeep
    let l = config.encoder.numPatches
    let z = decoderEmbed(latent)                                          // [B, 1 + K, d]
    let dposPatches = sliceTokens(decoderPosEmbed, 1..<(1 + l))           // [1, L, d] (fixed), shared by the batch
    let zCls = sliceTokens(z, 0..<1) + sliceTokens(decoderPosEmbed, 0..<1)
    let zVisible = sliceTokens(z, 1..<(1 + k)) + gatherTokens(dposPatches, ids: m.idsKeep)
    let masked = gatherTokens(dposPatches, ids: m.idsDump) + maskToken    // [B, M, d]
    switch config.decoder {
    case .prompting:
      var x = masked
      for blk in promptingBlocks!.items { x = blk(x, zCls: zCls, zVisible: zVisible, idsRestore: m.idsRestore) }
      let full = assembleTokens(cls: zCls, visible: zVisible, masked: x, idsRestore: m.idsRestore)
      return dropClassForPixels(decoderPred(decoderNorm(full)))
    case .kd:
      preconditionFailure("the kd objective has no decoder; use predict(_:masking:rng:)")
    case .mae:
      var x = assembleTokens(cls: zCls, visible: zVisible, masked: masked, idsRestore: m.idsRestore)
      for blk in maeBlocks!.items { x = blk(x, training: false, rng: &rng) }
      return dropClassForPixels(decoderPred(decoderNorm(x)))
    }
  }

  /// [B, 1 + L, P] → [B, L, P] for the pixel target (which has no class token); unchanged for features.
  func dropClassForPixels(_ pred: Variable) -> Variable {
    config.target == .pixels ? sliceTokens(pred, 1..<pred.shape[1]) : pred
  }
}

extension MILANModel {
  /// The student's predictions for one batch: decoder output for [cls, all L patches] (prompting), [L patches]
  /// (mae), or the kd head on the encoder's [cls, visible] tokens.
  public func predict(_ images: Variable, masking m: MaskingResult, training: Bool = true,
                      rng: inout SplitMix64, firstSample: Int = 0) -> Variable {
    let latent = forwardEncoder(images, masking: m, training: training, rng: &rng, firstSample: firstSample)
    if let kdPred { return kdPred(latent) }
    return forwardDecoder(latent, masking: m, rng: &rng)
  }

  /// The training objective, the one place where the target and the tokens the loss covers are chosen
  /// (reference-milan.md §1, MAE's forward_loss):
  /// - feature target: per token 2 − 2·cos(pred, teacher) over `config.lossTokens` (all: class token and every
  ///   patch; patches: without the class token; masked: the masked patches). kd compares its [cls, visible]
  ///   predictions with the teacher's tokens at the same places.
  /// - pixel target: mean squared error against the patchified `images` (normalised per patch with normPixLoss)
  ///   over the masked patches (MAE) or every patch.
  /// teacher: [B, 1 + L, C], the teacher's tokens for the full image (unused by the pixel target).
  public func loss(_ pred: Variable, images: Tensor, teacher: Tensor?, masking m: MaskingResult) throws -> Variable {
    let c = config, l = c.encoder.numPatches, b = m.mask.count / l
    switch c.target {
    case .pixels:
      var target = patchify(images, patch: c.encoder.patchSize)
      if c.normPixLoss { target = normalizedPixelTarget(target) }
      guard pred.shape == target.shape else {
        throw MILANConfigError("the pixel predictions are \(pred.shape) but the target is \(target.shape)")
      }
      let weights = c.lossTokens == .masked ? m.mask : [Float](repeating: 1, count: b * l)
      return maskedPixelLoss(pred, target: target, mask: weights)
    case .features:
      guard let teacher, teacher.shape == [b, 1 + l, c.predictionDim] else {
        throw MILANConfigError("the feature target needs the teacher's tokens [\(b), \(1 + l), \(c.predictionDim)], got "
          + (teacher.map { "\($0.shape)" } ?? "none"))
      }
      let target = kdPred == nil ? teacher : Self.visibleTargets(teacher, masking: m)
      let tokens = target.shape[1]
      guard pred.shape == target.shape else {
        throw MILANConfigError("the predictions are \(pred.shape) but the target is \(target.shape)")
      }
      switch c.lossTokens {
      case .all: return cosineLoss(pred, target: target)
      case .patches:
        let w = (0..<(b * tokens)).map { $0 % tokens == 0 ? Float(0) : 1 }
        return cosineLoss(pred, target: target, weights: Tensor(shape: [b, tokens], values: w))
      case .masked:
        guard kdPred == nil else { throw MILANConfigError("kd predicts no masked patches (lossTokens masked)") }
        var w = [Float](repeating: 0, count: b * (1 + l))
        for n in 0..<b { for i in 0..<l { w[n * (1 + l) + 1 + i] = m.mask[n * l + i] } }
        return cosineLoss(pred, target: target, weights: Tensor(shape: [b, 1 + l], values: w))
      }
    }
  }

  /// teacher [B, 1 + L, C] → [B, 1 + K, C]: the class token, then the tokens at ids_keep (the encoder's order).
  public static func visibleTargets(_ teacher: Tensor, masking m: MaskingResult) -> Tensor {
    let b = teacher.shape[0], c = teacher.shape[2], k = m.lenKeep, l1 = teacher.shape[1]
    let out = Tensor(uninitialized: [b, 1 + k, c])
    for n in 0..<b {
      (out.data + n * (1 + k) * c).update(from: teacher.data + n * l1 * c, count: c)
      for j in 0..<k {
        let src = 1 + m.idsKeep.values[n * k + j]
        (out.data + (n * (1 + k) + 1 + j) * c).update(from: teacher.data + (n * l1 + src) * c, count: c)
      }
    }
    return out
  }
}

/// MAE patchify: images [B, C, H, W] → [B, L, p·p·C] ordered (row in patch, column in patch, channel).
public func patchify(_ images: Tensor, patch p: Int) -> Tensor {
  let b = images.shape[0], c = images.shape[1], h = images.shape[2] / p, w = images.shape[3] / p
  let out = Tensor(uninitialized: [b, h * w, p * p * c])
  for n in 0..<b {
    for i in 0..<h {
      for j in 0..<w {
        let row = out.data + ((n * h + i) * w + j) * p * p * c
        for r in 0..<p {
          for q in 0..<p {
            for ch in 0..<c {
              row[(r * p + q) * c + ch] = images.data[((n * c + ch) * images.shape[2] + i * p + r) * images.shape[3] + j * p + q]
            }
          }
        }
      }
    }
  }
  return out
}

/// MAE norm_pix_loss target: per patch (t − mean) / sqrt(var + 1e-6) with the unbiased variance (torch.var).
public func normalizedPixelTarget(_ patches: Tensor) -> Tensor {
  let n = patches.lastDim, rows = patches.rows
  let out = Tensor(uninitialized: patches.shape)
  for r in 0..<rows {
    let x = patches.data + r * n, y = out.data + r * n
    var mean: Double = 0
    for i in 0..<n { mean += Double(x[i]) }
    mean /= Double(n)
    var v: Double = 0
    for i in 0..<n { v += (Double(x[i]) - mean) * (Double(x[i]) - mean) }
    v /= Double(n - 1)
    let inv = 1 / (v + 1e-6).squareRoot()
    for i in 0..<n { y[i] = Float((Double(x[i]) - mean) * inv) }
  }
  return out
}

/// MAE pixel loss: Σ mask·mean((pred − target)²) / Σ mask. pred, target [B, L, P]; mask [B·L] (1 = removed).
public func maskedPixelLoss(_ pred: Variable, target: Tensor, mask: [Float]) -> Variable {
  let diff = pred - Variable(target)
  let perPatch = (diff * diff).mean(axis: 2)                        // [B, L]
  let m = Variable(Tensor(shape: perPatch.shape, values: mask))
  let total = mask.reduce(0, +)
  return (perPatch * m).sum().affine(1 / total)
}
