// End-to-end finetuning as MAE/MILAN's main_finetune.py (reference-milan.md §6b): the pretrained encoder with mean
// pooling + fc_norm + a new head (trunc-normal 0.02, as MILAN: MAE's 2e-5 head init is commented out), learned
// position embedding initialised from the sin-cos table; AdamW (0.9, 0.999) with MAE's layer-wise lr decay groups,
// per-iteration warmup then half-cosine to min_lr; drop path; RandomResizedCrop(0.08–1) + flip + RandAugment
// rand-m9-mstd0.5-inc1 + RandomErasing(0.25, pixel); Mixup 0.8 / CutMix 1.0 (batch mode, switch 0.5) with label
// smoothing 0.1 and the soft-target cross-entropy; evaluation with Resize(size/0.875) + CenterCrop, top-1 / top-5.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanNN
import MilanTensor

public struct FinetuneConfig: Codable, Sendable {
  public var checkpoint: String
  public var dataDir: String?
  public var outputDir: String
  public var epochs = 100
  public var warmupEpochs = 5.0
  public var batchSize = 64
  public var blr = 1e-3
  public var minLR = 1e-6
  public var weightDecay: Float = 0.05
  public var layerDecay: Float = 0.75
  public var dropPath: Float = 0.1
  public var mixup: MixupConfig? = MixupConfig()
  /// Label smoothing when Mixup/CutMix is off.
  public var smoothing = 0.1
  public var randAugment = true
  public var reprob = 0.25
  public var cropScale: [Double] = [0.08, 1]
  public var trainImages: Int?
  public var testImages: Int?
  public var evalEvery = 1
  /// Unreadable images tolerated, as a fraction of each split, before the run stops.
  public var maxUnreadableFraction = 0.01
  public var seed: UInt64 = 0
  /// Processes training together (mpirun's ranks; set by the run). `batchSize` is each one's batch.
  public var processes = 1
  /// lr = blr × global batch / 256.
  public var lr: Double { blr * Double(batchSize * processes) / 256 }
  public init(checkpoint: String, outputDir: String) {
    self.checkpoint = checkpoint
    self.outputDir = outputDir
  }

  /// Checks that the numbers make sense together; the message names the field and its flag.
  public func validate() throws {
    func bad(_ m: String) -> FinetuneError { .invalidConfig(m) }
    func unit(_ v: Double, _ name: String, open: Bool = false) throws {
      guard v.isFinite, v >= 0, open ? v < 1 : v <= 1 else {
        throw bad("\(name) must be in [0, 1\(open ? ")" : "]") (got \(v))")
      }
    }
    guard epochs > 0, epochs <= 1_000_000 else { throw bad("epochs (--epochs) must be in 1...1000000 (got \(epochs))") }
    guard batchSize > 0, batchSize <= 1 << 24 else { throw bad("batchSize (--batch-size) must be in 1...\(1 << 24) (got \(batchSize))") }
    guard processes > 0 else { throw bad("processes must be positive (got \(processes))") }
    guard blr.isFinite, blr > 0 else { throw bad("blr (--blr) must be positive (got \(blr))") }
    guard minLR.isFinite, minLR >= 0 else { throw bad("minLR must be finite and ≥ 0 (got \(minLR))") }
    guard warmupEpochs.isFinite, warmupEpochs >= 0, warmupEpochs <= Double(epochs) else {
      throw bad("warmupEpochs (--warmup-epochs) must be in [0, epochs] (got \(warmupEpochs) with \(epochs) epochs)")
    }
    guard weightDecay.isFinite, weightDecay >= 0 else { throw bad("weightDecay must be finite and ≥ 0 (got \(weightDecay))") }
    guard layerDecay.isFinite, layerDecay > 0, layerDecay <= 1 else {
      throw bad("layerDecay (--layer-decay) must be in (0, 1] (got \(layerDecay))")
    }
    try unit(Double(dropPath), "dropPath (--drop-path)", open: true)
    try unit(reprob, "reprob (--reprob)")
    try unit(smoothing, "smoothing", open: true)
    try unit(maxUnreadableFraction, "maxUnreadableFraction (--max-unreadable)")
    if let m = mixup {
      // timm's Mixup asserts the same: at least one of the two is on.
      guard m.mixupAlpha.isFinite, m.mixupAlpha >= 0, m.cutmixAlpha.isFinite, m.cutmixAlpha >= 0,
            m.mixupAlpha > 0 || m.cutmixAlpha > 0 else {
        throw bad("mixup.mixupAlpha and mixup.cutmixAlpha must be finite and ≥ 0, one of them > 0 (got \(m.mixupAlpha), "
          + "\(m.cutmixAlpha)); turn Mixup off with --no-mixup")
      }
      try unit(m.prob, "mixup.prob")
      try unit(m.switchProb, "mixup.switchProb")
      try unit(m.labelSmoothing, "mixup.labelSmoothing", open: true)
    }
    guard cropScale.count == 2, cropScale[0] > 0, cropScale[0] <= cropScale[1], cropScale[1] <= 1 else {
      throw bad("cropScale must be [lo, hi] with 0 < lo ≤ hi ≤ 1 (got \(cropScale))")
    }
    if let n = trainImages { guard n > 0 else { throw bad("trainImages (--train-images) must be positive (got \(n))") } }
    if let n = testImages { guard n > 0 else { throw bad("testImages (--test-images) must be positive (got \(n))") } }
    guard evalEvery > 0 else { throw bad("evalEvery must be positive (got \(evalEvery))") }
  }
}

