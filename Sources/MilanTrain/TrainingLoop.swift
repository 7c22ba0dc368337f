// The one training loop of every engine (pretraining, finetuning), in one process or data-parallel across the ranks
// of an mpirun job. An engine is configuration, a batch source and an objective; the loop owns the rest, once:
//  - the epoch order (shuffled by the run's generator; an interrupted epoch replays its order on resume),
//  - batches built on a background thread while the previous step computes (`makeBatch`),
//  - data parallelism (PyTorch DDP + DistributedSampler semantics): rank 0's weights and state broadcast at the
//    start, each rank takes its share of every global batch, gradients averaged in buckets that start while
//    backward runs (GradientAllReduce), a periodic weight checksum across ranks, rank 0 alone writing,
//  - the per-iteration learning rate, gradient accumulation, the after-backward hooks (gradient clipping) and the
//    optimizer step,
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
  case drift(run: String, step: Int, rank: Int, detail: String)

  public var description: String {
    switch self {
    case .nonFiniteLoss(let r, let s, let e, let l, let c):
      return "\(r): the loss became \(l) at step \(s) (epoch \(e + 1)); stopped. "
        + (c.map { "The last good checkpoint is \($0)." } ?? "No checkpoint had been written yet.")
    case .cannotWrite(let r, let path, let reason):
      return "\(r): cannot write \(path): \(reason) (is the disk full or the folder read-only?)"
    case .tooFewItems(let r, let n, let b):
      return "\(r): the batch size \(b) (all processes together) is larger than the \(n) training images"
    case .drift(let r, let s, let rank, let d):
      return "\(r): the processes' weights have drifted apart at step \(s) (\(d), seen by rank \(rank)); stopped. "
        + "The last checkpoint is whole; resume from it"
    }
  }
}

/// SIGINT, SIGTERM and SIGUSR1 set a flag that the training loop checks once per iteration: it then writes a
/// checkpoint (resumable mid-epoch) and returns. Under mpirun the flag of any rank stops every rank at the same
/// step; SIGUSR1 is the one mpirun forwards to every rank (`kill -USR1 <mpirun pid>`), while Ctrl-C at mpirun makes
/// Open MPI itself end the job (SIGTERM, then SIGKILL one second later): the staged checkpoints stay whole then.
public enum StopSignal {
  nonisolated(unsafe) static var flag: sig_atomic_t = 0
  nonisolated(unsafe) static var installed = false

  public static var requested: Bool { flag != 0 }

  public static func install() {
    guard !installed else { return }
    installed = true
    signal(SIGINT) { _ in StopSignal.flag = 1 }
    signal(SIGTERM) { _ in StopSignal.flag = 1 }
    signal(SIGUSR1) { _ in StopSignal.flag = 1 }
    // A process started by another program may inherit these signals blocked; the handlers are useless then.
    var set = sigset_t()
    sigemptyset(&set)
    for s in [SIGINT, SIGTERM, SIGUSR1] { sigaddset(&set, s) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
  }
}

public final class TrainingLoop<Batch>: @unchecked Sendable {
  /// The engine's name in messages ("pretrain", "finetune").
  public let name: String
  public let optimizer: AdamW
  /// Every parameter of the model by name (broadcast from rank 0 at the start of a data-parallel run).
  public let namedParameters: [(String, Parameter)]
  /// The trainable ones (gradients, optimizer, clipping).
  public let parameters: [Parameter]
  /// One epoch's items (what `makeBatch` receives, in the epoch's shuffled order).
  public let items: [Int]
  /// Per-process schedule: `batchSize` is the batch of one process; the global batch is `batchSize × group.size`.
  public let schedule: LoopSchedule
  /// Folder of log.jsonl and the checkpoints.
  public let output: URL
  public let group: ProcessGroup

