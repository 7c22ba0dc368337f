// Mirrors open_clip / OpenAI CLIP `VisionTransformer` (clip/model.py) with MILAN's change (clip_demo.py):
// ln_post and proj are applied to every token. Keys: visual.conv1.weight, visual.class_embedding,
// visual.positional_embedding, visual.ln_pre, visual.transformer.resblocks.{i}.{ln_1, attn.in_proj_weight,
// attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, visual.ln_post, visual.proj.
import MilanAutograd
import MilanNN
import MilanTensor

public struct CLIPVisionConfig: Codable, Sendable, Equatable {
  public var imageSize: Int
  public var patchSize: Int
  public var width: Int
  public var layers: Int
  public var heads: Int
  public var mlpRatio: Double = 4
  public var outputDim: Int
  public var activation: Activation = .quickGelu
  public var layerNormEps: Float = 1e-5

  public init(imageSize: Int, patchSize: Int, width: Int, layers: Int, heads: Int, mlpRatio: Double = 4,
              outputDim: Int, activation: Activation = .quickGelu, layerNormEps: Float = 1e-5) {
    self.imageSize = imageSize
    self.patchSize = patchSize
    self.width = width
    self.layers = layers
    self.heads = heads
    self.mlpRatio = mlpRatio
    self.outputDim = outputDim
    self.activation = activation
    self.layerNormEps = layerNormEps
  }

  /// OpenAI ViT-B/16: 224 px, width 768, 12 layers, 12 heads, output 512, QuickGELU.
  public static let vitB16 = CLIPVisionConfig(imageSize: 224, patchSize: 16, width: 768, layers: 12, heads: 12,
                                              outputDim: 512)
  public var gridSize: Int { imageSize / patchSize }
}

/// nn.MultiheadAttention's parameters: in_proj_weight [3D, D] (rows q, k, v), in_proj_bias, out_proj.
public final class CLIPAttention: Module {
  public let inProjWeight: Parameter, inProjBias: Parameter
  public let outProj: Linear
  public let heads: Int
  init(width d: Int, heads: Int) {
    inProjWeight = Parameter(Tensor(zeros: [3 * d, d]), name: "in_proj_weight")
    inProjBias = Parameter(Tensor(zeros: [3 * d]), name: "in_proj_bias")
    outProj = Linear(d, d)
    self.heads = heads
  }
  public var parameters: [(String, Parameter)] { [("in_proj_weight", inProjWeight), ("in_proj_bias", inProjBias)] }
  public var children: [(String, any Module)] { [("out_proj", outProj)] }
  func callAsFunction(_ x: Variable, headMeanProbs: Bool) -> (Variable, Tensor?) {
    let (a, p) = selfAttention(qkv: linear(x, inProjWeight, inProjBias), heads: heads, headMeanProbs: headMeanProbs)
    return (outProj(a), p)
  }
}

public final class CLIPMlp: Module {
  public let cFc: Linear, cProj: Linear
  let activation: Activation
  init(width d: Int, hidden: Int, activation: Activation) {
    cFc = Linear(d, hidden)
    cProj = Linear(hidden, d)
    self.activation = activation
  }
  public var children: [(String, any Module)] { [("c_fc", cFc), ("c_proj", cProj)] }
  func callAsFunction(_ x: Variable) -> Variable { cProj(cFc(x).activation(activation)) }
}

public final class ResidualAttentionBlock: Module {
  public let ln1: LayerNorm, attn: CLIPAttention, ln2: LayerNorm, mlp: CLIPMlp
  init(_ c: CLIPVisionConfig) {
    ln1 = LayerNorm(c.width, eps: c.layerNormEps)
    attn = CLIPAttention(width: c.width, heads: c.heads)
    ln2 = LayerNorm(c.width, eps: c.layerNormEps)
    mlp = CLIPMlp(width: c.width, hidden: Int(Double(c.width) * c.mlpRatio), activation: c.activation)
  }
  public var children: [(String, any Module)] { [("ln_1", ln1), ("attn", attn), ("ln_2", ln2), ("mlp", mlp)] }
  func callAsFunction(_ x: Variable, headMeanProbs: Bool) -> (Variable, Tensor?) {
    let (a, p) = attn(ln1(x), headMeanProbs: headMeanProbs)
    let h = residualAdd(x, a)
    return (residualAdd(h, mlp(ln2(h))), p)
  }
}