/// Where a finetuning run stands (finetune-state.json): the loop's state and the scores so far.
public struct FinetuneState: Codable, Sendable {
  public var loop: LoopState
  public var best: ClassificationScore
  public var last: ClassificationScore
  public var trainLoss: Double
}

public struct FinetuneResult: Codable, Sendable {
  public var epochs: Int
  public var test: ClassificationScore
  public var best: ClassificationScore
  public var trainLoss: Double
}

public enum FinetuneError: Error, CustomStringConvertible {
  case unexpectedMissingKeys([String])
  case oddBatch(Int)
  case invalidConfig(String)

  public var description: String {
    switch self {
    case .unexpectedMissingKeys(let k):
      return "finetune: the checkpoint lacks encoder weights: \(k.joined(separator: ", ")) (only fc_norm and head may be new)"
    case .oddBatch(let b): return "finetune: Mixup/CutMix pairs each image with its mirror in the batch; the batch size must be even (got \(b))"
    case .invalidConfig(let m): return "finetune: invalid configuration: \(m)"
    }
  }
}

public final class Finetuner: @unchecked Sendable {
  public let config: FinetuneConfig
  public let model: VisionTransformer
  public let optimizer: AdamW
  let train: EvalImages, test: EvalImages
  let imageSize: Int
  public let group: ProcessGroup
  let log: @Sendable (String) -> Void
  public private(set) var interrupted = false
  public var shouldStop: () -> Bool = { StopSignal.requested }

