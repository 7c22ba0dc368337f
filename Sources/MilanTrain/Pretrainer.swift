// The MILAN pretraining engine (mirrors MAE/MILAN engine_pretrain.py + main_pretrain.py) on the shared
// TrainingLoop: a frozen teacher gives per-token targets and the class attention; semantic-aware (or random)
// masking; the student's encoder and decoder; the objective of the model's configuration (MILANModel.loss); AdamW
// with MAE's weight-decay groups and per-iteration warmup + half-cosine learning rate; gradient accumulation and
// optional clipping; staged checkpoints at every epoch end and on Ctrl-C; a JSON-lines log.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanNN
import MilanTensor

public enum PretrainError: Error, CustomStringConvertible {
  case gridMismatch(student: Int, teacher: Int, teacherPatch: Int, teacherImageSize: Int)
  case invalidConfig(String)
  case resumeMismatch(String)

  public var description: String {
    switch self {
    case .gridMismatch(let s, let t, let p, let size):
      return "pretrain: the student's token grid (\(s)×\(s)) must equal the teacher's (\(t)×\(t) at teacherImageSize "
        + "\(size) with patch \(p)); leave teacherImageSize out to use \(s * p), or change the image or patch size"
    case .invalidConfig(let m): return "pretrain: invalid configuration: \(m)"
    case .resumeMismatch(let m): return "pretrain --resume: \(m)"
    }
  }
}

/// A pretraining checkpoint's state.json: where the run stands and its resolved configuration.
public struct TrainState: Codable, Sendable, Equatable {
  public var loop: LoopState
  public var config: PretrainConfig

  public init(loop: LoopState, config: PretrainConfig) {
    self.loop = loop
    self.config = config
  }

  public var epoch: Int { loop.epoch }
  public var step: Int { loop.step }
  public var iteration: Int { loop.iteration }
  public var rng: SplitMix64 { loop.rng }
  public var lastLoss: Double? { loop.lastLoss }

  enum CodingKeys: String, CodingKey { case config }

  /// One flat object: the loop's fields (epoch, step, iteration, epochRNG, rng, lastLoss, epochLossSum) and config.
  public init(from decoder: Decoder) throws {
    loop = try LoopState(from: decoder)
    config = try decoder.container(keyedBy: CodingKeys.self).decode(PretrainConfig.self, forKey: .config)
  }

  public func encode(to encoder: Encoder) throws {
    try loop.encode(to: encoder)
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(config, forKey: .config)
  }

  /// Reads `dir/state.json`; the error names the file.
  public static func read(_ dir: URL) throws -> TrainState {
    let url = dir.appendingPathComponent("state.json")
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
      throw CheckpointError(message: "cannot read \(url.path): \(osErrorDescription(error)) (not a milan pretrain "
        + "output folder?)")
    }
    let state: TrainState
    do { state = try JSONDecoder().decode(TrainState.self, from: data) } catch let e as DecodingError {
      throw CheckpointError(message: "\(url.path): \(describe(e, data: data))")
    }
    // Every command that reads a run builds its model from this configuration: an edited one is refused here.
    do { try state.config.validate() } catch { throw CheckpointError(message: "\(url.path): \(error)") }
    return state
  }
}

public final class Pretrainer: @unchecked Sendable {
  /// The resolved configuration: augmentation, teacher input size and prediction size filled in, the teacher
  /// recorded.
  public let config: PretrainConfig
  public let model: MILANModel
  public let optimizer: AdamW
  /// nil when the run needs none (pixel target with random masking).
  public let teacher: (any Teacher)?
  public let data: any ImageDataset
  public let loader: SafeImageLoader
  public let group: ProcessGroup
  let log: @Sendable (String) -> Void
  /// Checked after every iteration; true makes the run save a checkpoint and return (Ctrl-C, SIGTERM, tests).
  public var shouldStop: () -> Bool = { StopSignal.requested }
  /// Whether the last `run` ended early because `shouldStop` said so.
  public private(set) var interrupted = false

