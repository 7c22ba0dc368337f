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
  /// Student input size (images are resized to it); the teacher sees `teacherImageSize`.
  public var imageSize: Int
  public var teacherImageSize: Int
  public var maskRatio: Double = 0.75
  public var masking: MaskingKind = .semantic
  public var epochs: Int
  public var warmupEpochs: Double
  public var batchSize: Int
  public var accumulation: Int = 1
  /// Base learning rate; the rate used is blr · effective batch / 256 (MAE's rule).
  public var blr: Double
  public var minLR: Double = 0
  public var weightDecay: Float = 0.05
  public var trainImages: Int?
  public var seed: UInt64 = 0
  public var dataDir: String
  public var teacherPath: String
  public var outputDir: String

  public var effectiveBatch: Int { batchSize * accumulation }
  public var lr: Double { blr * Double(effectiveBatch) / 256 }

  /// The CPU-scale configuration known to learn (shared/docs/data-and-weights.md): Fashion-MNIST at 32 px, ViT patch
  /// 4 (8×8 grid) width 128 depth 4 heads 4, decoder 96 × 2, DINOv2-S/14 teacher at 112 px (8×8 grid).
  public static func fashionDemo(dataDir: String, teacherPath: String, outputDir: String) -> PretrainConfig {
    let encoder = ViTConfig(imageSize: 32, patchSize: 4, embedDim: 128, depth: 4, numHeads: 4)
    return PretrainConfig(
      model: MILANConfig(encoder: encoder, decoderDim: 96, decoderDepth: 2, decoderHeads: 4, predictionDim: 384),
      imageSize: 32, teacherImageSize: 112, epochs: 15, warmupEpochs: 1, batchSize: 128, blr: 1e-3 * 256 / 128,
      trainImages: 4000, dataDir: dataDir, teacherPath: teacherPath, outputDir: outputDir)
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

  public var description: String {
    switch self {
    case .nonFiniteLoss(let s, let e, let l, let c):
      return "pretrain: the loss became \(l) at step \(s) (epoch \(e)); stopped. "
        + (c.map { "The last good checkpoint is \($0)." } ?? "No checkpoint had been written yet.")
    case .gridMismatch(let s, let t):
      return "pretrain: the student's token grid (\(s)×\(s)) must equal the teacher's (\(t)×\(t)); "
        + "change the image sizes or the patch size"
    }
  }
}

public final class Pretrainer {
  public let config: PretrainConfig
  public let model: MILANModel
  public let optimizer: AdamW
  let teacher: any Teacher
  let data: IDXDataset
  let log: (String) -> Void
  /// Checked after every iteration; true makes the run save a checkpoint and return (Ctrl-C, SIGTERM, tests).
  public var shouldStop: () -> Bool = { StopSignal.requested }
  /// Whether the last `run` ended early because `shouldStop` said so.
  public private(set) var interrupted = false

