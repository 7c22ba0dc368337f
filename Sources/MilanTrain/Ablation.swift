// `milan ablate`: the paper's ablation (Table 5's rows, its KD row, and the masked-only loss) trained and scored at
// one budget on the same data with the same engine as `milan pretrain` / `milan eval` (Pretrainer, Evaluation):
// every row × seed in its own run folder under the output folder, then the random-encoder, teacher and raw-pixel
// baselines once, then one Markdown table and JSON. Finished runs are skipped and unfinished ones resumed, so an
// interrupted ablate continues where it stopped. The linear probe's lr is chosen per run on held-out training
// images (Evaluation.probeBlrCandidates); the test images choose nothing.
import Foundation
import MilanModels

public struct AblationRow: Codable, Sendable, Equatable {
  public var name: String
  public var label: String
  public var decoder: MILANConfig.Decoder
  public var target: MILANConfig.Target
  public var masking: PretrainConfig.MaskingKind
  public var lossTokens: MILANConfig.LossTokens

  /// The six rows: (1) MAE, (2) teacher target + MAE decoder, (3) + prompting decoder, (4) MILAN (+ semantic-aware
  /// sampling), (5) KD without decoder, (6) MILAN with the paper's masked-only loss.
  public static let all: [AblationRow] = [
    AblationRow(name: "mae", label: "MAE: pixels (norm_pix), MAE decoder, random masking", decoder: .mae,
                target: .pixels, masking: .random, lossTokens: .masked),
    AblationRow(name: "teacher-mae-random", label: "teacher target, MAE decoder, random masking", decoder: .mae,
                target: .features, masking: .random, lossTokens: .all),
    AblationRow(name: "teacher-prompting-random", label: "teacher target, prompting decoder, random masking",
                decoder: .prompting, target: .features, masking: .random, lossTokens: .all),
    AblationRow(name: "milan", label: "MILAN: + semantic-aware masking", decoder: .prompting, target: .features,
                masking: .semantic, lossTokens: .all),
    AblationRow(name: "kd", label: "KD: no decoder, teacher target on visible tokens", decoder: .kd,
                target: .features, masking: .semantic, lossTokens: .all),
    AblationRow(name: "milan-masked-loss", label: "MILAN, loss on masked patches only (the paper's wording)",
                decoder: .prompting, target: .features, masking: .semantic, lossTokens: .masked),
  ]

  /// The row's pretraining configuration from the shared one.
  public func apply(to base: PretrainConfig, seed: UInt64, output: URL) -> PretrainConfig {
    var c = base
    c.model.decoder = decoder
    c.model.target = target
    c.model.lossTokens = lossTokens
    c.model.predictionDim = 0  // follows the teacher or the pixels
    c.masking = masking
    c.seed = seed
    c.dataSeed = base.dataSeed ?? base.seed
    c.outputDir = output.path
    return c
  }
}

public struct AblationConfig: Sendable {
  public var base: PretrainConfig
  public var seeds: [UInt64] = [0, 1]
  public var rows: [AblationRow] = AblationRow.all
  public var evaluation: EvaluationConfig
  public var output: String

  /// The CPU demo's pretraining (`PretrainConfig.fashionDemo`: Fashion-MNIST, 4,000 images, 15 epochs, the DINOv2
  /// teacher) and `milan eval`'s scoring, with the probe's lr chosen on held-out training images from
  /// {1, 4, 16, 64}.
  public init(base: PretrainConfig, output: String) {
    self.base = base
    self.output = output
    evaluation = EvaluationConfig(checkpoint: "")
    evaluation.probe.blr = 16
    evaluation.probeBlrCandidates = [1, 4, 16, 64]
  }
}

public struct AblationResult: Codable, Sendable {
  public struct Run: Codable, Sendable {
    public var seed: UInt64
    public var folder: String
    public var knnTop1: Double?
    public var probeTop1: Double?
    public var probeBlr: Double?
    public var pretrainSeconds: Double
    public var finalLoss: Double?
  }
  public struct Row: Codable, Sendable {
    public var row: AblationRow
    public var runs: [Run]
  }
  public var date: String
  public var dataset: String
  public var epochs: Int
  public var trainImages: Int?
  public var teacher: String?
  public var rows: [Row]
  public var baselines: [EvaluationRow]
  public var evaluation: String

  /// Mean and range over seeds, as "74.2 % (73.9–74.5)".
  static func summary(_ values: [Double?]) -> String {
    let v = values.compactMap { $0 }
    guard !v.isEmpty else { return "—" }
    let mean = v.reduce(0, +) / Double(v.count)
    if v.count == 1 { return String(format: "%.2f %%", mean * 100) }
    return String(format: "%.2f %% (%.2f–%.2f)", mean * 100, v.min()! * 100, v.max()! * 100)
  }

  public var table: String {
    var s = "| row | k-NN top-1, mean (min–max) | linear probe top-1, mean (min–max) | pretraining wall time | seeds |\n"
    s += "| --- | ---: | ---: | ---: | ---: |\n"
    for (i, r) in rows.enumerated() {
      let secs = r.runs.map(\.pretrainSeconds)
      let t = secs.isEmpty ? "—" : String(format: "%.0f s", secs.reduce(0, +) / Double(secs.count))
      s += "| (\(i + 1)) \(r.row.label) | \(Self.summary(r.runs.map(\.knnTop1))) | \(Self.summary(r.runs.map(\.probeTop1))) "
        + "| \(t) | \(r.runs.count) |\n"
    }
    for b in baselines {
      s += "| baseline: \(b.name) | \(Self.summary([b.knnTop1])) | \(Self.summary([b.probeTop1])) | — | — |\n"
    }
    return s
  }
}