  /// `group`: the processes training together (mpirun's ranks): `c.batchSize` is each one's batch; only rank 0 logs.
  public init(_ c: FinetuneConfig, group: ProcessGroup = .single, log: @escaping @Sendable (String) -> Void = { print($0) }) throws {
    try c.validate()
    if c.mixup != nil && c.batchSize % 2 != 0 { throw FinetuneError.oddBatch(c.batchSize) }
    var c = c
    c.processes = group.size
    config = c
    self.group = group
    let (warn, lead) = group.logs(log)
    self.log = lead
    let dir = URL(fileURLWithPath: c.checkpoint)
    let state = try TrainState.read(dir)
    let dataDir = c.dataDir ?? state.config.dataDir
    train = EvalImages(try DatasetLoader.open(dataDir, split: "train"), maxUnreadableFraction: c.maxUnreadableFraction, warn: warn)
    test = EvalImages(try DatasetLoader.open(dataDir, split: "test"), maxUnreadableFraction: c.maxUnreadableFraction, warn: warn)
    for (n, split, flag) in [(c.trainImages, train, "trainImages (--train-images)"), (c.testImages, test, "testImages (--test-images)")] {
      if let n, n > split.dataset.count {
        throw FinetuneError.invalidConfig("\(flag) \(n) is more than the \(split.dataset.count) images of that split in \(dataDir)")
      }
    }
    var enc = state.config.model.encoder
    enc.globalPool = .avg
    enc.numClasses = max(train.classes, test.classes)
    enc.dropPathRate = c.dropPath
    enc.fixedSinCosPosEmbed = false
    imageSize = enc.imageSize
    model = VisionTransformer(enc, seed: c.seed)
    let weights = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors")).tensors()
    let own = Set(model.namedParameters().map(\.0))
    let missing = own.subtracting(weights.keys).sorted()
    guard Set(missing) == ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"] else {
      throw FinetuneError.unexpectedMissingKeys(missing.filter { !$0.hasPrefix("fc_norm") && !$0.hasPrefix("head") })
    }
    try model.load(weights.filter { own.contains($0.key) }, strict: false)
    optimizer = AdamW(groups: ParamGroup.layerDecayGroups(model.namedParameters(), depth: enc.depth,
                                                          weightDecay: c.weightDecay, layerDecay: c.layerDecay),
                      lr: Float(c.lr), beta1: 0.9, beta2: 0.999)
    self.log("finetune: \(model.parameterCount) parameters, \(enc.numClasses) classes, lr \(c.lr), layer decay "
      + "\(c.layerDecay), drop path \(c.dropPath), \(c.epochs) epochs")
  }

  struct Batch: @unchecked Sendable {
    var images: Tensor
    var targets: Tensor
  }

  /// The augmented batch of `ids`: each image's crop, RandAugment and erasing from a generator keyed by (seed,
  /// epoch, iteration) and its global position `firstSample + b`, the same wherever the batch is split. Mixup /
  /// CutMix draws once per step (the same λ and box on every process) and pairs images within this process's batch,
  /// as timm's Mixup under DDP does: with Mixup a split run is not the single-process run.
  func trainBatch(_ ids: [Int], epoch: Int, iteration: Int, firstSample: Int) throws -> Batch {
    let c = config
    var rng = SplitMix64.forStep(seed: c.seed, epoch: epoch, iteration: iteration, stream: 0xD1B5_4A32_D192_ED03)
    let key = rng.next()
    let size = imageSize
    let x = Tensor(uninitialized: [ids.count, 3, size, size])
    let erase = RandomErasing(probability: c.reprob)
    let ra = RandAugment()
    var labels: [Int] = []
    for (b, i) in ids.enumerated() {
      var rng = SplitMix64.forSample(key: key, sample: firstSample + b)
      let (used, img) = try train.loader.load(i)
      labels.append(train.dataset.label(used))
      let d = Transforms.drawCrop(height: img.height, width: img.width, scale: c.cropScale[0]...c.cropScale[1],
                                  ratio: (3.0 / 4)...(4.0 / 3), rng: &rng)
      var view = Transforms.apply(d, to: img, size: size)
      if c.randAugment { view = ra(view, rng: &rng) }
      let dst = x.data + b * 3 * size * size
      Transforms.normalize(view, into: dst)
      if c.reprob > 0 { erase.apply(dst, channels: 3, height: size, width: size, rng: &rng) }
    }
    let k = model.config.numClasses
    if let m = c.mixup {
      let draw = Mixup.draw(m, height: size, width: size, rng: &rng)
      return Batch(images: x, targets: Mixup.apply(draw, images: x, labels: labels, classes: k, smoothing: m.labelSmoothing).targets)
    }
    return Batch(images: x, targets: Mixup.targets(labels: labels, classes: k, lambda: 1, smoothing: c.smoothing))
  }

  /// Top-1 / top-5 of the current model on `indices` of the test split (evaluation transform); each process scores
  /// its share and the logits are gathered.
  public func evaluate(_ indices: [Int]) throws -> ClassificationScore {
    let k = model.config.numClasses
    let mine = Array(indices[group.shard(indices.count)])
    let logits = Tensor(uninitialized: [mine.count, k])
    var rng = SplitMix64(seed: 0)
    for s in stride(from: 0, to: mine.count, by: 128) {
      let ids = Array(mine[s..<min(s + 128, mine.count)])
      let out = try Autograd.noGrad { model(Variable(try test.batch(ids, size: imageSize)), training: false, rng: &rng) }
      (logits.data + s * k).update(from: out.value.data, count: out.count)
    }
    return LinearProbe.score(logits: try group.allGatherRows(logits, rowShape: [k]), labels: test.labels(indices))
  }

  /// Trains to `config.epochs` on the shared TrainingLoop; with `resume`, continues from the checkpoint in the
  /// output folder (classifier.safetensors, finetune-optimizer.safetensors, finetune-state.json, written as one unit
  /// at every epoch end and on Ctrl-C) exactly as an uninterrupted run would. log.jsonl gets a line per iteration.
  public func run(resume: Bool = false) throws -> FinetuneResult {
    let c = config
    let out = URL(fileURLWithPath: c.outputDir)
    var rng = SplitMix64(seed: c.seed ^ 0xF1E7)
    var pool = Array(0..<train.dataset.count)
    pool.shuffle(using: &rng)
    let trainIdx = Array(pool.prefix(c.trainImages ?? pool.count))
    var tpool = Array(0..<test.dataset.count)
    tpool.shuffle(using: &rng)
    let testIdx = Array(tpool.prefix(c.testImages ?? tpool.count))
    let steps = trainIdx.count / (c.batchSize * group.size)
    guard steps > 0 else {
      throw TrainingError.tooFewItems(run: "finetune", items: trainIdx.count, batchSize: c.batchSize * group.size)
    }
    var best = ClassificationScore(top1: 0, top5: 0, loss: .infinity, count: 0)
    var last = best
    var trainLoss = 0.0
    var start = LoopState(rng: rng)
    if resume {
      for line in try StagedFile.recover(in: out) { log("checkpoint: \(line)") }
      let url = out.appendingPathComponent("finetune-state.json")
      let s: FinetuneState
      do { s = try JSONDecoder().decode(FinetuneState.self, from: Data(contentsOf: url)) } catch {
        throw CheckpointError(message: "cannot resume from \(url.path): \(error)")
      }
      try model.load(try SafeTensorsFile(contentsOf: out.appendingPathComponent("classifier.safetensors")).tensors())
      try Checkpoint.loadOptimizer(optimizer, parameters: model.trainableParameters(),
                                   from: out.appendingPathComponent("finetune-optimizer.safetensors"))
      (start, best, last, trainLoss) = (s.loop, s.best, s.last, s.trainLoss)
      log("resuming finetuning at epoch \(start.epoch + 1), iteration \(start.iteration) (optimizer step "
        + "\(optimizer.stepCount))")
    }
    let t0 = Date()
    let schedule = LoopSchedule(epochs: c.epochs, batchSize: c.batchSize) {
      maeLearningRate(epoch: $0, baseLR: c.lr, minLR: c.minLR, warmupEpochs: c.warmupEpochs, epochs: Double(c.epochs))
    }
    let loop = TrainingLoop<Batch>(
      name: "finetune", optimizer: optimizer, namedParameters: model.namedParameters(), items: trainIdx,
      schedule: schedule, output: out, group: group,
      makeBatch: { [self] ids, epoch, it, first in try trainBatch(ids, epoch: epoch, iteration: it, firstSample: first) },
      objective: { [self] b, rng, first in
        var dropRNG = SplitMix64(seed: rng.next())
        return softCrossEntropy(model(Variable(b.images), training: true, rng: &dropRNG, firstSample: first),
                                targets: b.targets)
      },
      saveCheckpoint: { [self] state in
        // Weights, optimizer and state as one unit (all written before any is renamed; the state last), so a
        // failed save keeps the previous three files.
        let st = FinetuneState(loop: state, best: best, last: last, trainLoss: trainLoss)
        let classifier = try classifierWriter(), moments = try Checkpoint.optimizerWriter(optimizer)
        let stateJSON = try JSONEncoder().encode(st)
        try StagedFile.commitAll([
          { try classifier.stage(at: out.appendingPathComponent("classifier.safetensors")) },
          { try moments.stage(at: out.appendingPathComponent("finetune-optimizer.safetensors")) },
          { try StagedFile.stage(stateJSON, at: out.appendingPathComponent("finetune-state.json")) },
        ])
      },
      log: log)
    loop.shouldStop = shouldStop
    loop.progressEvery = max(10, steps / 4)
    loop.logFields = { [self] in ["unreadable_images": train.loader.failureCount] }
    loop.epochEnded = { [self] s in
      trainLoss = s.epochLossSum / Double(steps)
      if (s.epoch + 1) % c.evalEvery == 0 || s.epoch == c.epochs - 1 {
        last = try evaluate(testIdx)
        if last.top1 > best.top1 { best = last }
        log(String(format: "finetune epoch %d/%d: train loss %.4f, test top-1 %.2f %% top-5 %.2f %% (%.0f s)",
                   s.epoch + 1, c.epochs, trainLoss, last.top1 * 100, last.top5 * 100, Date().timeIntervalSince(t0)))
      }
    }
    let final = try loop.run(from: start, resumed: resume)
    interrupted = loop.interrupted
    if interrupted {
      return FinetuneResult(epochs: final.epoch, test: last, best: best, trainLoss: trainLoss)
    }
    let result = FinetuneResult(epochs: c.epochs, test: last, best: best, trainLoss: trainLoss)
    if group.rank == 0 {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      try enc.encode(result).write(to: out.appendingPathComponent("finetune.json"), options: .atomic)
    }
    return result
  }

  /// The classifier under timm's names (`vit_*` with global_pool="avg"), atomically.
  public func save(to dir: URL) throws {
    try classifierWriter().write(to: dir.appendingPathComponent("classifier.safetensors"))
  }

  func classifierWriter() throws -> SafeTensorsWriter {
    let sorted = JSONEncoder()
    sorted.outputFormatting = [.sortedKeys]  // deterministic bytes: equal runs give equal files
    let cfg = String(decoding: try sorted.encode(model.config), as: UTF8.self)
    var w = SafeTensorsWriter(metadata: ["format": "pt", "milan.vit_config": cfg])
    for (k, p) in model.namedParameters() { try w.add(name: k, tensor: p.value) }
    return w
  }
}

