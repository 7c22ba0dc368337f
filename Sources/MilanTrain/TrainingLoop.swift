// The one training loop of every engine (pretraining, finetuning; data parallelism hooks in here next). An engine
// is configuration, a batch source and an objective; the loop owns the rest, once:
//  - the epoch order (shuffled by the run's generator; an interrupted epoch replays its order on resume),
//  - batches built on a background thread while the previous step computes (`makeBatch`),
//  - the per-iteration learning rate, gradient accumulation, the after-backward hooks (gradient clipping now; a
//    gradient all-reduce belongs here too) and the optimizer step,
//  - the non-finite-loss check (the run stops; the last good checkpoint is untouched),
//  - progress lines and one JSON line per iteration in log.jsonl (a failed write stops the run and leaves no half
//    line behind),
//  - the stop signal (Ctrl-C, SIGTERM): a checkpoint at the next optimizer-step boundary, resumable mid-epoch,
//  - the end of each epoch (`epochEnded`, e.g. an evaluation) and a staged checkpoint (`saveCheckpoint`).
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import MilanAutograd
import MilanData
import MilanNN
import MilanTensor

/// Where a run stands; every checkpoint saves it.
public struct LoopState: Codable, Sendable, Equatable {
  public var epoch: Int
  /// Optimizer steps taken.
  public var step: Int
  /// Iterations already done inside `epoch` (non-zero only for a checkpoint written on interruption).
  public var iteration: Int = 0
  /// Generator state before `epoch`'s shuffle, so an interrupted epoch resumes with the same order.
  public var epochRNG: SplitMix64? = nil
  /// The run's generator: epoch orders and the objective's draws (masking noise, drop path).
  public var rng: SplitMix64
  public var lastLoss: Double?
  /// Sum of the losses of the iterations already done in `epoch`.
  public var epochLossSum: Double = 0

  public init(epoch: Int = 0, step: Int = 0, iteration: Int = 0, epochRNG: SplitMix64? = nil, rng: SplitMix64,
              lastLoss: Double? = nil, epochLossSum: Double = 0) {
    self.epoch = epoch
    self.step = step
    self.iteration = iteration
    self.epochRNG = epochRNG
    self.rng = rng
    self.lastLoss = lastLoss
    self.epochLossSum = epochLossSum
  }

  enum CodingKeys: String, CodingKey { case epoch, step, iteration, epochRNG, rng, lastLoss, epochLossSum }

  /// Older state files (written at epoch ends only) have no `iteration`, `epochRNG` or `epochLossSum`.
  public init(from decoder: Decoder) throws {
    let c = try decoder.container(keyedBy: CodingKeys.self)
    epoch = try c.decode(Int.self, forKey: .epoch)
    step = try c.decode(Int.self, forKey: .step)
    iteration = try c.decodeIfPresent(Int.self, forKey: .iteration) ?? 0
    epochRNG = try c.decodeIfPresent(SplitMix64.self, forKey: .epochRNG)
    rng = try c.decode(SplitMix64.self, forKey: .rng)
    lastLoss = try c.decodeIfPresent(Double.self, forKey: .lastLoss)
    epochLossSum = try c.decodeIfPresent(Double.self, forKey: .epochLossSum) ?? 0
  }
}

/// How a run is scheduled.
public struct LoopSchedule: Sendable {
  public var epochs: Int
  public var batchSize: Int
  public var accumulation: Int = 1
  /// Learning rate at a fractional epoch (e.g. MAE's warmup + half-cosine).
  public var learningRate: @Sendable (Double) -> Double

  public init(epochs: Int, batchSize: Int, accumulation: Int = 1, learningRate: @escaping @Sendable (Double) -> Double) {
    self.epochs = epochs
    self.batchSize = batchSize
    self.accumulation = accumulation
    self.learningRate = learningRate
  }
}

public enum TrainingError: Error, CustomStringConvertible {
  case nonFiniteLoss(run: String, step: Int, epoch: Int, loss: Float, checkpoint: String?)
  case cannotWrite(run: String, path: String, reason: String)
  case tooFewItems(run: String, items: Int, batchSize: Int)