  /// Builds the batch of `items` for (epoch, iteration) on the prefetch thread; `firstSample` is the global
  /// position of its first item in the epoch's order (per-sample draws are keyed by position, not by process).
  public var makeBatch: @Sendable (_ items: [Int], _ epoch: Int, _ iteration: Int, _ firstSample: Int) throws -> Batch
  /// The loss of one batch; may draw from the run's generator (a fixed number of draws per step, so every process
  /// keeps the same generator) and key per-sample draws by `firstSample`.
  public var objective: (_ batch: Batch, _ rng: inout SplitMix64, _ firstSample: Int) throws -> Variable
  /// Run on the accumulated (and, across processes, averaged) gradients before each optimizer step, in order; each
  /// may return values for the log (gradient clipping returns grad_norm).
  public var afterBackward: [([Parameter]) throws -> [String: Double]] = []
  /// Extra fields for each log.jsonl line (e.g. unreadable_images).
  public var logFields: () -> [String: Any] = { [:] }
  /// At the end of every epoch, before its checkpoint (state: the finished epoch, with its loss sum).
  public var epochEnded: (LoopState) throws -> Void = { _ in }
  /// Writes a checkpoint of everything (weights, optimizer, state) as one unit; called on rank 0 only.
  public var saveCheckpoint: (LoopState) throws -> Void
  /// Checked once per iteration; true on any process makes the run save a checkpoint and return (Ctrl-C, SIGTERM,
  /// SIGUSR1, tests).
  public var shouldStop: () -> Bool = { StopSignal.requested }
  /// Progress lines (rank 0 only).
  public var log: @Sendable (String) -> Void
  /// Progress line every this many iterations (and at each epoch's last).
  public var progressEvery = 10
  /// Data parallelism: every this many optimizer steps (and at every epoch end) the ranks compare a checksum of the
  /// weights and stop with a message if they differ (MILAN_DRIFT_CHECK_EVERY sets it).
  public var driftCheckEvery = max(1, ProcessInfo.processInfo.environment["MILAN_DRIFT_CHECK_EVERY"].flatMap { Int($0) } ?? 50)
  /// Gradient bucket size for the all-reduce (PyTorch DDP's default 25 MB).
  public var bucketBytes = 25 << 20
  /// Whether the last `run` ended early because `shouldStop` said so.
  public private(set) var interrupted = false
  /// All-reduce time and the part of it hidden behind backward, summed over the run's synchronised steps.
  public private(set) var allReduceSeconds = 0.0, allReduceWaitSeconds = 0.0

  public init(name: String, optimizer: AdamW, namedParameters: [(String, Parameter)], items: [Int],
              schedule: LoopSchedule, output: URL, group: ProcessGroup = .single,
              makeBatch: @escaping @Sendable ([Int], Int, Int, Int) throws -> Batch,
              objective: @escaping (Batch, inout SplitMix64, Int) throws -> Variable,
              saveCheckpoint: @escaping (LoopState) throws -> Void, log: @escaping @Sendable (String) -> Void) {
    self.name = name
    self.optimizer = optimizer
    self.namedParameters = namedParameters
    self.parameters = namedParameters.filter { $0.1.requiresGrad }.map(\.1)
    self.items = items
    self.schedule = schedule
    self.output = output
    self.group = group
    self.makeBatch = makeBatch
    self.objective = objective
    self.saveCheckpoint = saveCheckpoint
    self.log = log
  }

  /// The batch of all processes together.
  public var globalBatch: Int { schedule.batchSize * group.size }
  public var stepsPerEpoch: Int { items.count / globalBatch }

