// Mirrors timm/models/vision_transformer.py (VisionTransformer, Block, Attention, Mlp, PatchEmbed) with MAE's
// initialisation (models_mae.py initialize_weights) and fixed 2-D sin-cos position table.
// State-dict keys are timm's: cls_token, pos_embed, patch_embed.proj.{weight,bias}, blocks.{i}.{norm1, attn.qkv,
// attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight,bias}, norm | fc_norm, head.
import MilanAutograd
import MilanNN
import MilanTensor

public struct ViTConfig: Codable, Sendable, Equatable {
  public enum Pool: String, Codable, Sendable { case token, avg }

  public var imageSize: Int
  public var patchSize: Int
  public var inChannels: Int = 3
  public var embedDim: Int
  public var depth: Int
  public var numHeads: Int
  public var mlpRatio: Double = 4
  public var qkvBias: Bool = true
  /// 0: no classification head (`head` absent).
  public var numClasses: Int = 0
  /// Class token after the final norm (`token`) or mean of patch tokens through `fc_norm` (`avg`, MAE finetuning).
  public var globalPool: Pool = .token
  public var layerNormEps: Float = 1e-6
  public var dropPathRate: Float = 0
  /// Fixed MAE sin-cos table (not trained) instead of a learned position embedding.
  public var fixedSinCosPosEmbed: Bool = true

  public init(imageSize: Int, patchSize: Int, inChannels: Int = 3, embedDim: Int, depth: Int, numHeads: Int,
              mlpRatio: Double = 4, qkvBias: Bool = true, numClasses: Int = 0, globalPool: Pool = .token,
              layerNormEps: Float = 1e-6, dropPathRate: Float = 0, fixedSinCosPosEmbed: Bool = true) {
    self.imageSize = imageSize
    self.patchSize = patchSize
    self.inChannels = inChannels
    self.embedDim = embedDim
    self.depth = depth
    self.numHeads = numHeads
    self.mlpRatio = mlpRatio
    self.qkvBias = qkvBias
    self.numClasses = numClasses
    self.globalPool = globalPool
    self.layerNormEps = layerNormEps
    self.dropPathRate = dropPathRate
    self.fixedSinCosPosEmbed = fixedSinCosPosEmbed
  }

  enum CodingKeys: String, CodingKey {
    case imageSize, patchSize, inChannels, embedDim, depth, numHeads, mlpRatio, qkvBias, numClasses, globalPool,
         layerNormEps, dropPathRate, fixedSinCosPosEmbed
  }

  /// Fields with defaults may be left out of configuration files. A timm model name (`"vit_base_patch16_224"`,
  /// see `named`) stands for its whole configuration.
  public init(from decoder: Decoder) throws {
    if let single = try? decoder.singleValueContainer(), let name = try? single.decode(String.self) {
      guard let c = ViTConfig.named(name) else {
        throw DecodingError.dataCorruptedError(in: single, debugDescription: "unknown model name \(name); known: "
          + ViTConfig.modelNames.joined(separator: ", ") + " (or vit_{tiny,small,base,large,huge}_patch<P>_<size>)")
      }
      self = c
      return
    }
    let c = try decoder.container(keyedBy: CodingKeys.self)
    self.init(imageSize: try c.decodeIfPresent(Int.self, forKey: .imageSize) ?? 224,
              patchSize: try c.decode(Int.self, forKey: .patchSize),
              inChannels: try c.decodeIfPresent(Int.self, forKey: .inChannels) ?? 3,
              embedDim: try c.decode(Int.self, forKey: .embedDim), depth: try c.decode(Int.self, forKey: .depth),
              numHeads: try c.decode(Int.self, forKey: .numHeads),
              mlpRatio: try c.decodeIfPresent(Double.self, forKey: .mlpRatio) ?? 4,
              qkvBias: try c.decodeIfPresent(Bool.self, forKey: .qkvBias) ?? true,
              numClasses: try c.decodeIfPresent(Int.self, forKey: .numClasses) ?? 0,
              globalPool: try c.decodeIfPresent(Pool.self, forKey: .globalPool) ?? .token,
              layerNormEps: try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? 1e-6,
              dropPathRate: try c.decodeIfPresent(Float.self, forKey: .dropPathRate) ?? 0,
              fixedSinCosPosEmbed: try c.decodeIfPresent(Bool.self, forKey: .fixedSinCosPosEmbed) ?? true)
  }

