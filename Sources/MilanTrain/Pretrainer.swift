// The MILAN pretraining engine (mirrors MAE/MILAN engine_pretrain.py + main_pretrain.py): a frozen teacher gives
// per-token targets and the class attention; semantic-aware (or random) masking; the student's encoder and decoder;
// the 2 − 2·cos loss; AdamW with MAE's weight-decay groups and per-iteration warmup + half-cosine learning rate;
// gradient accumulation; atomic checkpoints at every epoch end; a JSON-lines log; a non-finite loss stops the run and
// keeps the last good checkpoint.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import MilanAutograd
import MilanData
import MilanModels
import MilanNN
import MilanTensor

public struct PretrainConfig: Codable, Sendable, Equatable {
  public enum MaskingKind: String, Codable, Sendable { case semantic, random }

  public var model: MILANConfig
  /// Student input size; the teacher sees the same crop at `teacherImageSize` (the token grids must match).
  public var imageSize: Int
  public var teacherImageSize: Int
  public var maskRatio: Double = 0.75
  public var masking: MaskingKind = .semantic
  /// Loss on the masked patches only (the paper's option) instead of every token (the released code).
  public var maskedLossOnly: Bool = false
  public var epochs: Int
  public var warmupEpochs: Double
  public var batchSize: Int
  public var accumulation: Int = 1
  /// Base learning rate; the rate used is blr · effective batch / 256 (MAE's rule).
  public var blr: Double
  public var minLR: Double = 0
  public var weightDecay: Float = 0.05
  /// clip_grad_norm_ before each optimizer step (none in the reference recipe).
  public var gradClip: Double? = nil
  /// RandomResizedCrop(scale, ratio, bicubic) + horizontal flip every step, teacher run on the same crops (the
  /// reference recipe). Without it, images are resized once and the teacher's targets are computed once and cached.
  public var augment: Bool = true
  public var cropScale: [Double] = [0.2, 1]
  public var cropRatio: [Double] = [3.0 / 4, 4.0 / 3]
  public var trainImages: Int?
  public var seed: UInt64 = 0
  /// An IDX folder (train-images-idx3-ubyte[.gz]) or an image folder root/<class>/*.jpg|png (or root/train/...).
  public var dataDir: String
  /// Unreadable images tolerated, as a fraction of the dataset, before the run stops.
  public var maxUnreadableFraction: Double = 0.01
  public var teacherPath: String
  public var outputDir: String

  public var effectiveBatch: Int { batchSize * accumulation }
  public var lr: Double { blr * Double(effectiveBatch) / 256 }

  public init(model: MILANConfig, imageSize: Int, teacherImageSize: Int, epochs: Int, warmupEpochs: Double,
              batchSize: Int, blr: Double, trainImages: Int? = nil, dataDir: String, teacherPath: String,
              outputDir: String) {
    self.model = model
    self.imageSize = imageSize
    self.teacherImageSize = teacherImageSize
    self.epochs = epochs
    self.warmupEpochs = warmupEpochs
    self.batchSize = batchSize
    self.blr = blr
    self.trainImages = trainImages
    self.dataDir = dataDir
    self.teacherPath = teacherPath
    self.outputDir = outputDir
  }

  enum CodingKeys: String, CodingKey {
    case model, imageSize, teacherImageSize, maskRatio, masking, maskedLossOnly, epochs, warmupEpochs, batchSize,
         accumulation, blr, minLR, weightDecay, gradClip, augment, cropScale, cropRatio, trainImages, seed, dataDir,
         maxUnreadableFraction, teacherPath, outputDir
  }