public enum Classifier {
  /// A classifier written by `Finetuner.save` (timm names, `milan.vit_config` metadata).
  public static func load(_ url: URL) throws -> VisionTransformer {
    let f = try SafeTensorsFile(contentsOf: url)
    guard let json = f.metadata["milan.vit_config"] else {
      throw InvalidSetting("\(url.path) has no milan.vit_config metadata (not written by milan finetune)")
    }
    let model = VisionTransformer(try JSONDecoder().decode(ViTConfig.self, from: Data(json.utf8)))
    try model.load(try f.tensors())
    return model
  }

  /// Top-1 / top-5 / loss on the first `limit` images of the test split (all by default), evaluation transform.
  public static func score(_ model: VisionTransformer, data: EvalImages, limit: Int? = nil) throws -> ClassificationScore {
    let n = min(limit ?? data.dataset.count, data.dataset.count)
    let k = model.config.numClasses, size = model.config.imageSize
    let logits = Tensor(uninitialized: [n, k])
    var rng = SplitMix64(seed: 0)
    for s in stride(from: 0, to: n, by: 128) {
      let ids = Array(s..<min(s + 128, n))
      let out = try Autograd.noGrad { model(Variable(try data.batch(ids, size: size)), training: false, rng: &rng) }
      (logits.data + s * k).update(from: out.value.data, count: out.count)
    }
    return LinearProbe.score(logits: logits, labels: data.labels(Array(0..<n)))
  }
}