  /// `teacher`: a teacher object to use instead of reading `c.teacherPath` (tests); recorded as in-memory.
  /// `group`: the processes training together (mpirun's ranks): `c.batchSize` is each one's batch; only rank 0 logs.
  public init(_ c: PretrainConfig, teacher given: (any Teacher)? = nil, group: ProcessGroup = .single,
              log: @escaping @Sendable (String) -> Void = { print($0) }) throws {
    var c = c
    c.processes = group.size
    try c.validate()
    self.group = group
    let (warn, lead) = group.logs(log)
    self.log = lead
    c.dataDir = URL(fileURLWithPath: c.dataDir).standardizedFileURL.path  // recorded absolute in state.json
    data = try DatasetLoader.open(c.dataDir)
    if let n = c.trainImages, n > data.count {
      throw PretrainError.invalidConfig("trainImages (--train-images) \(n) is more than the \(data.count) images in "
        + "\(c.dataDir)")
    }
    loader = SafeImageLoader(dataset: data, maxUnreadableFraction: c.maxUnreadableFraction, warn: warn)
    if let folder = data as? ImageFolder {
      self.log("data: \(folder.count) images in \(folder.classNames.count) classes under \(folder.root.path)"
        + (folder.ignoredFiles.isEmpty ? "" : " (\(folder.ignoredFiles.count) files of other types ignored)"))
      for entry in folder.skippedEntries.prefix(5) { warn("data: skipped \(entry)") }
      if folder.skippedEntries.count > 5 { warn("data: \(folder.skippedEntries.count - 5) more entries skipped") }
    }
    if c.augment == nil { c.augment = !(data is IDXDataset) }

    // The teacher: given, as recorded by the run being resumed, or from the file.
    var spec: TeacherSpec? = nil
    if let given {
      teacher = given
      spec = TeacherSpec(format: .inMemory, path: "", sha256: "", architecture: given.architecture)
    } else if c.needsTeacher {
      let loaded = try c.teacher.map { try TeacherFile.load(recorded: $0, override: c.teacherPath.isEmpty ? nil : c.teacherPath) }
        ?? TeacherFile.load(c.teacherPath.isEmpty ? PretrainConfig.defaultTeacherPath : c.teacherPath)
      teacher = loaded.teacher
      spec = loaded.spec
    } else {
      teacher = nil
    }
    if let teacher, var s = spec {
      let sGrid = c.imageSize / c.model.encoder.patchSize
      let tSize = c.teacherImageSize ?? sGrid * teacher.patchSize
      guard tSize % teacher.patchSize == 0, tSize / teacher.patchSize == sGrid else {
        throw PretrainError.gridMismatch(student: sGrid, teacher: tSize / teacher.patchSize,
                                         teacherPatch: teacher.patchSize, teacherImageSize: tSize)
      }
      c.teacherImageSize = tSize
      s.inputSize = tSize
      c.teacher = s
      c.teacherPath = s.path
    }
    do {
      c.model = try c.model.resolved(teacherFeatures: teacher?.featureDim)
    } catch { throw PretrainError.invalidConfig("\(error)") }
    config = c
    model = MILANModel(c.model, seed: c.seed)
    optimizer = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: c.weightDecay),
                      lr: Float(c.lr), beta1: 0.9, beta2: 0.95)
    if let s = c.teacher { self.log("teacher: \(s.summary)") }
  }

  /// The seeded subset of training images (dataset indices).
  func trainingIndices() -> [Int] { config.trainingIndices(datasetCount: data.count) }

  /// Images `indices` resized (no augmentation) to `size`: IDX digits by the bicubic float path of the demo,
  /// decoded files by Resize + CenterCrop. Unreadable files are replaced by the next readable image.
  func plainBatch(_ indices: [Int], size: Int) throws -> Tensor {
    if let idx = data as? IDXDataset { return idx.batch(indices, size: size) }
    return Transforms.batch(try indices.map { try loader.load($0).image }, size: size)
  }

  /// Teacher targets for every training image, computed once (used when there is no augmentation); each process
  /// computes its share and the shares are gathered.
  func teacherTargets(_ teacher: any Teacher, _ all: [Int]) throws -> TeacherOutput {
    let indices = Array(all[group.shard(all.count)])
    let local = try teacherTargetsLocal(teacher, indices, total: all.count)
    let l = config.model.encoder.numPatches, c = teacher.featureDim
    return TeacherOutput(features: try group.allGatherRows(local.features, rowShape: [l + 1, c]),
                         clsAttention: try group.allGatherRows(local.clsAttention, rowShape: [l]))
  }

  func teacherTargetsLocal(_ teacher: any Teacher, _ indices: [Int], total: Int) throws -> TeacherOutput {
    let n = indices.count, l = config.model.encoder.numPatches, c = teacher.featureDim
    let feats = Tensor(uninitialized: [n, l + 1, c]), attn = Tensor(uninitialized: [n, l])
    let chunk = 64
    let t0 = Date()
    for s in stride(from: 0, to: n, by: chunk) {
      let ids = Array(indices[s..<min(s + chunk, n)])
      let out = teacher.encode(try plainBatch(ids, size: config.teacherImageSize!))
      (feats.data + s * (l + 1) * c).update(from: out.features.data, count: out.features.count)
      (attn.data + s * l).update(from: out.clsAttention.data, count: out.clsAttention.count)
      if s / chunk % 8 == 0 {
        let done = min(s + chunk, n) * group.size
        log(String(format: "teacher targets %d/%d (%.0f img/s)", min(done, total), total,
                   Double(done) / Date().timeIntervalSince(t0)))
      }
    }
    return TeacherOutput(features: feats, clsAttention: attn)
  }

  /// One batch: the student's images and, for the teacher, either its cached outputs (no augmentation) or its
  /// input: the same RandomResizedCrop + flip rendered at the teacher's size. Each image's crop comes from a
  /// generator keyed by (seed, epoch, iteration) and its position in the global batch, so a resumed run, or a run
  /// split over another number of processes, sees the same crops.
  struct Batch: @unchecked Sendable {
    var student: Tensor
    var teacherInput: Tensor?
    var cached: TeacherOutput?
  }

  func augmentedBatch(_ ids: [Int], epoch: Int, iteration: Int, firstSample: Int) throws -> Batch {
    let c = config
    var step = SplitMix64.forStep(seed: c.seed, epoch: epoch, iteration: iteration, stream: 0xBF58_476D_1CE4_E5B9)
    let key = step.next()
    let images = try ids.map { try loader.load($0).image }
    let draws = images.enumerated().map { i, img in
      var rng = SplitMix64.forSample(key: key, sample: firstSample + i)
      return Transforms.drawCrop(height: img.height, width: img.width, scale: c.cropScale[0]...c.cropScale[1],
                                 ratio: c.cropRatio[0]...c.cropRatio[1], rng: &rng)
    }
    return Batch(student: Transforms.batch(images, size: c.imageSize, draws: draws),
                 teacherInput: teacher == nil ? nil : Transforms.batch(images, size: c.teacherImageSize!, draws: draws))
  }

  /// Rows `positions` of cached teacher outputs.
  static func rows(_ t: TeacherOutput, _ positions: [Int]) -> TeacherOutput {
    func pick(_ x: Tensor) -> Tensor {
      let row = x.count / x.shape[0]
      let out = Tensor(uninitialized: [positions.count] + x.shape.dropFirst())
      for (b, i) in positions.enumerated() { (out.data + b * row).update(from: x.data + i * row, count: row) }
      return out
    }
    return TeacherOutput(features: pick(t.features), clsAttention: pick(t.clsAttention))
  }

  /// The masking of one batch: one key from the run's generator, each sample's noise keyed by its global position.
  func masking(importance: Tensor?, batch b: Int, rng: inout SplitMix64, firstSample: Int) throws -> MaskingResult {
    let l = config.model.encoder.numPatches, key = rng.next()
    switch config.masking {
    case .semantic:
      return try Masking.semanticAware(importance: importance!,
                                   expNoise: Masking.expNoise(rows: b, patches: l, key: key, firstSample: firstSample),
                                   maskRatio: config.maskRatio)
    case .random:
      return Masking.random(noise: Masking.uniformNoise(rows: b, patches: l, key: key, firstSample: firstSample),
                            maskRatio: config.maskRatio)
    }
  }

  /// Trains from `start` (nil: a fresh run; else a state `Checkpoint.load` read from the output folder) to the
  /// configured number of epochs.
  @discardableResult
  public func run(from start: TrainState? = nil) throws -> TrainState {
    let c = config
    let out = URL(fileURLWithPath: c.outputDir)
    // Leftovers of a save a crash interrupted (temporary files; a journal's renames) are dealt with before anything
    // is written.
    if group.rank == 0, FileManager.default.fileExists(atPath: out.path) {
      for line in try StagedFile.recover(in: out) { log("checkpoint: \(line)") }
    }
    let indices = trainingIndices()
    guard indices.count >= c.batchSize * c.processes else {
      throw PretrainError.invalidConfig("batchSize \(c.batchSize) × \(c.processes) process(es) is larger than the "
        + "\(indices.count) training images")
    }
    let cached: TeacherOutput? = c.augment == true ? nil : try teacher.map { try teacherTargets($0, indices) }
    if let cached, group.rank == 0, let sha = c.teacher?.sha256, !sha.isEmpty, let size = c.teacherImageSize {
      // Their class tokens are what `milan eval` scores for the teacher baseline: keep them for it. A failed write
      // costs evaluation time only, so it is reported and training goes on.
      let key = TeacherFeatureCache.Key(teacherSHA256: sha, imageSize: size, dataDir: c.dataDir,
                                        datasetCount: data.count,
                                        preprocessing: TeacherFeatureCache.preprocessing(data, evaluation: false))
      do {
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        try TeacherFeatureCache.write(targets: cached.features, indices: indices, key: key, to: out)
      } catch {
        log("could not keep the teacher's features for evaluation (\(error)); `milan eval` will recompute them")
      }
    }
    let schedule = LoopSchedule(epochs: c.epochs, batchSize: c.batchSize, accumulation: c.accumulation) {
      maeLearningRate(epoch: $0, baseLR: c.lr, minLR: c.minLR, warmupEpochs: c.warmupEpochs, epochs: Double(c.epochs))
    }
    let augment = c.augment == true
    // Items are positions in `indices` (the cached targets' rows).
    let loop = TrainingLoop<Batch>(
      name: "pretrain", optimizer: optimizer, namedParameters: model.namedParameters(),
      items: Array(0..<indices.count), schedule: schedule, output: out, group: group,
      makeBatch: { [self] positions, epoch, it, first in
        let ids = positions.map { indices[$0] }
        if augment { return try augmentedBatch(ids, epoch: epoch, iteration: it, firstSample: first) }
        return Batch(student: try plainBatch(ids, size: c.imageSize), teacherInput: nil,
                     cached: cached.map { Self.rows($0, positions) })
      },
      objective: { [self] batch, rng, first in
        let t = batch.cached ?? batch.teacherInput.map { input in Autograd.noGrad { teacher!.encode(input) } }
        let b = batch.student.shape[0]
        let m = try masking(importance: t?.clsAttention, batch: b, rng: &rng, firstSample: first)
        var dropRNG = SplitMix64(seed: rng.next())
        let pred = model.predict(Variable(batch.student), masking: m, rng: &dropRNG, firstSample: first)
        return try model.loss(pred, images: batch.student, teacher: t?.features, masking: m)
      },
      saveCheckpoint: { [self] state in
        try Checkpoint.save(model: model, optimizer: optimizer, state: TrainState(loop: state, config: c), to: out)
      },
      log: log)
    loop.shouldStop = shouldStop
    if let clip = c.gradClip { loop.afterBackward.append(gradientClipping(maxNorm: Float(clip))) }
    loop.logFields = { [loader] in ["unreadable_images": loader.failureCount] }
    loop.epochEnded = { [self] _ in
      if loader.failureCount > 0 {
        log("\(loader.failureCount) unreadable image(s) skipped so far (listed in the warnings above)")
      }
    }
    let final = try loop.run(from: start?.loop ?? LoopState(rng: SplitMix64(seed: c.seed)), resumed: start != nil)
    interrupted = loop.interrupted
    return TrainState(loop: final, config: c)
  }
}

/// A decoding error as a sentence that names the offending key. With the decoded bytes (`data`), an error without a
/// key is told apart: Foundation reports a number that does not fit its field (a negative seed, a fractional count)
/// as "not valid JSON" with no key, though the file is JSON.
public func describe(_ e: DecodingError, data: Data? = nil) -> String {
  func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
  switch e {
  case .keyNotFound(let k, let ctx): return "missing key \(path(ctx.codingPath + [k]))"
  case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
    return "wrong type at \(path(ctx.codingPath)): \(ctx.debugDescription)"
  case .dataCorrupted(let ctx):
    if ctx.codingPath.isEmpty, let data, (try? JSONSerialization.jsonObject(with: data)) != nil {
      return "the file is JSON, but a value does not fit its field (a negative, fractional or too large number where a "
        + "count, size or seed is expected?)"
    }
    if ctx.codingPath.isEmpty { return "not valid JSON (\(ctx.debugDescription))" }
    return "invalid value at \(path(ctx.codingPath)): \(ctx.debugDescription)"
  @unknown default: return String(describing: e)
  }
}