  /// Optional fields may be left out of a configuration file (and of older state.json files): they take the
  /// defaults above. Paths may be left out too when the command line gives them.
  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    model = try c.decode(MILANConfig.self, forKey: .model)
    imageSize = try c.decode(Int.self, forKey: .imageSize)
    teacherImageSize = try c.decodeIfPresent(Int.self, forKey: .teacherImageSize) ?? imageSize
    maskRatio = try c.decodeIfPresent(Double.self, forKey: .maskRatio) ?? 0.75
    masking = try c.decodeIfPresent(MaskingKind.self, forKey: .masking) ?? .semantic
    maskedLossOnly = try c.decodeIfPresent(Bool.self, forKey: .maskedLossOnly) ?? false
    epochs = try c.decode(Int.self, forKey: .epochs)
    warmupEpochs = try c.decodeIfPresent(Double.self, forKey: .warmupEpochs) ?? 0
    batchSize = try c.decode(Int.self, forKey: .batchSize)
    accumulation = try c.decodeIfPresent(Int.self, forKey: .accumulation) ?? 1
    blr = try c.decode(Double.self, forKey: .blr)
    minLR = try c.decodeIfPresent(Double.self, forKey: .minLR) ?? 0
    weightDecay = try c.decodeIfPresent(Float.self, forKey: .weightDecay) ?? 0.05
    gradClip = try c.decodeIfPresent(Double.self, forKey: .gradClip)
    // state.json files written before augmentation existed describe runs without it.
    augment = try c.decodeIfPresent(Bool.self, forKey: .augment) ?? false
    cropScale = try c.decodeIfPresent([Double].self, forKey: .cropScale) ?? [0.2, 1]
    cropRatio = try c.decodeIfPresent([Double].self, forKey: .cropRatio) ?? [3.0 / 4, 4.0 / 3]
    trainImages = try c.decodeIfPresent(Int.self, forKey: .trainImages)
    seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? 0
    dataDir = try c.decodeIfPresent(String.self, forKey: .dataDir) ?? ""
    maxUnreadableFraction = try c.decodeIfPresent(Double.self, forKey: .maxUnreadableFraction) ?? 0.01
    teacherPath = try c.decodeIfPresent(String.self, forKey: .teacherPath) ?? ""
    outputDir = try c.decodeIfPresent(String.self, forKey: .outputDir) ?? ""
  }

  /// Checks that the numbers make sense together; the message names the field.
  public func validate() throws {
    func bad(_ m: String) -> PretrainError { .invalidConfig(m) }
    guard epochs > 0 else { throw bad("epochs must be positive (got \(epochs))") }
    guard batchSize > 0, accumulation > 0 else { throw bad("batchSize and accumulation must be positive") }
    guard maskRatio >= 0 && maskRatio < 1 else { throw bad("maskRatio must be in [0, 1) (got \(maskRatio))") }
    guard blr > 0 else { throw bad("blr must be positive (got \(blr))") }
    guard warmupEpochs >= 0 && warmupEpochs <= Double(epochs) else { throw bad("warmupEpochs must be in [0, epochs]") }
    if let g = gradClip { guard g > 0 else { throw bad("gradClip must be positive (got \(g))") } }
    guard cropScale.count == 2, cropScale[0] > 0, cropScale[0] <= cropScale[1], cropScale[1] <= 1 else {
      throw bad("cropScale must be [lo, hi] with 0 < lo ≤ hi ≤ 1 (got \(cropScale))")
    }
    guard cropRatio.count == 2, cropRatio[0] > 0, cropRatio[0] <= cropRatio[1] else {
      throw bad("cropRatio must be [lo, hi] with 0 < lo ≤ hi (got \(cropRatio))")
    }
    guard maxUnreadableFraction >= 0 && maxUnreadableFraction <= 1 else {
      throw bad("maxUnreadableFraction must be in [0, 1]")
    }
    guard imageSize % model.encoder.patchSize == 0, imageSize == model.encoder.imageSize else {
      throw bad("imageSize \(imageSize) must equal the encoder's image size \(model.encoder.imageSize)")
    }
  }

  /// The CPU-scale configuration known to learn (shared/docs/data-and-weights.md): Fashion-MNIST at 32 px, ViT patch
  /// 4 (8×8 grid) width 128 depth 4 heads 4, decoder 96 × 2, DINOv2-S/14 teacher at 112 px (8×8 grid). No
  /// augmentation: 28 px digits-sized images gain little from crops, and cached targets keep it inside 15 minutes.
  public static func fashionDemo(dataDir: String, teacherPath: String, outputDir: String) -> PretrainConfig {
    let encoder = ViTConfig(imageSize: 32, patchSize: 4, embedDim: 128, depth: 4, numHeads: 4)
    var c = PretrainConfig(
      model: MILANConfig(encoder: encoder, decoderDim: 96, decoderDepth: 2, decoderHeads: 4, predictionDim: 384),
      imageSize: 32, teacherImageSize: 112, epochs: 15, warmupEpochs: 1, batchSize: 128, blr: 1e-3 * 256 / 128,
      trainImages: 4000, dataDir: dataDir, teacherPath: teacherPath, outputDir: outputDir)
    c.augment = false
    return c
  }
}