public final class CLIPTransformer: Module {
  public let resblocks: ModuleList<ResidualAttentionBlock>
  init(_ c: CLIPVisionConfig) { resblocks = ModuleList((0..<c.layers).map { _ in ResidualAttentionBlock(c) }) }
  public var children: [(String, any Module)] { [("resblocks", resblocks)] }
}

/// The `visual` tower.
public final class CLIPVisionTower: Module {
  public let config: CLIPVisionConfig
  public let conv1: ConvWeights
  public let classEmbedding: Parameter       // [D]
  public let positionalEmbedding: Parameter  // [1 + N, D]
  public let lnPre: LayerNorm
  public let transformer: CLIPTransformer
  public let lnPost: LayerNorm
  public let proj: Parameter                 // [D, C], used as x @ proj

  public init(_ c: CLIPVisionConfig) {
    config = c
    conv1 = ConvWeights(out: c.width, in: 3, kernel: c.patchSize, bias: false)
    classEmbedding = Parameter(Tensor(zeros: [c.width]), name: "class_embedding")
    positionalEmbedding = Parameter(Tensor(zeros: [c.gridSize * c.gridSize + 1, c.width]), name: "positional_embedding")
    lnPre = LayerNorm(c.width, eps: c.layerNormEps)
    transformer = CLIPTransformer(c)
    lnPost = LayerNorm(c.width, eps: c.layerNormEps)
    proj = Parameter(Tensor(zeros: [c.width, c.outputDim]), name: "proj")
  }

  public var parameters: [(String, Parameter)] {
    [("class_embedding", classEmbedding), ("positional_embedding", positionalEmbedding), ("proj", proj)]
  }
  public var children: [(String, any Module)] {
    [("conv1", conv1), ("ln_pre", lnPre), ("transformer", transformer), ("ln_post", lnPost)]
  }

  /// MILAN's teacher forward: features ln_post(h)·proj for every token and the last block's class attention.
  public func encode(_ images: Tensor) -> TeacherOutput {
    // The teacher's weights are frozen: its linear layers run on weights packed once (at the first forward, and
    // again after a load).
    packLinearWeightsForInference(extra: transformer.resblocks.items.map(\.attn.inProjWeight))
    return Autograd.noGrad {
      let c = config, d = c.width
      let gh = images.shape[2] / c.patchSize, gw = images.shape[3] / c.patchSize
      var x = patchEmbed(Variable(images), weight: conv1.weight, bias: nil)
      x = concatTokens([classEmbedding.reshaped([1, 1, d]), x])
      x = x + Variable(positionTable(positionalEmbedding.value, grid: c.gridSize, gridH: gh, gridW: gw,
                                     antialias: false))
      let (h, probs) = runBlocksKeepingLastAttention(lnPre(x), transformer.resblocks.items) { $0($1, headMeanProbs: $2) }
      x = lnPost(h)
      let projT = Variable(proj.value.transposed(0, 1))  // [C, D] for linear()
      let feats = linear(x, projT)
      return TeacherOutput(features: feats.value, clsAttention: clsAttentionRow(probs))
    }
  }

}

/// A CLIP image tower used as MILAN's teacher; its state-dict keys carry the `visual.` prefix of a CLIP model.
public final class CLIPVisionTeacher: Module, Teacher {
  public let visual: CLIPVisionTower
  public init(_ c: CLIPVisionConfig) { visual = CLIPVisionTower(c) }
  public var children: [(String, any Module)] { [("visual", visual)] }
  public var architecture: TeacherArchitecture {
    let c = visual.config
    return TeacherArchitecture(family: .clip, width: c.width, depth: c.layers, heads: c.heads, patchSize: c.patchSize,
                               featureDim: c.outputDim, mlpHidden: Int(Double(c.width) * c.mlpRatio),
                               nativeImageSize: c.imageSize, activation: c.activation, layerScale: false,
                               layerNormEps: c.layerNormEps)
  }
  public func encode(_ images: Tensor) -> TeacherOutput { visual.encode(images) }