  /// timm presets: tiny 192/12/3, small 384/12/6, base 768/12/12, large 1024/24/16, huge 1280/32/16.
  public static func preset(_ name: String, imageSize: Int = 224, patchSize: Int = 16) -> ViTConfig? {
    let table: [String: (Int, Int, Int)] = [
      "tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
      "huge": (1280, 32, 16),
    ]
    guard let (d, depth, heads) = table[name] else { return nil }
    return ViTConfig(imageSize: imageSize, patchSize: patchSize, embedDim: d, depth: depth, numHeads: heads)
  }

  /// Set to true in an encoder's userInfo to leave `imageSize` out (a pretraining configuration states it once, at
  /// its top level).
  public static let omitImageSizeKey = CodingUserInfoKey(rawValue: "milan.omitEncoderImageSize")!

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    if encoder.userInfo[Self.omitImageSizeKey] as? Bool != true { try c.encode(imageSize, forKey: .imageSize) }
    try c.encode(patchSize, forKey: .patchSize)
    try c.encode(inChannels, forKey: .inChannels)
    try c.encode(embedDim, forKey: .embedDim)
    try c.encode(depth, forKey: .depth)
    try c.encode(numHeads, forKey: .numHeads)
    try c.encode(mlpRatio, forKey: .mlpRatio)
    try c.encode(qkvBias, forKey: .qkvBias)
    try c.encode(numClasses, forKey: .numClasses)
    try c.encode(globalPool, forKey: .globalPool)
    try c.encode(layerNormEps, forKey: .layerNormEps)
    try c.encode(dropPathRate, forKey: .dropPathRate)
    try c.encode(fixedSinCosPosEmbed, forKey: .fixedSinCosPosEmbed)
  }

  /// The names `named` knows without a pattern: timm's four MILAN-sized ViTs and the CPU demo's.
  public static let modelNames = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                                  "vit_large_patch16_224", "vit_huge_patch14_224", demoName]
  /// The CPU demo's student: 32 px, patch 4 (8×8 grid), width 128, depth 4, 4 heads (0.8 M parameters).
  public static let demoName = "vit_demo_patch4_32"

  /// A student by timm name: `vit_{tiny,small,base,large,huge}_patch<P>_<image size>` (timm's widths, depths and
  /// heads; e.g. vit_base_patch16_224 = 768 / 12 / 12), or `vit_demo_patch4_32`, the CPU demo's model.
  public static func named(_ name: String) -> ViTConfig? {
    if name == demoName { return ViTConfig(imageSize: 32, patchSize: 4, embedDim: 128, depth: 4, numHeads: 4) }
    let parts = name.split(separator: "_")
    guard parts.count == 4, parts[0] == "vit", parts[2].hasPrefix("patch"),
          let p = Int(parts[2].dropFirst(5)), let size = Int(parts[3]), p > 0, size > 0, size % p == 0 else { return nil }
    return preset(String(parts[1]), imageSize: size, patchSize: p)
  }

  /// Refuses sizes that make no network (zero or negative sizes, a width its heads do not divide, a sin-cos table of
  /// a width not divisible by 4, a non-finite or non-positive MLP ratio or norm epsilon, a drop-path rate outside
  /// [0, 1)). `field` is where the configuration sits in its file, e.g. "model.encoder"; the message names it.
  public func validate(field: String = "encoder") throws {
    func bad(_ m: String) -> ViTConfigError { ViTConfigError("\(field): \(m)") }
    guard patchSize > 0, imageSize > 0, imageSize % patchSize == 0 else {
      throw bad("imageSize \(imageSize) must be a positive multiple of patchSize \(patchSize)")
    }
    // Limits far above any ViT (ViT-g is 1408 wide, 40 deep) that keep token and parameter counts from overflowing.
    guard imageSize <= Self.maxSize, embedDim <= Self.maxSize, depth <= Self.maxDepth else {
      throw bad("imageSize \(imageSize), embedDim \(embedDim) and depth \(depth) must be at most \(Self.maxSize), "
        + "\(Self.maxSize) and \(Self.maxDepth)")
    }
    guard inChannels > 0 else { throw bad("inChannels must be positive (got \(inChannels))") }
    guard depth > 0 else { throw bad("depth must be positive (got \(depth))") }
    guard embedDim > 0, numHeads > 0, embedDim % numHeads == 0 else {
      throw bad("embedDim \(embedDim) must be positive and a multiple of numHeads \(numHeads)")
    }
    if fixedSinCosPosEmbed {
      guard embedDim % 4 == 0 else { throw bad("the sin-cos position table needs embedDim divisible by 4 (got \(embedDim))") }
    }
    guard mlpRatio.isFinite, mlpRatio > 0, Double(embedDim) * mlpRatio >= 1, Double(embedDim) * mlpRatio < Double(1 << 31) else {
      throw bad("mlpRatio \(mlpRatio) must be positive and give an MLP width of at least 1 (embedDim \(embedDim))")
    }
    guard numClasses >= 0 else { throw bad("numClasses must not be negative (got \(numClasses))") }
    guard layerNormEps.isFinite, layerNormEps > 0 else { throw bad("layerNormEps must be positive (got \(layerNormEps))") }
    guard dropPathRate.isFinite, dropPathRate >= 0, dropPathRate < 1 else {
      throw bad("dropPathRate must be in [0, 1) (got \(dropPathRate))")
    }
  }

  public static let maxSize = 16384, maxDepth = 1024

  public var gridSize: Int { imageSize / patchSize }
  public var numPatches: Int { gridSize * gridSize }
  public var mlpHidden: Int { Int(Double(embedDim) * mlpRatio) }
}