/// SIGINT / SIGTERM set a flag that the training loop checks after every iteration: it then writes a checkpoint
/// (resumable mid-epoch) and returns.
public enum StopSignal {
  nonisolated(unsafe) static var flag: sig_atomic_t = 0
  nonisolated(unsafe) static var installed = false

  public static var requested: Bool { flag != 0 }

  public static func install() {
    guard !installed else { return }
    installed = true
    signal(SIGINT) { _ in StopSignal.flag = 1 }
    signal(SIGTERM) { _ in StopSignal.flag = 1 }
  }
}

public enum PretrainError: Error, CustomStringConvertible {
  case nonFiniteLoss(step: Int, epoch: Int, loss: Float, checkpoint: String?)
  case gridMismatch(student: Int, teacher: Int)
  case invalidConfig(String)
  case featureSizeMismatch(predictionDim: Int, teacher: Int)
  case cannotWrite(path: String, reason: String)

  public var description: String {
    switch self {
    case .nonFiniteLoss(let s, let e, let l, let c):
      return "pretrain: the loss became \(l) at step \(s) (epoch \(e)); stopped. "
        + (c.map { "The last good checkpoint is \($0)." } ?? "No checkpoint had been written yet.")
    case .gridMismatch(let s, let t):
      return "pretrain: the student's token grid (\(s)×\(s)) must equal the teacher's (\(t)×\(t)); "
        + "change the image sizes or the patch size"
    case .invalidConfig(let m): return "pretrain: invalid configuration: \(m)"
    case .featureSizeMismatch(let p, let t):
      return "pretrain: model.predictionDim is \(p) but the teacher's features have \(t) channels"
    case .cannotWrite(let path, let reason):
      return "pretrain: cannot write \(path): \(reason) (is the disk full or the folder read-only?)"
    }
  }
}

public final class Pretrainer: @unchecked Sendable {
  public let config: PretrainConfig
  public let model: MILANModel
  public let optimizer: AdamW
  let teacher: any Teacher
  public let data: any ImageDataset
  public let loader: SafeImageLoader
  let log: @Sendable (String) -> Void
  /// Checked after every iteration; true makes the run save a checkpoint and return (Ctrl-C, SIGTERM, tests).
  public var shouldStop: () -> Bool = { StopSignal.requested }
  /// Whether the last `run` ended early because `shouldStop` said so.
  public private(set) var interrupted = false

