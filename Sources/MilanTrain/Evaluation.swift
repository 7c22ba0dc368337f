// What pretraining learned, read against baselines (reference-milan.md §6): weighted k-NN and a linear probe on
// frozen features of the pretrained encoder, a randomly initialised encoder of the same architecture, the teacher's
// own class-token features, and raw pixels (k-NN and probe alike). One seeded train subset serves as the k-NN bank
// and the probe's training set; one seeded test subset as queries / probe test set. The teacher is the one the run
// recorded in state.json (`TeacherFile`), unless another file is given.
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor

public struct EvaluationConfig: Codable, Sendable {
  /// A pretraining output folder (model.safetensors + state.json).
  public var checkpoint: String
  /// IDX folder or image folder (train/ and val/ sub-folders); default: the pretraining data.
  public var dataDir: String?
  /// Another teacher file for the teacher baseline and semantic-aware probing (default: the run's own).
  public var teacherPath: String?
  public var trainImages = 4000
  public var testImages = 2000
  public var knn = true
  public var k = 20
  public var temperature: Float = 0.07
  public var linearProbe = true
  public var probe = LinearProbeConfig()
  public var pool: FeaturePool = .token
  /// Semantic-aware probing: keep this fraction of patches by teacher attention (nil: all patches).
  public var semanticKeep: Double? = nil
  public var baselines = true
  /// Whether to score the checkpoint's own encoder (false: the baselines alone).
  public var encoder = true
  /// Candidate probe base learning rates: each trains a probe on 80 % of the bank and is scored on the held-out 20 %
  /// (seeded); the best then trains on the whole bank and is scored on the test images. nil: `probe.blr` as given.
  /// The test images never choose anything.
  public var probeBlrCandidates: [Double]? = nil
  public var seed: UInt64 = EvaluationConfig.defaultSeed
  public static let defaultSeed: UInt64 = 123
  /// Unreadable images tolerated per split, as a fraction, before the evaluation stops.
  public var maxUnreadableFraction = 0.01
  public init(checkpoint: String) { self.checkpoint = checkpoint }

  /// Checks the numbers; the message names the flag.
  public func validate() throws {
    func bad(_ m: String) -> InvalidSetting { InvalidSetting("eval: \(m)") }
    guard trainImages > 1, testImages > 0 else {
      throw bad("--train-images must be > 1 and --test-images > 0 (got \(trainImages), \(testImages))")
    }
    guard k > 0 else { throw bad("--k must be positive (got \(k))") }
    guard temperature.isFinite, temperature > 0 else { throw bad("--temperature must be positive (got \(temperature))") }
    guard maxUnreadableFraction.isFinite, maxUnreadableFraction >= 0, maxUnreadableFraction <= 1 else {
      throw bad("--max-unreadable must be in [0, 1] (got \(maxUnreadableFraction))")
    }
    if let keep = semanticKeep {
      guard keep.isFinite, keep > 0, keep <= 1 else { throw bad("--semantic-keep must be in (0, 1] (got \(keep))") }
    }
    if linearProbe {
      do { try probe.validate() } catch let e as InvalidSetting { throw bad(e.message) }
      for blr in probeBlrCandidates ?? [] {
        guard blr.isFinite, blr > 0 else { throw bad("probe blr candidates must be positive (got \(blr))") }
      }
    }
  }
}

public struct EvaluationRow: Codable, Sendable {
  public var name: String
  public var knnTop1: Double?
  public var probeTop1: Double?
  public var probeTop5: Double?
  /// The probe's base lr (chosen on held-out training images when candidates were given).
  public var probeBlr: Double?
  /// Held-out top-1 of each candidate blr, when there were candidates.
  public var probeSelection: [String: Double]?
}

public struct EvaluationReport: Codable, Sendable {
  public var dataset: String
  public var trainImages: Int
  public var testImages: Int
  public var rows: [EvaluationRow]
  public var unreadableImages: Int

