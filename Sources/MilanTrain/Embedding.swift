// `milan embed`: per-image features of an encoder or a teacher on an image folder or an IDX set, written as one
// safetensors file for use elsewhere (numpy, PyTorch, a vector store):
//   features    [N, D] (class token, or mean of the patch tokens) or [N, 1 + L, D] (every token, class first)
//   labels      I64 [N]   class index (classes in the `classes` metadata, sorted folder names as ImageFolder)
//   indices     I64 [N]   the image's index in the dataset
//   cls_attention [N, L]  optional: the last block's class-token attention over the patches, heads averaged
// Metadata: `files` (JSON list of the images, in row order), `classes`, `source` (what made the features),
// `tokens`, `image_size`, `data`, `split`, `skipped` (unreadable images, not embedded).
// Images go through the evaluation transform (Resize(size / 0.875) + CenterCrop(size), ImageNet normalisation; IDX
// digits resized), so an encoder's features equal timm's `forward_features` on the same transform.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanTensor

public struct EmbedConfig: Sendable {
  public enum Source: Sendable {
    /// The encoder of a `milan pretrain` output folder.
    case runEncoder(String)
    /// The teacher a `milan pretrain` run recorded.
    case runTeacher(String)
    /// A ViT under timm names (a converted encoder, a finetuned classifier, a MILAN model.safetensors).
    case encoderFile(String)
    /// Any teacher file `TeacherFile` reads.
    case teacherFile(String)
  }
  public enum Tokens: String, Codable, Sendable, CaseIterable { case cls, mean, all }

  public var source: Source
  public var dataDir: String?
  /// "train" or "test".
  public var split = "train"
  /// The first `limit` images of the split (nil: all).
  public var limit: Int?
  public var tokens: Tokens = .cls
  public var attention = false
  /// Input size (default: the run's, or the model's native size).
  public var imageSize: Int?
  public var batchSize = 64
  public var maxUnreadableFraction = 0.01
  public var output: String

  public init(source: Source, output: String) {
    self.source = source
    self.output = output
  }
}

public struct EmbedSummary: Sendable {
  public var count: Int
  public var shape: [Int]
  public var skipped: [String]
  public var source: String
}

public enum Embedding {
  /// A model that maps a normalised batch to per-token features and, on request, the class attention.
  struct Model {
    var describe: String
    var imageSize: Int
    var patchSize: Int
    var width: Int
    var encode: (Tensor, Bool) -> (features: Tensor, attention: Tensor?)
  }

  static func model(_ c: EmbedConfig, log: (String) -> Void) throws -> (Model, defaultData: String?) {
    switch c.source {
    case .runEncoder(let dir), .runTeacher(let dir):
      let state = try TrainState.read(URL(fileURLWithPath: dir))
      let cfg = state.config
      if case .runTeacher = c.source {
        guard let t = try RunTeacher.load(cfg, override: nil, log: log) else {
          throw InvalidSetting("embed: the run in \(dir) has no readable teacher file to embed with")
        }
        return (teacherModel(t, size: c.imageSize ?? RunTeacher.inputSize(t.spec, cfg)), cfg.dataDir)
      }
      let m = MILANModel(cfg.model)
      let url = URL(fileURLWithPath: dir).appendingPathComponent("model.safetensors")
      try m.load(try SafeTensorsFile(contentsOf: url).tensors(), file: url.path)
      return (encoderModel(m.encoder, "MILAN encoder of \(dir) (epoch \(state.epoch))", size: c.imageSize ?? cfg.imageSize),
              cfg.dataDir)
    case .encoderFile(let path):
      let (e, d) = try EncoderFile.load(path)
      return (encoderModel(e, d, size: c.imageSize ?? e.config.imageSize), nil)
    case .teacherFile(let path):
      let t = try TeacherFile.load(path)
      return (teacherModel(t, size: c.imageSize ?? t.spec.architecture.nativeImageSize), nil)
    }
  }