  public init(_ c: PretrainConfig, log: @escaping (String) -> Void = { print($0) }) throws {
    config = c
    self.log = log
    let dir = URL(fileURLWithPath: c.dataDir)
    data = try IDXDataset(images: dir.appendingPathComponent("train-images-idx3-ubyte.gz"),
                          labels: dir.appendingPathComponent("train-labels-idx1-ubyte.gz"))
    teacher = try DINOv2ONNX.load(URL(fileURLWithPath: c.teacherPath))
    let tGrid = c.teacherImageSize / teacher.patchSize, sGrid = c.imageSize / c.model.encoder.patchSize
    guard tGrid == sGrid else { throw PretrainError.gridMismatch(student: sGrid, teacher: tGrid) }
    precondition(c.model.predictionDim == teacher.featureDim, "decoder_pred width must equal the teacher's features")
    model = MILANModel(c.model, seed: c.seed)
    optimizer = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: c.weightDecay),
                      lr: Float(c.lr), beta1: 0.9, beta2: 0.95)
  }

  /// Teacher targets for every training image, computed once (no augmentation, so they do not change).
  func teacherTargets(_ indices: [Int]) -> (features: Tensor, attention: Tensor) {
    let n = indices.count, l = (config.imageSize / config.model.encoder.patchSize)
    let c = teacher.featureDim
    let feats = Tensor(uninitialized: [n, l * l + 1, c]), attn = Tensor(uninitialized: [n, l * l])
    let chunk = 64
    let t0 = Date()
    for s in stride(from: 0, to: n, by: chunk) {
      let ids = Array(indices[s..<min(s + chunk, n)])
      let out = teacher.encode(data.batch(ids, size: config.teacherImageSize))
      (feats.data + s * (l * l + 1) * c).update(from: out.features.data, count: out.features.count)
      (attn.data + s * l * l).update(from: out.clsAttention.data, count: out.clsAttention.count)
      if s / chunk % 8 == 0 {
        log(String(format: "teacher targets %d/%d (%.0f img/s)", min(s + chunk, n), n,
                   Double(min(s + chunk, n)) / Date().timeIntervalSince(t0)))
      }
    }
    return (feats, attn)
  }

  /// Trains from `start` (a fresh state, or one loaded by `Checkpoint.load`) to the configured number of epochs.
  @discardableResult
  public func run(from start: TrainState? = nil) throws -> TrainState {
    let c = config
    let out = URL(fileURLWithPath: c.outputDir)
    try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
    let logURL = out.appendingPathComponent("log.jsonl")
    if !FileManager.default.fileExists(atPath: logURL.path) { FileManager.default.createFile(atPath: logURL.path, contents: nil) }
    let logFile = try FileHandle(forWritingTo: logURL)
    defer { try? logFile.close() }
    logFile.seekToEndOfFile()

    var subsetRNG = SplitMix64(seed: c.seed ^ 0x5EED)
    var pool = Array(0..<data.count)
    pool.shuffle(using: &subsetRNG)
    let indices = Array(pool.prefix(c.trainImages ?? data.count))
    let targets = teacherTargets(indices)
    let l = (c.imageSize / c.model.encoder.patchSize) * (c.imageSize / c.model.encoder.patchSize)
    let featDim = teacher.featureDim
    let stepsPerEpoch = indices.count / c.batchSize
    var state = start ?? TrainState(epoch: 0, step: 0, rng: SplitMix64(seed: c.seed), config: c, lastLoss: nil)
    var lastCheckpoint: String? = start == nil ? nil : out.path
    let t0 = Date()
    var images = 0

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
      optimizer.zeroGrad()
      for it in resumeAt..<stepsPerEpoch {
        let batch = Array(order[(it * c.batchSize)..<((it + 1) * c.batchSize)])
        let epochF = Double(state.epoch) + Double(it) / Double(stepsPerEpoch)
        if it % c.accumulation == 0 {
          optimizer.lr = Float(maeLearningRate(epoch: epochF, baseLR: c.lr, minLR: c.minLR,
                                               warmupEpochs: c.warmupEpochs, epochs: Double(c.epochs)))
        }
        let imgs = data.batch(batch.map { indices[$0] }, size: c.imageSize)
        let target = Tensor(uninitialized: [batch.count, l + 1, featDim])
        let importance = Tensor(uninitialized: [batch.count, l])
        for (b, i) in batch.enumerated() {
          (target.data + b * (l + 1) * featDim).update(from: targets.features.data + i * (l + 1) * featDim, count: (l + 1) * featDim)
          (importance.data + b * l).update(from: targets.attention.data + i * l, count: l)
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
        let pred = model.forwardDecoder(model.forwardEncoder(Variable(imgs), masking: m, rng: &dropRNG), masking: m,
                                        rng: &dropRNG)
        let loss = cosineLoss(pred, target: target)
        let value = loss.value.data[0]
        guard value.isFinite else {
          throw PretrainError.nonFiniteLoss(step: state.step, epoch: state.epoch, loss: value, checkpoint: lastCheckpoint)
        }
        loss.backward(seed: Tensor(shape: [], values: [1 / Float(c.accumulation)]))
        if (it + 1) % c.accumulation == 0 {
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
        let record: [String: Any] = ["epoch": state.epoch, "step": state.step, "loss": Double(value),
                                     "lr": Double(optimizer.lr), "images_per_s": rate]
        if let d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) {
          logFile.write(d + Data("\n".utf8))
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
    }
    return state
  }
}

func formatDuration(_ s: Double) -> String {
  guard s.isFinite else { return "?" }
  let t = Int(s.rounded())
  return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}