  /// A fixed-width table for the terminal and the README.
  public var table: String {
    func pct(_ v: Double?) -> String { v.map { String(format: "%6.2f %%", $0 * 100) } ?? "      —" }
    var s = "| features | k-NN top-1 | linear probe top-1 | linear probe top-5 |\n| --- | ---: | ---: | ---: |\n"
    for r in rows { s += "| \(r.name) | \(pct(r.knnTop1)) | \(pct(r.probeTop1)) | \(pct(r.probeTop5)) |\n" }
    return s
  }
}

public enum Evaluation {
  /// The candidate blr whose probe, trained on a seeded 80 % of the training features, scores best (top-1) on the
  /// other 20 %; ties go to the earlier candidate. Returns it and every candidate's held-out score.
  public static func selectProbeBlr(_ candidates: [Double], features: Tensor, labels: [Int], classes: Int,
                             config: LinearProbeConfig, seed: UInt64) throws -> (Double, [String: Double]) {
    let n = features.shape[0], d = features.shape[1]
    var order = Array(0..<n)
    var rng = SplitMix64(seed: seed ^ 0x4E1D)
    order.shuffle(using: &rng)
    let cut = n * 4 / 5
    func rows(_ ids: ArraySlice<Int>) -> Tensor {
      let t = Tensor(uninitialized: [ids.count, d])
      for (r, i) in ids.enumerated() { (t.data + r * d).update(from: features.data + i * d, count: d) }
      return t
    }
    let fit = rows(order[..<cut]), held = rows(order[cut...])
    let fitLabels = order[..<cut].map { labels[$0] }, heldLabels = order[cut...].map { labels[$0] }
    var best = candidates[0], bestScore = -1.0, scores: [String: Double] = [:]
    for blr in candidates {
      var pc = config
      pc.blr = blr
      pc.batchSize = min(pc.batchSize, cut)
      let r = try LinearProbe.run(train: fit, trainLabels: fitLabels, test: held, testLabels: heldLabels,
                                  classes: classes, config: pc)
      scores[String(blr)] = r.final.top1
      if r.final.top1 > bestScore { (best, bestScore) = (blr, r.final.top1) }
    }
    return (best, scores)
  }

  /// The k-NN bank and the probe's training set: the images the encoder was pretrained on (as in the paper, where
  /// both are the training split it pretrained on), topped up from the rest of the training split when more are
  /// asked for; with another data folder than the run's, a seeded draw from its training split. The test images are
  /// a seeded draw of the test split. Returns (bank, queries, how many of the bank the run pretrained on).
  public static func splits(run cfg: PretrainConfig, dataDir: String, train: EvalImages, test: EvalImages,
                             trainImages: Int, testImages: Int, seed: UInt64) -> (bank: [Int], queries: [Int], fromRun: Int) {
    var rng = SplitMix64(seed: seed)
    var a = Array(0..<train.dataset.count), b = Array(0..<test.dataset.count)
    a.shuffle(using: &rng)
    b.shuffle(using: &rng)
    let queries = Array(b.prefix(testImages))
    let sameData = URL(fileURLWithPath: dataDir).standardizedFileURL.path
      == URL(fileURLWithPath: cfg.dataDir).standardizedFileURL.path
    guard sameData else { return (Array(a.prefix(trainImages)), queries, 0) }
    let seen = cfg.trainingIndices(datasetCount: train.dataset.count)
    let seenSet = Set(seen)
    let bank = Array(seen.prefix(trainImages)) + a.lazy.filter { !seenSet.contains($0) }.prefix(max(0, trainImages - seen.count))
    return (bank, queries, min(trainImages, seen.count))
  }

  /// `group`: under mpirun every process extracts its share of the features (gathered on every process), then each
  /// scores the same full feature sets (identical results); only rank 0 logs.