  static func encoderModel(_ e: VisionTransformer, _ describe: String, size: Int) -> Model {
    Model(describe: describe, imageSize: size, patchSize: e.config.patchSize, width: e.config.embedDim) { x, attention in
      Autograd.noGrad {
        if attention {
          let (f, a) = e.forwardFeaturesWithAttention(Variable(x))
          return (f.value, a)
        }
        var rng = SplitMix64(seed: 0)
        return (e.forwardFeatures(Variable(x), rng: &rng).value, nil)
      }
    }
  }

  static func teacherModel(_ t: LoadedTeacher, size: Int) -> Model {
    Model(describe: "teacher \(t.spec.summary)", imageSize: size, patchSize: t.spec.architecture.patchSize,
          width: t.spec.featureDim) { x, attention in
      let out = Autograd.noGrad { t.teacher.encode(x) }
      return (out.features, attention ? out.clsAttention : nil)
    }
  }

  /// `group`: under mpirun each process embeds its share of the images; rank 0 gathers them and writes the file.
  public static func run(_ c: EmbedConfig, group: ProcessGroup = .single,
                         log sink: @escaping @Sendable (String) -> Void = { print($0) }) throws -> EmbedSummary {
    let (warn, log) = group.logs(sink)
    if let n = c.limit { guard n > 0 else { throw InvalidSetting("embed: --images must be positive (got \(n))") } }
    guard c.batchSize > 0 else { throw InvalidSetting("embed: --batch-size must be positive (got \(c.batchSize))") }
    guard c.maxUnreadableFraction >= 0 && c.maxUnreadableFraction <= 1 else {
      throw InvalidSetting("embed: --max-unreadable must be in [0, 1] (got \(c.maxUnreadableFraction))")
    }
    let (model, runData) = try Self.model(c, log: log)
    guard model.imageSize > 0, model.imageSize % model.patchSize == 0 else {
      throw InvalidSetting("embed: --image-size \(model.imageSize) must be a positive multiple of the model's patch "
        + "size \(model.patchSize)")
    }
    guard let dataDir = c.dataDir ?? runData else {
      throw InvalidSetting("embed: give --data-dir (an image folder or an IDX folder)")
    }
    guard c.split == "train" || c.split == "test" else {
      throw InvalidSetting("embed: the split must be train or test (got \(c.split))")
    }
    let data = try DatasetLoader.open(dataDir, split: c.split)
    let size = model.imageSize, n = min(c.limit ?? data.count, data.count)
    guard n > 0, c.batchSize > 0, size > 0 else {
      throw InvalidSetting("embed: nothing to do (\(n) images, batch \(c.batchSize), size \(size))")
    }
    log("embedding \(n) images of \(dataDir) (\(c.split)) at \(size) px with the \(model.describe)")

    var rows: [Tensor] = [], attentions: [Tensor] = [], kept: [Int] = [], skipped: [String] = []
    var pending: [(Int, DecodedImage?)] = []
    let idx = data as? IDXDataset
    func flush() {
      guard !pending.isEmpty else { return }
      let ids = pending.map(\.0)
      let x: Tensor
      if let idx {
        x = idx.batch(ids, size: size)
      } else {
        x = Tensor(uninitialized: [ids.count, 3, size, size])
        for (b, (_, img)) in pending.enumerated() {
          Transforms.normalize(Transforms.evaluation(img!, size: size), into: x.data + b * 3 * size * size)
        }
      }
      let (f, a) = model.encode(x, c.attention)
      rows.append(pool(f, c.tokens))
      if let a { attentions.append(a) }
      kept += ids
      pending.removeAll()
    }
    for i in group.shard(n) {
      if idx != nil {
        pending.append((i, nil))
      } else {
        do { pending.append((i, try data.load(i))) } catch {
          skipped.append(data.describe(i))
          warn("skipping unreadable image \(data.describe(i)): \(error)")
          guard Double(skipped.count) <= c.maxUnreadableFraction * Double(n) else {
            throw InvalidSetting("embed: \(skipped.count) of \(n) images could not be read (more than "
              + "--max-unreadable \(c.maxUnreadableFraction)); the last: \(data.describe(i))")
          }
        }
      }
      if pending.count == c.batchSize { flush() }
    }
    flush()
    let local = rows.isEmpty ? Tensor(zeros: [0] + pooledShape(c.tokens, model, size: size)) : Tensor(stackingRows: rows)
    let features = try group.allGatherRows(local, rowShape: Array(local.shape.dropFirst()))
    var attention: Tensor? = nil
    if c.attention {
      let l = (size / model.patchSize) * (size / model.patchSize)
      let a = attentions.isEmpty ? Tensor(zeros: [0, l]) : Tensor(stackingRows: attentions)
      attention = try group.allGatherRows(a, rowShape: [l])
    }
    let shared = try group.allGather(try JSONEncoder().encode([kept.map(String.init), skipped]))
      .map { try JSONDecoder().decode([[String]].self, from: $0) }
    kept = shared.flatMap { $0[0].compactMap { Int($0) } }
    skipped = shared.flatMap { $0[1] }
    guard Double(skipped.count) <= c.maxUnreadableFraction * Double(n) else {
      throw InvalidSetting("embed: \(skipped.count) of \(n) images could not be read (more than "
        + "--max-unreadable \(c.maxUnreadableFraction)); the last: \(skipped.last!)")
    }

    let names = kept.map { i -> String in
      if let folder = data as? ImageFolder {
        let p = folder.paths[i], root = folder.root.path + "/"
        return p.hasPrefix(root) ? String(p.dropFirst(root.count)) : p
      }
      return "\(c.split == "train" ? "train" : "t10k")[\(i)]"
    }
    func json(_ v: Any) throws -> String {
      String(decoding: try JSONSerialization.data(withJSONObject: v, options: [.withoutEscapingSlashes]), as: UTF8.self)
    }
    var w = SafeTensorsWriter(metadata: [
      "format": "pt", "generator": "milan embed", "source": model.describe, "tokens": c.tokens.rawValue,
      "image_size": String(size), "data": dataDir, "split": c.split, "files": try json(names),
      "classes": try json(data.classNames), "skipped": try json(skipped),
    ])
    try w.add(name: "features", tensor: features)
    try w.add(name: "labels", indices: IndexTensor(shape: [kept.count], values: kept.map { data.label($0) }))
    try w.add(name: "indices", indices: IndexTensor(shape: [kept.count], values: kept))
    if let attention { try w.add(name: "cls_attention", tensor: attention) }
    if group.rank == 0 { try w.write(to: URL(fileURLWithPath: c.output)) }
    try group.barrier()
    return EmbedSummary(count: kept.count, shape: features.shape, skipped: skipped, source: model.describe)
  }

  /// The shape of one row of `features`.
  static func pooledShape(_ tokens: EmbedConfig.Tokens, _ m: Model, size: Int) -> [Int] {
    let l = (size / m.patchSize) * (size / m.patchSize)
    return tokens == .all ? [1 + l, m.width] : [m.width]
  }

  /// [B, 1 + L, D] → [B, D] (class token or mean of patches) or unchanged (all tokens).
  static func pool(_ f: Tensor, _ tokens: EmbedConfig.Tokens) -> Tensor {
    let b = f.shape[0], l1 = f.shape[1], d = f.shape[2]
    switch tokens {
    case .all: return f
    case .cls:
      let out = Tensor(uninitialized: [b, d])
      for i in 0..<b { (out.data + i * d).update(from: f.data + i * l1 * d, count: d) }
      return out
    case .mean:
      let out = Tensor(zeros: [b, d])
      for i in 0..<b {
        for t in 1..<l1 { for j in 0..<d { out.data[i * d + j] += f.data[(i * l1 + t) * d + j] } }
        for j in 0..<d { out.data[i * d + j] /= Float(l1 - 1) }
      }
      return out
    }
  }

}