  public var description: String {
    switch self {
    case .nonFiniteLoss(let r, let s, let e, let l, let c):
      return "\(r): the loss became \(l) at step \(s) (epoch \(e + 1)); stopped. "
        + (c.map { "The last good checkpoint is \($0)." } ?? "No checkpoint had been written yet.")
    case .cannotWrite(let r, let path, let reason):
      return "\(r): cannot write \(path): \(reason) (is the disk full or the folder read-only?)"
    case .tooFewItems(let r, let n, let b):
      return "\(r): the batch size \(b) is larger than the \(n) training images"
    }
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

public final class TrainingLoop<Batch>: @unchecked Sendable {
  /// The engine's name in messages ("pretrain", "finetune").
  public let name: String
  public let optimizer: AdamW
  public let parameters: [Parameter]
  /// One epoch's items (what `makeBatch` receives, in the epoch's shuffled order).
  public let items: [Int]
  public let schedule: LoopSchedule
  /// Folder of log.jsonl and the checkpoints.
  public let output: URL

  /// Builds the batch of `items` for (epoch, iteration), on the prefetch thread.
  public var makeBatch: @Sendable (_ items: [Int], _ epoch: Int, _ iteration: Int) throws -> Batch
  /// The loss of one batch; may draw from the run's generator (masking noise, drop path).
  public var objective: (_ batch: Batch, _ rng: inout SplitMix64) throws -> Variable
  /// Run on the accumulated gradients before each optimizer step, in order; each may return values for the log
  /// (gradient clipping returns grad_norm).
  public var afterBackward: [([Parameter]) throws -> [String: Double]] = []
  /// Extra fields for each log.jsonl line (e.g. unreadable_images).
  public var logFields: () -> [String: Any] = { [:] }
  /// At the end of every epoch, before its checkpoint (state: the finished epoch, with its loss sum).
  public var epochEnded: (LoopState) throws -> Void = { _ in }
  /// Writes a checkpoint of everything (weights, optimizer, state) as one unit.
  public var saveCheckpoint: (LoopState) throws -> Void
  /// Checked after every iteration; true makes the run save a checkpoint and return (Ctrl-C, SIGTERM, tests).
  public var shouldStop: () -> Bool = { StopSignal.requested }
  public var log: @Sendable (String) -> Void
  /// Progress line every this many iterations (and at each epoch's last).
  public var progressEvery = 10
  /// Whether the last `run` ended early because `shouldStop` said so.
  public private(set) var interrupted = false

  public init(name: String, optimizer: AdamW, parameters: [Parameter], items: [Int], schedule: LoopSchedule,
              output: URL, makeBatch: @escaping @Sendable ([Int], Int, Int) throws -> Batch,
              objective: @escaping (Batch, inout SplitMix64) throws -> Variable,
              saveCheckpoint: @escaping (LoopState) throws -> Void, log: @escaping @Sendable (String) -> Void) {
    self.name = name
    self.optimizer = optimizer
    self.parameters = parameters
    self.items = items
    self.schedule = schedule
    self.output = output
    self.makeBatch = makeBatch
    self.objective = objective
    self.saveCheckpoint = saveCheckpoint
    self.log = log
  }

  public var stepsPerEpoch: Int { items.count / schedule.batchSize }

  /// Trains from `start` (a fresh state, or one a checkpoint saved; `resumed`: it came from `output`) to the last
  /// epoch, or until `shouldStop`.
  public func run(from start: LoopState, resumed: Bool) throws -> LoopState {
    let s = schedule, steps = stepsPerEpoch
    guard steps > 0 else { throw TrainingError.tooFewItems(run: name, items: items.count, batchSize: s.batchSize) }
    try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
    let logURL = output.appendingPathComponent("log.jsonl")
    let logFile = try openLog(logURL)
    defer { try? logFile.close() }

    var state = start
    var lastCheckpoint: String? = resumed ? output.path : nil
    let t0 = Date()
    var images = 0
    interrupted = false
    while state.epoch < s.epochs {
      var order = items
      let resumeAt = state.iteration
      if resumeAt > 0, var epochRNG = state.epochRNG {
        order.shuffle(using: &epochRNG)  // the interrupted epoch's order; state.rng continues where it stopped
      } else {
        state.epochRNG = state.rng
        order.shuffle(using: &state.rng)
        state.epochLossSum = 0
      }
      let epoch = state.epoch, batchSize = s.batchSize, epochOrder = order, make = makeBatch
      let prefetch = Prefetcher(from: resumeAt, to: steps) { it in
        try make(Array(epochOrder[(it * batchSize)..<((it + 1) * batchSize)]), epoch, it)
      }
      optimizer.zeroGrad()
      var stopAtEpochEnd = false
      for it in resumeAt..<steps {
        if it % s.accumulation == 0 {
          optimizer.lr = Float(s.learningRate(Double(state.epoch) + Double(it) / Double(steps)))
        }
        let batch = try prefetch.next()
        let loss = try objective(batch, &state.rng)
        let value = loss.value.data[0]
        guard value.isFinite else {
          throw TrainingError.nonFiniteLoss(run: name, step: state.step, epoch: state.epoch, loss: value,
                                            checkpoint: lastCheckpoint)
        }
        loss.backward(seed: Tensor(shape: [], values: [1 / Float(s.accumulation)]))
        var record: [String: Any] = [:]
        if (it + 1) % s.accumulation == 0 {
          for hook in afterBackward { for (k, v) in try hook(parameters) { record[k] = v } }
          optimizer.step()
          optimizer.zeroGrad()
          state.step += 1
        }
        state.lastLoss = Double(value)
        state.epochLossSum += Double(value)
        images += batchSize
        let rate = Double(images) / Date().timeIntervalSince(t0)
        if it % progressEvery == 0 || it == steps - 1 {
          let remaining = Double((s.epochs - state.epoch) * steps - it - 1) * Double(batchSize) / rate
          log(String(format: "epoch %d/%d step %d loss %.4f lr %.2e %.1f img/s ETA %@", state.epoch + 1, s.epochs,
                     state.step, value, Double(optimizer.lr), rate, formatDuration(remaining)))
        }
        record.merge(["epoch": state.epoch, "step": state.step, "loss": Double(value), "lr": Double(optimizer.lr),
                      "images_per_s": rate]) { a, _ in a }
        record.merge(logFields()) { a, _ in a }
        try append(record, to: logFile, url: logURL)
        state.iteration = it + 1
        if shouldStop() && (it + 1) % s.accumulation == 0 {
          if it + 1 < steps {
            try saveCheckpoint(state)
            log("interrupted: checkpoint written to \(output.path) (epoch \(state.epoch + 1), iteration \(it + 1)); "
              + "continue with --resume")
            interrupted = true
            return state
          }
          stopAtEpochEnd = true
        }
      }
      try epochEnded(state)
      state.epoch += 1
      state.iteration = 0
      state.epochLossSum = 0
      try saveCheckpoint(state)
      lastCheckpoint = output.path
      if stopAtEpochEnd && state.epoch < s.epochs {
        log("interrupted: checkpoint written to \(output.path) (end of epoch \(state.epoch)); continue with --resume")
        interrupted = true
        return state
      }
    }
    return state
  }

  func openLog(_ url: URL) throws -> FileHandle {
    if !FileManager.default.fileExists(atPath: url.path),
       !FileManager.default.createFile(atPath: url.path, contents: nil) {
      throw TrainingError.cannotWrite(run: name, path: url.path, reason: "the file cannot be created")
    }
    do {
      let h = try FileHandle(forWritingTo: url)
      try h.seekToEnd()
      return h
    } catch {
      throw TrainingError.cannotWrite(run: name, path: url.path, reason: osErrorDescription(error))
    }
  }

  func append(_ record: [String: Any], to file: FileHandle, url: URL) throws {
    guard let d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) else { return }
    let end = try file.offset()
    do {
      try file.write(contentsOf: d + Data("\n".utf8))
    } catch {
      try? file.truncate(atOffset: end)  // no half line for a resumed run to append to
      throw TrainingError.cannotWrite(run: name, path: url.path, reason: osErrorDescription(error))
    }
  }
}

/// The after-backward hook of `clip_grad_norm_` (max_norm, L2): logs the norm before clipping as grad_norm.
public func gradientClipping(maxNorm: Float) -> ([Parameter]) throws -> [String: Double] {
  { ["grad_norm": Double(clipGradNorm($0, maxNorm: maxNorm))] }
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