  public static func run(_ c: EvaluationConfig, group: ProcessGroup = .single,
                         log sink: @escaping @Sendable (String) -> Void = { print($0) }) throws -> EvaluationReport {
    try c.validate()
    let (warn, log) = group.logs(sink)
    let ckpt = URL(fileURLWithPath: c.checkpoint)
    let state = try TrainState.read(ckpt)
    let cfg = state.config
    let dataDir = c.dataDir ?? cfg.dataDir
    let train = EvalImages(try DatasetLoader.open(dataDir, split: "train"), maxUnreadableFraction: c.maxUnreadableFraction,
                           warn: warn)
    let test = EvalImages(try DatasetLoader.open(dataDir, split: "test"), maxUnreadableFraction: c.maxUnreadableFraction,
                          warn: warn)
    let (bank, queries, fromRun) = splits(run: cfg, dataDir: dataDir, train: train, test: test, trainImages: c.trainImages,
                                          testImages: c.testImages, seed: c.seed)
    if fromRun > 0 {
      log("k-NN bank and probe training set: \(fromRun) of the run's pretraining images"
        + (bank.count > fromRun ? " and \(bank.count - fromRun) more training images" : ""))
    }
    let bankLabels = train.labels(bank), queryLabels = test.labels(queries)
    let classes = max(train.classes, (bankLabels + queryLabels).max()! + 1)
    log("evaluation on \(dataDir): \(bank.count) train images (k-NN bank, probe training), \(queries.count) test images")

    let weights = try SafeTensorsFile(contentsOf: ckpt.appendingPathComponent("model.safetensors"))
    let milan = MILANModel(cfg.model)
    try milan.load(try weights.tensors(), file: ckpt.appendingPathComponent("model.safetensors").path)
    let loaded = try RunTeacher.load(cfg, override: c.teacherPath, log: log)
    let teacher = loaded?.teacher, teacherSize = loaded.map { RunTeacher.inputSize($0.spec, cfg) } ?? 0

    var rows: [EvaluationRow] = []
    /// Features of `indices`: this process's share, gathered from every process in order.
    /// Features of `indices`: this process's share, gathered from every process in order. The closure is told
    /// whether the images are the training split's, and advances `progress`.
    func gathered(_ images: EvalImages, _ indices: [Int], training: Bool, progress: ProgressLog,
                  _ features: (EvalImages, [Int], Bool, ProgressLog) throws -> Tensor) throws -> Tensor {
      let local = try features(images, Array(indices[group.shard(indices.count)]), training, progress)
      return try group.allGatherRows(local, rowShape: Array(local.shape.dropFirst()))
    }
    func evaluate(_ name: String, probe: Bool = true,
                  _ features: (EvalImages, [Int], Bool, ProgressLog) throws -> Tensor) throws {
      let t0 = Date()
      let progress = ProgressLog("\(name): features", total: group.shard(bank.count).count + group.shard(queries.count).count,
                                 scale: group.size, log: log)
      let fb = try gathered(train, bank, training: true, progress: progress, features)
      let fq = try gathered(test, queries, training: false, progress: progress, features)
      var row = EvaluationRow(name: name)
      if c.knn {
        row.knnTop1 = KNN.accuracy(bank: fb, bankLabels: bankLabels, queries: fq, queryLabels: queryLabels,
                                   classes: classes, k: c.k, temperature: c.temperature)
      }
      if c.linearProbe && probe {
        var pc = c.probe
        pc.batchSize = min(pc.batchSize, bank.count)
        if let candidates = c.probeBlrCandidates, candidates.count > 1 {
          let (blr, scores) = try selectProbeBlr(candidates, features: fb, labels: bankLabels, classes: classes,
                                                 config: pc, seed: c.seed)
          pc.blr = blr
          row.probeSelection = scores
        }
        let r = try LinearProbe.run(train: fb, trainLabels: bankLabels, test: fq, testLabels: queryLabels, classes: classes,
                                config: pc, log: { _ in })
        row.probeTop1 = r.final.top1
        row.probeTop5 = r.final.top5
        row.probeBlr = pc.blr
      }
      rows.append(row)
      log(name.padding(toLength: 44, withPad: " ", startingAt: 0)
        + (row.knnTop1.map { String(format: "k-NN %6.2f %%  ", $0 * 100) } ?? "")
        + (row.probeTop1.map { String(format: "probe %6.2f %% (top-5 %6.2f %%)  ", $0 * 100, row.probeTop5! * 100) } ?? "")
        + String(format: "(%.0f s)", Date().timeIntervalSince(t0)))
    }
    let size = cfg.imageSize
    if c.encoder {
      try evaluate("MILAN encoder (epoch \(state.epoch), \(c.pool.rawValue))") {
        try Features.encoder(milan.encoder, images: $0, indices: $1, imageSize: size, pool: c.pool, progress: $3)
      }
    }
    if let keep = c.semanticKeep, let teacher {
      let sp = SemanticProbing(teacher: teacher, teacherImageSize: teacherSize, keepFraction: keep)
      try evaluate(String(format: "MILAN encoder, semantic-aware %.0f %% patches", keep * 100)) {
        try Features.encoder(milan.encoder, images: $0, indices: $1, imageSize: size, pool: c.pool, semantic: sp,
                             progress: $3)
      }
    }
    if c.baselines {
      let random = VisionTransformer(cfg.model.encoder, seed: 7)
      try evaluate("random encoder (same architecture)") {
        try Features.encoder(random, images: $0, indices: $1, imageSize: size, pool: c.pool, progress: $3)
      }
      if let loaded {
        // The training images' features pretraining kept (same teacher, size, data and preprocessing only).
        let key = TeacherFeatureCache.Key(teacherSHA256: loaded.spec.sha256, imageSize: teacherSize, dataDir: dataDir,
                                          datasetCount: train.dataset.count,
                                          preprocessing: TeacherFeatureCache.preprocessing(train.dataset, evaluation: true))
        let cache = TeacherFeatureCache.read(ckpt, matching: key, log: log)
        if let cache {
          let reused = bank.filter { cache.rowOf[$0] != nil }.count
          log("teacher features of \(reused) of the \(bank.count) bank images reused from the pretraining run "
            + "(\(TeacherFeatureCache.fileName))")
        }
        try evaluate("teacher \(loaded.spec.name) (\(teacherSize) px, class token)") {
          try Features.teacher(loaded.teacher, images: $0, indices: $1, imageSize: teacherSize,
                               cached: $2 ? cache : nil, progress: $3)
        }
      }
      try evaluate("raw pixels (\(size) px)") {
        try Features.pixels(images: $0, indices: $1, imageSize: size, progress: $3)
      }
    }
    let unreadable = try group.allReduce([Double(train.loader.failureCount + test.loader.failureCount)], .sum)[0]
    return EvaluationReport(dataset: dataDir, trainImages: bank.count, testImages: queries.count, rows: rows,
                            unreadableImages: Int(unreadable))
  }
}