public enum Ablation {
  /// Trains and scores every row × seed (skipping finished runs, resuming unfinished ones), the baselines once, and
  /// writes `ablation.md` and `ablation.json` to the output folder. Returns nil when a stop signal interrupted a
  /// run (its checkpoint is written; running the same command again continues).
  public static func run(_ c: AblationConfig, group: ProcessGroup = .single,
                         log sink: @escaping @Sendable (String) -> Void = { print($0) }) throws -> AblationResult? {
    let (_, log) = group.logs(sink)
    let out = URL(fileURLWithPath: c.output)
    if group.rank == 0 { try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true) }
    var rows: [AblationResult.Row] = []
    var teacherName: String? = nil
    for row in c.rows {
      var runs: [AblationResult.Run] = []
      for seed in c.seeds {
        let dir = out.appendingPathComponent(row.name).appendingPathComponent("seed-\(seed)")
        guard let run = try runOne(row, seed: seed, dir: dir, c, group: group, log: sink) else { return nil }
        runs.append(run)
        if teacherName == nil, let t = try? TrainState.read(dir).config.teacher { teacherName = t.name }
      }
      rows.append(AblationResult.Row(row: row, runs: runs))
    }
    // Baselines once, on the same data (any finished run's configuration names it and the teacher).
    let baseURL = out.appendingPathComponent("baselines.json")
    let baselines: [EvaluationRow]
    if let data = try? Data(contentsOf: baseURL), let r = try? JSONDecoder().decode(EvaluationReport.self, from: data) {
      baselines = r.rows
    } else {
      let reference = rows.first { $0.row.target == .features && $0.row.masking == .semantic }?.runs.first?.folder
        ?? rows[0].runs[0].folder
      var e = c.evaluation
      e.checkpoint = reference
      e.encoder = false
      e.baselines = true
      log("ablate: baselines (random encoder, teacher, raw pixels)")
      let r = try Evaluation.run(e, group: group, log: sink)
      if group.rank == 0 { try PretrainConfig.jsonEncoder().encode(r).write(to: baseURL, options: .atomic) }
      baselines = r.rows
    }
    let f = ISO8601DateFormatter()
    let result = AblationResult(
      date: f.string(from: Date()), dataset: c.base.dataDir, epochs: c.base.epochs, trainImages: c.base.trainImages,
      teacher: teacherName, rows: rows, baselines: baselines,
      evaluation: "k-NN k = \(c.evaluation.k), T = \(c.evaluation.temperature); linear probe \(c.evaluation.probe.epochs) "
        + "epochs, blr from \(c.evaluation.probeBlrCandidates.map { "\($0)" } ?? "\(c.evaluation.probe.blr)") chosen on "
        + "20 % of the \(c.evaluation.trainImages) training images held out; \(c.evaluation.testImages) test images")
    if group.rank == 0 {
      try PretrainConfig.jsonEncoder().encode(result).write(to: out.appendingPathComponent("ablation.json"), options: .atomic)
      try Data(result.table.utf8).write(to: out.appendingPathComponent("ablation.md"), options: .atomic)
    }
    return result
  }

  /// One row × seed: skipped when finished and scored, resumed when a checkpoint is there, else trained; then scored.
  static func runOne(_ row: AblationRow, seed: UInt64, dir: URL, _ c: AblationConfig, group: ProcessGroup,
                     log sink: @escaping @Sendable (String) -> Void) throws -> AblationResult.Run? {
    let (_, log) = group.logs(sink)
    let evalURL = dir.appendingPathComponent("eval.json"), timeURL = dir.appendingPathComponent("ablate-time.json")
    let cfg = row.apply(to: c.base, seed: seed, output: dir)
    var seconds = (try? JSONDecoder().decode([String: Double].self, from: Data(contentsOf: timeURL)))?["seconds"] ?? 0
    let existing = try? TrainState.read(dir)
    if existing == nil || existing!.epoch < cfg.epochs {
      log("ablate: \(row.name) seed \(seed)" + (existing.map { " (resuming at epoch \($0.epoch + 1))" } ?? ""))
      let trainer = try Pretrainer(existing?.config ?? cfg, group: group, log: sink)
      let start = try existing.map { _ in try Checkpoint.load(into: trainer.model, optimizer: trainer.optimizer, from: dir) }
      let t0 = Date()
      _ = try trainer.run(from: start)
      seconds += Date().timeIntervalSince(t0)
      if group.rank == 0 {
        try JSONEncoder().encode(["seconds": seconds]).write(to: timeURL, options: .atomic)
      }
      if trainer.interrupted { return nil }
    }
    let report: EvaluationReport
    if let data = try? Data(contentsOf: evalURL), let r = try? JSONDecoder().decode(EvaluationReport.self, from: data) {
      report = r
    } else {
      var e = c.evaluation
      e.checkpoint = dir.path
      e.baselines = false
      report = try Evaluation.run(e, group: group, log: sink)
      if group.rank == 0 { try PretrainConfig.jsonEncoder().encode(report).write(to: evalURL, options: .atomic) }
    }
    let state = try TrainState.read(dir)
    return AblationResult.Run(seed: seed, folder: dir.path, knnTop1: report.rows.first?.knnTop1,
                              probeTop1: report.rows.first?.probeTop1, probeBlr: report.rows.first?.probeBlr,
                              pretrainSeconds: seconds, finalLoss: state.lastLoss)
  }
}