  /// Loads an open_clip / OpenAI state dict (`visual.*` keys; text-tower keys are ignored) or a Hugging Face
  /// `CLIPVisionModelWithProjection` one (converted by `CLIPKeys.fromHuggingFace`).
  public func loadCLIP(_ tensors: [String: Tensor]) throws {
    let hf = tensors.keys.contains { $0.hasPrefix("vision_model.") }
    let source = hf ? try CLIPKeys.fromHuggingFace(tensors) : tensors.filter { $0.key.hasPrefix("visual.") }
    try load(source)
  }
}

public enum CLIPKeys {
  /// Hugging Face CLIPVisionModelWithProjection keys → open_clip `visual.*` keys (q/k/v concatenated into
  /// in_proj, visual_projection [C, D] transposed into proj [D, C]). Unknown vision keys are passed through so that
  /// strict loading reports them.
  public static func fromHuggingFace(_ t: [String: Tensor]) throws -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    var qkv: [Int: [String: Tensor]] = [:]
    let layerPrefix = "vision_model.encoder.layers."
    for (key, value) in t {
      if key.hasSuffix("position_ids") || key.hasPrefix("text_model.") || key == "logit_scale"
        || key.hasPrefix("text_projection")
      { continue }
      if key.hasPrefix(layerPrefix) {
        let rest = key.dropFirst(layerPrefix.count)
        guard let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]) else {
          out[key] = value
          continue
        }
        let sub = String(rest[rest.index(after: dot)...])
        let p = "visual.transformer.resblocks.\(i)."
        switch sub {
        case let s where s.hasPrefix("self_attn.q_proj.") || s.hasPrefix("self_attn.k_proj.") || s.hasPrefix("self_attn.v_proj."):
          qkv[i, default: [:]][s] = value
        case let s where s.hasPrefix("self_attn.out_proj."): out[p + "attn.out_proj." + s.dropFirst(19)] = value
        case let s where s.hasPrefix("layer_norm1."): out[p + "ln_1." + s.dropFirst(12)] = value
        case let s where s.hasPrefix("layer_norm2."): out[p + "ln_2." + s.dropFirst(12)] = value
        case let s where s.hasPrefix("mlp.fc1."): out[p + "mlp.c_fc." + s.dropFirst(8)] = value
        case let s where s.hasPrefix("mlp.fc2."): out[p + "mlp.c_proj." + s.dropFirst(8)] = value
        default: out[key] = value
        }
        continue
      }
      switch key {
      case "vision_model.embeddings.patch_embedding.weight": out["visual.conv1.weight"] = value
      case "vision_model.embeddings.class_embedding": out["visual.class_embedding"] = value
      case "vision_model.embeddings.position_embedding.weight": out["visual.positional_embedding"] = value
      case "vision_model.pre_layrnorm.weight": out["visual.ln_pre.weight"] = value
      case "vision_model.pre_layrnorm.bias": out["visual.ln_pre.bias"] = value
      case "vision_model.post_layernorm.weight": out["visual.ln_post.weight"] = value
      case "vision_model.post_layernorm.bias": out["visual.ln_post.bias"] = value
      case "visual_projection.weight": out["visual.proj"] = value.transposed(0, 1)
      default: out[key] = value
      }
    }
    for (i, parts) in qkv.sorted(by: { $0.key < $1.key }) {
      let p = "visual.transformer.resblocks.\(i).attn."
      for kind in ["weight", "bias"] {
        let pieces = ["q", "k", "v"].compactMap { parts["self_attn.\($0)_proj.\(kind)"] }
        guard pieces.count == 3, pieces.allSatisfy({ $0.rank >= 1 && $0.shape.dropFirst() == pieces[0].shape.dropFirst() })
        else {
          throw LoadError(missing: ["vision_model.encoder.layers.\(i).self_attn.{q,k,v}_proj.\(kind)"], unexpected: [],
                          mismatched: [])
        }
        out[p + "in_proj_\(kind)"] = Tensor(stackingRows: pieces)
      }
    }
    return out
  }

}