  /// Trains from `start` (a fresh state, or one a checkpoint saved; `resumed`: it came from `output`) to the last
  /// epoch, or until `shouldStop`. In a data-parallel run rank 0's weights, optimizer moments and state are
  /// broadcast first; each rank then trains on its share of every global batch with averaged gradients.
  public func run(from start: LoopState, resumed: Bool) throws -> LoopState {
    let s = schedule, steps = stepsPerEpoch, g = group, lead = g.rank == 0
    guard steps > 0 else { throw TrainingError.tooFewItems(run: name, items: items.count, batchSize: globalBatch) }
    var state = try synchronizeStart(start)
    let logURL = output.appendingPathComponent("log.jsonl")
    var logFile: FileHandle? = nil
    if lead {
      try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
      // A fresh run starts an empty log; a resumed one keeps the lines of the iterations its checkpoint holds and
      // drops the rest (iterations after it, which it will run again, and a line torn by a crash).
      logFile = try openLog(logURL, keepThrough: resumed ? state.epoch * steps + state.iteration : 0)
    }
    defer { try? logFile?.close() }
    // The log is made durable before each checkpoint, so a power loss can only take lines the checkpoint does not
    // hold (which a resume drops and writes again): every iteration stays in the log exactly once.
    func syncLog() throws {
      guard let f = logFile else { return }
      do { try f.synchronize() } catch {
        throw TrainingError.cannotWrite(run: name, path: logURL.path, reason: osErrorDescription(error))
      }
    }
    let reducer = g.size > 1 ? GradientAllReduce(group: g, parameters: parameters, bucketBytes: bucketBytes) : nil

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
      let epoch = state.epoch, batchSize = s.batchSize, global = globalBatch, rank = g.rank
      let epochOrder = order, make = makeBatch
      let prefetch = Prefetcher(from: resumeAt, to: steps) { it in
        let first = it * global + rank * batchSize
        return try make(Array(epochOrder[first..<(first + batchSize)]), epoch, it, first)
      }
      optimizer.zeroGrad()
      var stopAtEpochEnd = false
      for it in resumeAt..<steps {
        if it % s.accumulation == 0 {
          optimizer.lr = Float(s.learningRate(Double(state.epoch) + Double(it) / Double(steps)))
        }
        let batch = try prefetch.next()
        let loss = try objective(batch, &state.rng, it * global + rank * batchSize)
        // One small all-reduce per iteration: the mean loss over the processes (logged, checked) and the stop flag.
        let shared = try g.allReduce([Double(loss.value.data[0]), shouldStop() ? 1 : 0], .sum)
        let value = Float(shared[0] / Double(g.size)), stopRequested = shared[1] > 0
        guard value.isFinite else {
          throw TrainingError.nonFiniteLoss(run: name, step: state.step, epoch: state.epoch, loss: value,
                                            checkpoint: lastCheckpoint)
        }
        let boundary = (it + 1) % s.accumulation == 0
        loss.backward(seed: Tensor(shape: [], values: [1 / Float(s.accumulation)]),
                      leafReady: boundary ? reducer.map { r in { r.leafReady($0) } } : nil)
        var record: [String: Any] = [:]
        if boundary {
          if let reducer {
            try reducer.finish()
            allReduceSeconds += reducer.last.reduce
            allReduceWaitSeconds += reducer.last.waited
            record["allreduce_s"] = reducer.last.reduce
            record["allreduce_wait_s"] = reducer.last.waited
          }
          for hook in afterBackward { for (k, v) in try hook(parameters) { record[k] = v } }
          optimizer.step()
          optimizer.zeroGrad()
          state.step += 1
          if let (r, at) = Self.injectedDrift, r == g.rank, at == state.step, let p = parameters.first {
            p.value.data[0] += 1e-3  // fault injection for the drift test (MILAN_INJECT_DRIFT=rank:step)
          }
          if g.size > 1 && state.step % driftCheckEvery == 0 { try checkDrift(step: state.step) }
        }
        state.lastLoss = Double(value)
        state.epochLossSum += Double(value)
        images += global
        let rate = Double(images) / Date().timeIntervalSince(t0)
        if lead {
          if it % progressEvery == 0 || it == steps - 1 {
            let remaining = Double((s.epochs - state.epoch) * steps - it - 1) * Double(global) / rate
            log(String(format: "epoch %d/%d step %d loss %.4f lr %.2e %.1f img/s ETA %@", state.epoch + 1, s.epochs,
                       state.step, value, Double(optimizer.lr), rate, formatDuration(remaining)))
          }
          record.merge(["epoch": state.epoch, "step": state.step, "iteration": state.epoch * steps + it + 1,
                        "loss": Double(value), "lr": Double(optimizer.lr), "images_per_s": rate]) { a, _ in a }
          if g.size > 1 { record["processes"] = g.size }
          record.merge(logFields()) { a, _ in a }
          try append(record, to: logFile!, url: logURL)
        }
        state.iteration = it + 1
        if stopRequested && boundary {
          if it + 1 < steps {
            try syncLog()
            try checkpoint(state)
            if lead {
              log("interrupted: checkpoint written to \(output.path) (epoch \(state.epoch + 1), iteration \(it + 1)); "
                + "continue with --resume")
            }
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
      if g.size > 1 { try checkDrift(step: state.step) }
      try syncLog()
      try checkpoint(state)
      lastCheckpoint = output.path
      if stopAtEpochEnd && state.epoch < s.epochs {
        if lead {
          log("interrupted: checkpoint written to \(output.path) (end of epoch \(state.epoch)); continue with --resume")
        }
        interrupted = true
        return state
      }
    }
    return state
  }

  /// Test hook: MILAN_INJECT_DRIFT=RANK:STEP nudges one weight on that rank after that optimizer step, so the tests
  /// can see the drift check stop a run.
  static var injectedDrift: (Int, Int)? {
    guard let v = ProcessInfo.processInfo.environment["MILAN_INJECT_DRIFT"] else { return nil }
    let parts = v.split(separator: ":").compactMap { Int($0) }
    return parts.count == 2 ? (parts[0], parts[1]) : nil
  }

  /// Rank 0 writes the checkpoint; every rank learns whether it succeeded (so none waits for a rank that failed).
  func checkpoint(_ state: LoopState) throws {
    var failure: Error? = nil
    if group.rank == 0 {
      do { try saveCheckpoint(state) } catch { failure = error }
    }
    let failed = try group.allReduce([failure == nil ? 0 : 1], .max)[0] > 0
    if let failure { throw failure }
    if failed { throw TrainingError.cannotWrite(run: name, path: output.path, reason: "rank 0 could not save the checkpoint") }
  }

  /// Makes every rank start from rank 0's weights, optimizer moments and loop state.
  func synchronizeStart(_ start: LoopState) throws -> LoopState {
    let g = group
    guard g.size > 1 else { return start }
    for (_, p) in namedParameters { try g.broadcast(p.value) }
    let hasMoments = try g.allReduce([g.rank == 0 && !optimizer.state.isEmpty ? 1 : 0], .max)[0] > 0
    if hasMoments {
      var moments: [String: (expAvg: Tensor, expAvgSq: Tensor)] = [:]
      for (k, p) in namedParameters where p.requiresGrad {
        let m = optimizer.state[k] ?? (Tensor(zeros: p.shape), Tensor(zeros: p.shape))
        try g.broadcast(m.expAvg)
        try g.broadcast(m.expAvgSq)
        moments[k] = m
      }
      let step = try g.allReduce([g.rank == 0 ? Double(optimizer.stepCount) : 0], .sum)[0]
      optimizer.restore(state: moments, stepCount: Int(step))
    }
    let data = try g.broadcast(try JSONEncoder().encode(start))
    return try JSONDecoder().decode(LoopState.self, from: data)
  }

  /// Compares a checksum of the weights across ranks (they must be bit-identical: same start, same averaged
  /// gradients, same optimizer).
  func checkDrift(step: Int) throws {
    var sum = 0.0, weighted = 0.0
    for p in parameters {
      let d = p.value.data
      for i in 0..<p.count {
        sum += Double(d[i])
        weighted += Double(d[i]) * Double(i % 7 + 1)
      }
    }
    let hi = try group.allReduce([sum, weighted], .max), lo = try group.allReduce([sum, weighted], .min)
    guard hi == lo else {
      throw TrainingError.drift(run: name, step: step, rank: group.rank, detail: String(
        format: "weight checksums %.17g … %.17g across ranks", lo[0], hi[0]))
    }
  }

  /// Opens log.jsonl for appending, keeping only the complete lines of iterations 1...`keepThrough` (the global
  /// iteration count, `iteration`; lines written before that field existed are kept by their optimizer `step`).
  /// The kept lines are written atomically (temporary file, then rename): a crash here leaves the old log or the new.
  func openLog(_ url: URL, keepThrough: Int) throws -> FileHandle {
    var kept = Data()
    if keepThrough > 0, let old = FileManager.default.contents(atPath: url.path) {
      for line in old.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else { continue }
        let n = (obj["iteration"] as? Int) ?? (obj["step"] as? Int) ?? Int.max
        if n <= keepThrough { kept += Data(line) + Data("\n".utf8) }
      }
    }
    do {
      try kept.write(to: url, options: .atomic)
    } catch {
      throw TrainingError.cannotWrite(run: name, path: url.path, reason: osErrorDescription(error))
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