/// The teacher of a pretraining run for the commands that read a run (eval, step, embed): the one state.json
/// records, or another file; a recorded file that no longer exists is skipped with a message (evaluation still
/// scores the encoder), a file that exists but cannot be used is an error.
public enum RunTeacher {
  public static func load(_ cfg: PretrainConfig, override: String?, log: (String) -> Void) throws -> LoadedTeacher? {
    if let override { return try TeacherFile.load(override) }
    let path = cfg.teacher?.path ?? cfg.teacherPath
    guard !path.isEmpty, cfg.teacher?.format != .inMemory else {
      log("the run records no teacher file: teacher baseline and semantic-aware probing skipped (give --teacher)")
      return nil
    }
    guard FileManager.default.fileExists(atPath: path) else {
      log("teacher not found at \(path): teacher baseline and semantic-aware probing skipped (give --teacher)")
      return nil
    }
    // Another copy of the same network may score the baseline; a changed file is said, not refused.
    let t = try cfg.teacher.map { try TeacherFile.load(recorded: $0, allowChanged: true) } ?? TeacherFile.load(path)
    if let rec = cfg.teacher, rec.sha256 != t.spec.sha256 {
      log("note: \(path) has changed since pretraining (sha256 \(t.spec.sha256.prefix(12))…, recorded "
        + "\(rec.sha256.prefix(12))…)")
    }
    return t
  }

  /// The teacher's input size for a run's student: the recorded one, else the student's grid × the teacher's patch.
  public static func inputSize(_ spec: TeacherSpec, _ cfg: PretrainConfig) -> Int {
    if let s = spec.inputSize, s / spec.architecture.patchSize == cfg.model.encoder.gridSize { return s }
    return cfg.model.encoder.gridSize * spec.architecture.patchSize
  }
}