/// A ViT configuration that makes no network, with the field that says so.
public struct ViTConfigError: Error, CustomStringConvertible {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// timm PatchEmbed: Conv2d(inChannels, D, P, stride P) flattened to [B, N, D].
public final class PatchEmbed: Module {
  public let proj: ConvWeights
  public init(inChannels: Int, embedDim: Int, patchSize: Int, bias: Bool = true) {
    proj = ConvWeights(out: embedDim, in: inChannels, kernel: patchSize, bias: bias)
  }
  public var children: [(String, any Module)] { [("proj", proj)] }
  // img: [B, C, H, W] → [B, N, D]; with `keep` ([B, K] patch indices) only those patches → [B, K, D]
  public func callAsFunction(_ img: Variable, keep: IndexTensor? = nil) -> Variable {
    patchEmbed(img, weight: proj.weight, bias: proj.bias, keep: keep)
  }
}

/// Conv2d parameters: weight [out, in, k, k], bias [out].
public final class ConvWeights: Module {
  public let weight: Parameter
  public let bias: Parameter?
  public init(out: Int, in inC: Int, kernel: Int, bias: Bool) {
    weight = Parameter(Tensor(zeros: [out, inC, kernel, kernel]), name: "weight")
    self.bias = bias ? Parameter(Tensor(zeros: [out]), name: "bias") : nil
  }
  public var parameters: [(String, Parameter)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

/// timm Attention: fused qkv projection, multi-head self-attention, output projection.
public final class SelfAttention: Module {
  public let qkv: Linear, proj: Linear
  public let numHeads: Int
  public init(dim: Int, numHeads: Int, qkvBias: Bool) {
    qkv = Linear(dim, 3 * dim, bias: qkvBias)
    proj = Linear(dim, dim)
    self.numHeads = numHeads
  }
  public var children: [(String, any Module)] { [("qkv", qkv), ("proj", proj)] }
  // x: [B, L, D] → [B, L, D]; with `headMeanProbs`, also the head-averaged attention [B, L, L].
  public func callAsFunction(_ x: Variable, headMeanProbs: Bool = false) -> (Variable, Tensor?) {
    let (a, probs) = selfAttention(qkv: qkv(x), heads: numHeads, headMeanProbs: headMeanProbs)
    return (proj(a), probs)
  }
}

/// timm Mlp: fc1 → activation → fc2.
public final class Mlp: Module {
  public let fc1: Linear, fc2: Linear
  public let activation: Activation
  public init(dim: Int, hidden: Int, activation: Activation = .gelu) {
    fc1 = Linear(dim, hidden)
    fc2 = Linear(hidden, dim)
    self.activation = activation
  }
  public var children: [(String, any Module)] { [("fc1", fc1), ("fc2", fc2)] }
  public func callAsFunction(_ x: Variable) -> Variable { fc2(fc1(x).activation(activation)) }
}

/// timm Block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))).
public final class Block: Module {
  public let norm1: LayerNorm, attn: SelfAttention, norm2: LayerNorm, mlp: Mlp
  public var dropPath: Float

  public init(dim: Int, numHeads: Int, mlpHidden: Int, qkvBias: Bool, eps: Float, dropPath: Float = 0,
              activation: Activation = .gelu) {
    norm1 = LayerNorm(dim, eps: eps)
    attn = SelfAttention(dim: dim, numHeads: numHeads, qkvBias: qkvBias)
    norm2 = LayerNorm(dim, eps: eps)
    mlp = Mlp(dim: dim, hidden: mlpHidden, activation: activation)
    self.dropPath = dropPath
  }

  public var children: [(String, any Module)] {
    [("norm1", norm1), ("attn", attn), ("norm2", norm2), ("mlp", mlp)]
  }

  public func callAsFunction(_ x: Variable, training: Bool = false, rng: inout SplitMix64,
                             firstSample: Int = 0) -> Variable {
    forward(x, training: training, rng: &rng, headMeanProbs: false, firstSample: firstSample).0
  }

  /// The block, and with `headMeanProbs` its attention probabilities averaged over heads [B, L, L].
  /// `firstSample`: the global position of the batch's first sample (drop-path draws are keyed by it).
  public func forward(_ x: Variable, training: Bool, rng: inout SplitMix64, headMeanProbs: Bool,
                      firstSample: Int = 0) -> (Variable, Tensor?) {
    let (a, probs) = attn(norm1(x), headMeanProbs: headMeanProbs)
    var h = residualAdd(x, DropPath.apply(a, rate: dropPath, training: training, rng: &rng, firstSample: firstSample))
    h = residualAdd(h, DropPath.apply(mlp(norm2(h)), rate: dropPath, training: training, rng: &rng,
                                      firstSample: firstSample))
    return (h, probs)
  }
}

/// Stochastic depth: during training each sample's branch is dropped with probability `rate` and kept ones are
/// scaled by 1/(1 − rate) (timm drop_path with scale_by_keep). One key is drawn from `rng` per call and each sample's
/// draw comes from (key, its global position `firstSample + i`), so the result does not depend on how a batch is
/// split across processes.
public enum DropPath {
  public static func apply(_ x: Variable, rate: Float, training: Bool, rng: inout SplitMix64,
                           firstSample: Int = 0) -> Variable {
    guard training, rate > 0 else { return x }
    let keep = 1 - rate, key = rng.next()
    let scales = (0..<x.shape[0]).map { i -> Float in
      var g = SplitMix64.forSample(key: key, sample: firstSample + i)
      return g.nextUniform() < keep ? 1 / keep : 0
    }
    return x.scaledPerSample(scales)
  }
}

public final class VisionTransformer: Module {
  public let config: ViTConfig
  public let patchEmbed: PatchEmbed
  public let clsToken: Parameter   // [1, 1, D]
  public let posEmbed: Parameter   // [1, N + 1, D]
  public let blocks: ModuleList<Block>
  public let norm: LayerNorm?      // absent with global_pool = avg (fc_norm instead)
  public let fcNorm: LayerNorm?
  public let head: Linear?

  public init(_ c: ViTConfig, seed: UInt64 = 0) {
    config = c
    patchEmbed = PatchEmbed(inChannels: c.inChannels, embedDim: c.embedDim, patchSize: c.patchSize)
    clsToken = Parameter(Tensor(zeros: [1, 1, c.embedDim]), name: "cls_token")
    posEmbed = Parameter(Tensor(zeros: [1, c.numPatches + 1, c.embedDim]), name: "pos_embed",
                         trainable: !c.fixedSinCosPosEmbed)
    blocks = ModuleList((0..<c.depth).map { i in
      // Linearly increasing drop-path rate, as timm.
      let dp = c.depth > 1 ? c.dropPathRate * Float(i) / Float(c.depth - 1) : c.dropPathRate
      return Block(dim: c.embedDim, numHeads: c.numHeads, mlpHidden: c.mlpHidden, qkvBias: c.qkvBias,
                   eps: c.layerNormEps, dropPath: dp)
    })
    norm = c.globalPool == .token ? LayerNorm(c.embedDim, eps: c.layerNormEps) : nil
    fcNorm = c.globalPool == .avg ? LayerNorm(c.embedDim, eps: c.layerNormEps) : nil
    head = c.numClasses > 0 ? Linear(c.embedDim, c.numClasses) : nil
    initializeWeights(seed: seed)
  }

  public var parameters: [(String, Parameter)] { [("cls_token", clsToken), ("pos_embed", posEmbed)] }

  public var children: [(String, any Module)] {
    var c: [(String, any Module)] = [("patch_embed", patchEmbed), ("blocks", blocks)]
    if let norm { c.append(("norm", norm)) }
    if let fcNorm { c.append(("fc_norm", fcNorm)) }
    if let head { c.append(("head", head)) }
    return c
  }

  /// MAE initialize_weights: sin-cos pos_embed, xavier_uniform for Linear and the patch conv (viewed 2-D),
  /// normal(0.02) class token, zero biases, unit LayerNorm weights.
  public func initializeWeights(seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    let g = config.gridSize
    posEmbed.value.assign(Init.sinCos2D(dim: config.embedDim, gridH: g, gridW: g, classToken: true))
    let w = patchEmbed.proj.weight.value
    Init.xavierUniform(w, fanIn: w.count / w.shape[0], fanOut: w.shape[0], rng: &rng)
    for i in 0..<clsToken.count { clsToken.value.data[i] = 0.02 * rng.nextNormal() }
    for b in blocks.items {
      for l in [b.attn.qkv, b.attn.proj, b.mlp.fc1, b.mlp.fc2] {
        Init.xavierUniform(l.weight.value, fanIn: l.inFeatures, fanOut: l.outFeatures, rng: &rng)
      }
    }
    if let head { Init.truncatedNormal(head.weight.value, std: 0.02, rng: &rng) }
  }

  /// Position table for a `gridH`×`gridW` input, interpolated (bicubic, antialiased as timm) when it differs from
  /// the configured grid. [1, 1 + gh·gw, D].
  func positionTable(gridH: Int, gridW: Int) -> Variable {
    let g = config.gridSize
    if gridH == g && gridW == g { return posEmbed }
    // Interpolated tables are not trained through (fixed, or fine-tuned at the native size).
    return Variable(MilanModels.positionTable(posEmbed.value.reshaped([1 + g * g, config.embedDim]), grid: g,
                                              gridH: gridH, gridW: gridW, antialias: true))
  }

  /// Tokens after the final norm (or, with avg pooling, before fc_norm): img [B, C, H, W] → [B, 1 + N, D].
  public func forwardFeatures(_ img: Variable, training: Bool = false, rng: inout SplitMix64,
                              firstSample: Int = 0) -> Variable {
    features(img, keep: nil, training: training, rng: &rng, lastAttention: false, firstSample: firstSample).0
  }

  /// Tokens after the final norm for a subset of patches: `keep` [B, K] patch indices (nil = all), as MILAN's
  /// encoder sees visible patches: patch embedding + position, gather, class token + its position, blocks, norm.
  /// → [B, 1 + K, D].
  public func forwardFeatures(_ img: Variable, keep: IndexTensor?, training: Bool = false,
                              rng: inout SplitMix64, firstSample: Int = 0) -> Variable {
    features(img, keep: keep, training: training, rng: &rng, lastAttention: false, firstSample: firstSample).0
  }

  /// Tokens after the final norm [B, 1 + N, D] and the last block's attention from the class token to every patch,
  /// averaged over heads, the class column dropped [B, N] (what a teacher's class attention is), in eval mode.
  public func forwardFeaturesWithAttention(_ img: Variable) -> (features: Variable, clsAttention: Tensor) {
    var rng = SplitMix64(seed: 0)
    let (f, probs) = features(img, keep: nil, training: false, rng: &rng, lastAttention: true)
    return (f, clsAttentionRow(probs!))
  }

  func features(_ img: Variable, keep: IndexTensor?, training: Bool, rng: inout SplitMix64,
                lastAttention: Bool, firstSample: Int = 0) -> (Variable, Tensor?) {
    let p = config.patchSize
    precondition(img.shape.count == 4 && img.shape[1] == config.inChannels,
                 "VisionTransformer: expected [B, \(config.inChannels), H, W], got \(img.shape)")
    let pos = positionTable(gridH: img.shape[2] / p, gridW: img.shape[3] / p)
    var x: Variable
    if let keep {
      // Only the kept patches are embedded: the same rows as embedding all and gathering (the reference adds the
      // position before its gather; the sum is the same), at K/N of the patch embedding's work.
      x = patchEmbed(img, keep: keep) + gatherTokens(sliceTokens(pos, 1..<pos.shape[1]), ids: keep)
      x = concatTokens([clsToken + sliceTokens(pos, 0..<1), x])
    } else {
      x = concatTokens([clsToken, patchEmbed(img)]) + pos
    }
    var probs: Tensor? = nil
    for (i, b) in blocks.items.enumerated() {
      let last = lastAttention && i == blocks.items.count - 1
      let (h, pr) = b.forward(x, training: training, rng: &rng, headMeanProbs: last, firstSample: firstSample)
      x = h
      if last { probs = pr }
    }
    if let norm { x = norm(x) }
    return (x, probs)
  }

  /// Pooled representation [B, D]: class token after the norm, or the mean of patch tokens through fc_norm.
  public func pooled(_ features: Variable) -> Variable {
    switch config.globalPool {
    case .token:
      return sliceTokens(features, 0..<1).reshaped([features.shape[0], features.shape[2]])
    case .avg:
      let patches = sliceTokens(features, 1..<features.shape[1]).mean(axis: 1)
      return fcNorm!(patches)
    }
  }

  /// Logits [B, classes] (or the pooled features when there is no head).
  public func callAsFunction(_ img: Variable, training: Bool = false, rng: inout SplitMix64,
                             firstSample: Int = 0) -> Variable {
    let f = pooled(forwardFeatures(img, training: training, rng: &rng, firstSample: firstSample))
    return head.map { $0(f) } ?? f
  }
}