  public init(_ c: PretrainConfig, teacher: (any Teacher)? = nil, log: @escaping @Sendable (String) -> Void = { print($0) }) throws {
    try c.validate()
    config = c
    self.log = log
    data = try DatasetLoader.open(c.dataDir)
    loader = SafeImageLoader(dataset: data, maxUnreadableFraction: c.maxUnreadableFraction, warn: { [log] in log($0) })
    if let folder = data as? ImageFolder {
      log("data: \(folder.count) images in \(folder.classNames.count) classes under \(folder.root.path)"
        + (folder.ignoredFiles.isEmpty ? "" : " (\(folder.ignoredFiles.count) files of other types ignored)"))
    }
    self.teacher = try teacher ?? DINOv2ONNX.load(URL(fileURLWithPath: c.teacherPath))
    let tGrid = c.teacherImageSize / self.teacher.patchSize, sGrid = c.imageSize / c.model.encoder.patchSize
    guard tGrid == sGrid else { throw PretrainError.gridMismatch(student: sGrid, teacher: tGrid) }
    guard c.model.predictionDim == self.teacher.featureDim else {
      throw PretrainError.featureSizeMismatch(predictionDim: c.model.predictionDim, teacher: self.teacher.featureDim)
    }
    model = MILANModel(c.model, seed: c.seed)
    optimizer = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: c.weightDecay),
                      lr: Float(c.lr), beta1: 0.9, beta2: 0.95)
  }

  /// Images `indices` resized (no augmentation) to `size`: IDX digits by the bicubic float path of the demo,
  /// decoded files by Resize + CenterCrop. Unreadable files are replaced by the next readable image.
  func plainBatch(_ indices: [Int], size: Int) throws -> Tensor {
    if let idx = data as? IDXDataset { return idx.batch(indices, size: size) }
    return Transforms.batch(try indices.map { try loader.load($0).image }, size: size)
  }

  /// Teacher targets for every training image, computed once (used when there is no augmentation).
  func teacherTargets(_ indices: [Int]) throws -> (features: Tensor, attention: Tensor) {
    let n = indices.count, l = (config.imageSize / config.model.encoder.patchSize)
    let c = teacher.featureDim
    let feats = Tensor(uninitialized: [n, l * l + 1, c]), attn = Tensor(uninitialized: [n, l * l])
    let chunk = 64
    let t0 = Date()
    for s in stride(from: 0, to: n, by: chunk) {
      let ids = Array(indices[s..<min(s + chunk, n)])
      let out = teacher.encode(try plainBatch(ids, size: config.teacherImageSize))
      (feats.data + s * (l * l + 1) * c).update(from: out.features.data, count: out.features.count)
      (attn.data + s * l * l).update(from: out.clsAttention.data, count: out.clsAttention.count)
      if s / chunk % 8 == 0 {
        log(String(format: "teacher targets %d/%d (%.0f img/s)", min(s + chunk, n), n,
                   Double(min(s + chunk, n)) / Date().timeIntervalSince(t0)))
      }
    }
    return (feats, attn)
  }

  /// One augmented batch: the same RandomResizedCrop + flip rendered for the student and for the teacher. The
  /// draws come from a generator seeded by (seed, epoch, iteration), so a resumed run sees the same crops.
  struct AugmentedBatch: @unchecked Sendable {
    var student: Tensor
    var teacher: Tensor
  }

  func augmentedBatch(_ ids: [Int], epoch: Int, iteration: Int) throws -> AugmentedBatch {
    let c = config
    var rng = SplitMix64.forStep(seed: c.seed, epoch: epoch, iteration: iteration, stream: 0xBF58_476D_1CE4_E5B9)
    let images = try ids.map { try loader.load($0).image }
    let draws = images.map {
      Transforms.drawCrop(height: $0.height, width: $0.width, scale: c.cropScale[0]...c.cropScale[1],
                          ratio: c.cropRatio[0]...c.cropRatio[1], rng: &rng)
    }
    return AugmentedBatch(student: Transforms.batch(images, size: c.imageSize, draws: draws),
                          teacher: Transforms.batch(images, size: c.teacherImageSize, draws: draws))
  }

  /// Trains from `start` (a fresh state, or one loaded by `Checkpoint.load`) to the configured number of epochs.
  @discardableResult
  public func run(from start: TrainState? = nil) throws -> TrainState {
    let c = config
    let out = URL(fileURLWithPath: c.outputDir)
    try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
    let logURL = out.appendingPathComponent("log.jsonl")
    if !FileManager.default.fileExists(atPath: logURL.path),
       !FileManager.default.createFile(atPath: logURL.path, contents: nil) {
      throw PretrainError.cannotWrite(path: logURL.path, reason: "the file cannot be created")
    }
    let logFile = try FileHandle(forWritingTo: logURL)
    defer { try? logFile.close() }
    try logFile.seekToEnd()

    var subsetRNG = SplitMix64(seed: c.seed ^ 0x5EED)
    var pool = Array(0..<data.count)
    pool.shuffle(using: &subsetRNG)
    let indices = Array(pool.prefix(c.trainImages ?? data.count))
    guard indices.count >= c.batchSize else {
      throw PretrainError.invalidConfig("batchSize \(c.batchSize) is larger than the \(indices.count) training images")
    }
    let targets = c.augment ? nil : try teacherTargets(indices)
    let l = (c.imageSize / c.model.encoder.patchSize) * (c.imageSize / c.model.encoder.patchSize)
    let featDim = teacher.featureDim
    let stepsPerEpoch = indices.count / c.batchSize
    var state = start ?? TrainState(epoch: 0, step: 0, rng: SplitMix64(seed: c.seed), config: c, lastLoss: nil)
    var lastCheckpoint: String? = start == nil ? nil : out.path
    let t0 = Date()
    var images = 0
    let trainable = model.trainableParameters().map { $0.1 }

    interrupted = false
    while state.epoch < c.epochs {
      var order = Array(0..<indices.count)
      let resumeAt = state.iteration
      if resumeAt > 0, var epochRNG = state.epochRNG {
        order.shuffle(using: &epochRNG)  // the interrupted epoch's order; state.rng continues where it stopped
      } else {
        state.epochRNG = state.rng
        order.shuffle(using: &state.rng)
      }
      let epoch = state.epoch, batchSize = c.batchSize, epochOrder = order
      let prefetch: Prefetcher<AugmentedBatch>? = c.augment
        ? Prefetcher(from: resumeAt, to: stepsPerEpoch) { [self] it in
            let ids = epochOrder[(it * batchSize)..<((it + 1) * batchSize)].map { indices[$0] }
            return try augmentedBatch(ids, epoch: epoch, iteration: it)
          }
        : nil
      optimizer.zeroGrad()
      for it in resumeAt..<stepsPerEpoch {
        let batch = Array(order[(it * c.batchSize)..<((it + 1) * c.batchSize)])
        let epochF = Double(state.epoch) + Double(it) / Double(stepsPerEpoch)
        if it % c.accumulation == 0 {
          optimizer.lr = Float(maeLearningRate(epoch: epochF, baseLR: c.lr, minLR: c.minLR,
                                               warmupEpochs: c.warmupEpochs, epochs: Double(c.epochs)))
        }
        let imgs: Tensor, target: Tensor, importance: Tensor
        if let prefetch {
          let b = try prefetch.next()
          imgs = b.student
          let t = Autograd.noGrad { teacher.encode(b.teacher) }
          target = t.features
          importance = t.clsAttention
        } else {
          imgs = try plainBatch(batch.map { indices[$0] }, size: c.imageSize)
          target = Tensor(uninitialized: [batch.count, l + 1, featDim])
          importance = Tensor(uninitialized: [batch.count, l])
          for (b, i) in batch.enumerated() {
            (target.data + b * (l + 1) * featDim).update(from: targets!.features.data + i * (l + 1) * featDim,
                                                         count: (l + 1) * featDim)
            (importance.data + b * l).update(from: targets!.attention.data + i * l, count: l)
          }
        }
        let m: MaskingResult
        switch c.masking {
        case .semantic:
          m = Masking.semanticAware(importance: importance, expNoise: Masking.expNoise([batch.count, l], rng: &state.rng),
                                    maskRatio: c.maskRatio)
        case .random:
          m = Masking.random(noise: Tensor.uniform([batch.count, l], rng: &state.rng), maskRatio: c.maskRatio)
        }
        var dropRNG = SplitMix64(seed: state.rng.next())
        let pred = model.predict(Variable(imgs), masking: m, rng: &dropRNG)
        let loss = model.featureLoss(pred, teacher: target, masking: m, maskedOnly: c.maskedLossOnly)
        let value = loss.value.data[0]
        guard value.isFinite else {
          throw PretrainError.nonFiniteLoss(step: state.step, epoch: state.epoch, loss: value, checkpoint: lastCheckpoint)
        }
        loss.backward(seed: Tensor(shape: [], values: [1 / Float(c.accumulation)]))
        var gradNorm: Float? = nil
        if (it + 1) % c.accumulation == 0 {
          if let clip = c.gradClip { gradNorm = clipGradNorm(trainable, maxNorm: Float(clip)) }
          optimizer.step()
          optimizer.zeroGrad()
          state.step += 1
        }
        state.lastLoss = Double(value)
        images += batch.count
        let elapsed = Date().timeIntervalSince(t0)
        let rate = Double(images) / elapsed
        let remaining = Double((c.epochs - state.epoch) * stepsPerEpoch - it - 1) * Double(c.batchSize) / rate
        let line = String(format: "epoch %d/%d step %d loss %.4f lr %.2e %.1f img/s ETA %@", state.epoch + 1,
                          c.epochs, state.step, value, Double(optimizer.lr), rate, formatDuration(remaining))
        if it % 10 == 0 || it == stepsPerEpoch - 1 { log(line) }
        var record: [String: Any] = ["epoch": state.epoch, "step": state.step, "loss": Double(value),
                                     "lr": Double(optimizer.lr), "images_per_s": rate,
                                     "unreadable_images": loader.failureCount]
        if let gradNorm { record["grad_norm"] = Double(gradNorm) }
        if let d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) {
          let end = try logFile.offset()
          do {
            try logFile.write(contentsOf: d + Data("\n".utf8))
          } catch {
            try? logFile.truncate(atOffset: end)  // no half line for a resumed run to append to
            throw PretrainError.cannotWrite(path: logURL.path, reason: osErrorDescription(error))
          }
        }
        state.iteration = it + 1
        if shouldStop() && (it + 1) % c.accumulation == 0 && it + 1 < stepsPerEpoch {
          try Checkpoint.save(model: model, optimizer: optimizer, state: state, to: out)
          log("interrupted: checkpoint written to \(out.path) (epoch \(state.epoch + 1), iteration \(it + 1)); "
            + "continue with --resume")
          interrupted = true
          return state
        }
      }
      state.epoch += 1
      state.iteration = 0
      try Checkpoint.save(model: model, optimizer: optimizer, state: state, to: out)
      lastCheckpoint = out.path
      if loader.failureCount > 0 {
        log("\(loader.failureCount) unreadable image(s) skipped so far (listed in the warnings above)")
      }
    }
    return state
  }
}

/// "File too large (errno 27)" for a Foundation file error that wraps a POSIX one; the localized text otherwise.
func osErrorDescription(_ error: Error) -> String {
  let ns = error as NSError
  let posix = ns.domain == NSPOSIXErrorDomain ? ns : ns.userInfo[NSUnderlyingErrorKey] as? NSError
  if let posix, posix.domain == NSPOSIXErrorDomain {
    return "\(String(cString: strerror(Int32(posix.code)))) (errno \(posix.code))"
  }
  return ns.localizedDescription
}

func formatDuration(_ s: Double) -> String {
  guard s.isFinite else { return "?" }
  let t = Int(s.rounded())
  return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}
