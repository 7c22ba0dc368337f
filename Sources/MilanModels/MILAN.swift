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
  public enum Decoder: String, Codable, Sendable { case prompting, mae, kd }

  public var encoder: ViTConfig
  public var decoderDim: Int
  public var decoderDepth: Int
  public var decoderHeads: Int
  public var decoderMlpRatio: Double = 4
  public var decoder: Decoder = .prompting
  /// Width of decoder_pred: the teacher's feature size, or patch·patch·channels for the pixel target.
  public var predictionDim: Int

  public init(encoder: ViTConfig, decoderDim: Int, decoderDepth: Int, decoderHeads: Int, decoderMlpRatio: Double = 4,
              decoder: Decoder = .prompting, predictionDim: Int) {
    self.encoder = encoder
    self.decoderDim = decoderDim
    self.decoderDepth = decoderDepth
    self.decoderHeads = decoderHeads
    self.decoderMlpRatio = decoderMlpRatio
    self.decoder = decoder
    self.predictionDim = predictionDim
  }

  enum CodingKeys: String, CodingKey {
    case encoder, decoderDim, decoderDepth, decoderHeads, decoderMlpRatio, decoder, predictionDim
  }

  /// Fields with defaults may be left out of configuration files (decoder sizes are unused by the kd objective).
  public init(from d: any Swift.Decoder) throws {
    let c = try d.container(keyedBy: CodingKeys.self)
    self.init(encoder: try c.decode(ViTConfig.self, forKey: .encoder),
              decoderDim: try c.decodeIfPresent(Int.self, forKey: .decoderDim) ?? 512,
              decoderDepth: try c.decodeIfPresent(Int.self, forKey: .decoderDepth) ?? 8,
              decoderHeads: try c.decodeIfPresent(Int.self, forKey: .decoderHeads) ?? 16,
              decoderMlpRatio: try c.decodeIfPresent(Double.self, forKey: .decoderMlpRatio) ?? 4,
              decoder: try c.decodeIfPresent(Decoder.self, forKey: .decoder) ?? .prompting,
              predictionDim: try c.decode(Int.self, forKey: .predictionDim))
  }
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

  public init(_ c: MILANConfig, seed: UInt64 = 0) {
    precondition(c.encoder.numClasses == 0 && c.encoder.globalPool == .token,
                 "MILAN's encoder has no head and keeps the final norm")
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

  /// Encoder on the kept patches: patch_embed + pos (before masking), gather ids_keep, prepend cls + pos[0],
  /// blocks, norm → [B, 1 + K, D] (visible tokens in ids_keep order).
  public func forwardEncoder(_ images: Variable, masking m: MaskingResult, training: Bool = true,
                             rng: inout SplitMix64) -> Variable {
    let l = config.encoder.numPatches
    var x = encoder.patchEmbed(images) + sliceTokens(encoder.posEmbed, 1..<(1 + l))
    x = gatherTokens(x, ids: m.idsKeep)
    let cls = encoder.clsToken + sliceTokens(encoder.posEmbed, 0..<1)
    x = concatTokens([cls, x])
    for b in encoder.blocks.items { x = b(x, training: training, rng: &rng) }
    return encoder.norm!(x)
  }

  /// Decoder → predictions for [cls, all L patches in spatial order]: [B, 1 + L, P] (prompting decoder), or
  /// [B, L, P] patch predictions without the class token (MAE decoder).
  public func forwardDecoder(_ latent: Variable, masking m: MaskingResult, rng: inout SplitMix64) -> Variable {
    let b = latent.shape[0], k = m.lenKeep, l = config.encoder.numPatches
    let z = decoderEmbed(latent)                                          // [B, 1 + K, d]
    let dpos = expandBatch(decoderPosEmbed, to: b)                        // [B, 1 + L, d] (fixed)
    let dposPatches = sliceTokens(dpos, 1..<(1 + l))
    let zCls = sliceTokens(z, 0..<1) + sliceTokens(decoderPosEmbed, 0..<1)
    let zVisible = sliceTokens(z, 1..<(1 + k)) + gatherTokens(dposPatches, ids: m.idsKeep)
    let masked = gatherTokens(dposPatches, ids: m.idsDump) + maskToken    // [B, M, d]
    switch config.decoder {
    case .prompting:
      var x = masked
      for blk in promptingBlocks!.items { x = blk(x, zCls: zCls, zVisible: zVisible, idsRestore: m.idsRestore) }
      let full = assembleTokens(cls: zCls, visible: zVisible, masked: x, idsRestore: m.idsRestore)
      return decoderPred(decoderNorm(full))
    case .kd:
      preconditionFailure("the kd objective has no decoder; use predict(_:masking:rng:)")
    case .mae:
      var x = assembleTokens(cls: zCls, visible: zVisible, masked: masked, idsRestore: m.idsRestore)
      for blk in maeBlocks!.items { x = blk(x, training: false, rng: &rng) }
      return sliceTokens(decoderPred(decoderNorm(x)), 1..<(1 + l))
    }
  }
}

extension MILANModel {
  /// The student's predictions for one batch: decoder output for [cls, all L patches] (prompting), [L patches]
  /// (mae), or the kd head on the encoder's [cls, visible] tokens.
  public func predict(_ images: Variable, masking m: MaskingResult, training: Bool = true,
                      rng: inout SplitMix64) -> Variable {
    let latent = forwardEncoder(images, masking: m, training: training, rng: &rng)
    if let kdPred { return kdPred(latent) }
    return forwardDecoder(latent, masking: m, rng: &rng)
  }

  /// The teacher-feature loss 2 − 2·cos averaged over the predicted tokens. teacher: [B, 1 + L, C] for the full
  /// image. Prompting decoder: all 1 + L tokens, or only the masked patches when `maskedOnly`; kd: the class token
  /// and the visible patches (teacher tokens gathered at ids_keep).
  public func featureLoss(_ pred: Variable, teacher: Tensor, masking m: MaskingResult, maskedOnly: Bool = false) -> Variable {
    switch config.decoder {
    case .kd:
      return cosineLoss(pred, target: Self.visibleTargets(teacher, masking: m))
    case .prompting, .mae:
      precondition(pred.shape[1] == teacher.shape[1], "feature targets need the class-token prediction (prompting decoder)")
      guard maskedOnly else { return cosineLoss(pred, target: teacher) }
      let b = m.mask.count / config.encoder.numPatches, l = config.encoder.numPatches
      var w = [Float](repeating: 0, count: b * (1 + l))
      for n in 0..<b { for i in 0..<l { w[n * (1 + l) + 1 + i] = m.mask[n * l + i] } }
      return cosineLoss(pred, target: teacher, weights: Tensor(shape: [b, 1 + l], values: w))
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
