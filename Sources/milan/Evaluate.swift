import ArgumentParser
import Foundation
import MilanData
import MilanTrain

struct EvaluationOptions: ParsableArguments {
  @Option(help: "Pretraining output folder (model.safetensors, state.json; default runs/milan-fashion).")
  var checkpoint: String?
  @Option(help: "IDX folder or image folder with train/ and val/ (default: the pretraining data).") var dataDir: String?
  @Option(help: "Teacher for the teacher baseline and semantic-aware probing, any format pretrain takes (default: the run's recorded teacher).")
  var teacher: String?
  @Option(help: "Train images: the k-NN bank and the probe's training set (seeded subset; default 4000).")
  var trainImages: Int?
  @Option(help: "Test images (seeded subset of the test split; default 2000).") var testImages: Int?
  @Option(help: "Encoder feature: token (class token after the final norm, default) or mean (mean of patch tokens).")
  var pool: String?
  @Option(help: "Write the results as JSON here.") var json: String?
  @Flag(help: "Skip the random-encoder, teacher and raw-pixel baselines.") var noBaselines = false
  @Option(help: "Fraction of unreadable images tolerated (skipped and counted) per split; default 0.01.")
  var maxUnreadable: Double?
  @OptionGroup var runtime: RuntimeOptions

  func config() throws -> EvaluationConfig {
    var c = EvaluationConfig(checkpoint: checkpoint ?? "runs/milan-fashion")
    c.dataDir = dataDir
    c.teacherPath = teacher
    if let trainImages { c.trainImages = trainImages }
    if let testImages { c.testImages = testImages }
    if let pool { c.pool = try choice(pool, "--pool") }
    c.baselines = !noBaselines
    if let maxUnreadable { c.maxUnreadableFraction = maxUnreadable }
    return c
  }

  /// Options that mean nothing when a finetuned classifier is scored (it has its own encoder and head).
  var givenForRunOnly: [String] {
    [("--checkpoint", checkpoint != nil), ("--teacher", teacher != nil), ("--train-images", trainImages != nil),
     ("--pool", pool != nil), ("--no-baselines", noBaselines)].filter(\.1).map(\.0)
  }

  func finish(_ r: EvaluationReport) throws {
    say("")
    say(r.table)
    if r.unreadableImages > 0 { say("\(r.unreadableImages) unreadable image(s) were skipped") }
    if let json, ProcessGroup.ifCreated?.rank ?? 0 == 0 {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      try enc.encode(r).write(to: URL(fileURLWithPath: json), options: .atomic)
      say("results written to \(json)")
    }
  }
}

struct ProbeOptions: ParsableArguments {
  /// The command's probe lr (the library's LinearProbeConfig keeps MAE's 0.1).
  static let defaultBlr = 16.0

  @Option(help: "Linear probe epochs (default 90).") var probeEpochs: Int?
  @Option(help: "Linear probe warmup epochs (default 10, or the whole probe when it is shorter).") var probeWarmup: Double?
  @Option(help: "Linear probe batch size (default 256).") var probeBatch: Int?
  @Option(help: "Linear probe base lr (lr = blr × batch / 256), LARS with trust 0.001; default 16. MAE's ViT-B recipe runs lr 3.2–6.4 at batch 16384 for ~7,800 steps; on a few thousand cached features at batch 256 (~1,400 steps) blr 16 scored best of {0.1, 1, 4, 16, 64} on the demo.") var probeBlr: Double?
  @Option(help: "Semantic-aware probing: keep this fraction of patches by teacher attention (paper: 0.5).")
  var semanticKeep: Double?

  func apply(_ c: inout EvaluationConfig) throws {
    if let probeEpochs { c.probe.epochs = probeEpochs }
    // Default warmup: MAE's 10 epochs, or the whole probe when it is shorter.
    c.probe.warmupEpochs = probeWarmup ?? min(c.probe.warmupEpochs, Double(max(c.probe.epochs, 0)))
    if let probeBatch { c.probe.batchSize = probeBatch }
    c.probe.blr = probeBlr ?? Self.defaultBlr
    if let k = semanticKeep {
      c.semanticKeep = k
    }
  }

  var given: [String] {
    [("--probe-epochs", probeEpochs != nil), ("--probe-warmup", probeWarmup != nil), ("--probe-batch", probeBatch != nil),
     ("--probe-blr", probeBlr != nil), ("--semantic-keep", semanticKeep != nil)].filter(\.1).map(\.0)
  }
}

struct KNNOptions: ParsableArguments {
  @Option(help: "k-NN neighbours (default 20).") var k: Int?
  @Option(help: "k-NN temperature (default 0.07).") var temperature: Float?

  func apply(_ c: inout EvaluationConfig) {
    if let k { c.k = k }
    if let temperature { c.temperature = temperature }
  }

  var given: [String] { [("--k", k != nil), ("--temperature", temperature != nil)].filter(\.1).map(\.0) }
}

extension Milan {
  struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Score a pretrained encoder: weighted k-NN and a linear probe, against a random encoder, the "
        + "teacher's features and raw pixels; a table and optional JSON.")
    @OptionGroup var options: EvaluationOptions
    @OptionGroup var probe: ProbeOptions
    @OptionGroup var knn: KNNOptions
    @Option(help: "Score a finetuned classifier (classifier.safetensors from milan finetune) on the test split instead.")
    var classifier: String?

    func run() throws {
      if let classifier {
        let ignored = options.givenForRunOnly + probe.given + knn.given
        guard ignored.isEmpty else {
          throw ValidationError("--classifier scores a finetuned classifier on the test split (options --data-dir, "
            + "--test-images, --json, --max-unreadable); \(ignored.joined(separator: ", ")) do not apply to it")
        }
        guard let dataDir = options.dataDir else { throw ValidationError("--classifier needs --data-dir") }
        let limit = options.testImages ?? 2000, maxUnreadable = options.maxUnreadable ?? 0.01
        guard limit > 0 else { throw ValidationError("--test-images must be positive (got \(limit))") }
        guard maxUnreadable >= 0 && maxUnreadable <= 1 else {
          throw ValidationError("--max-unreadable must be in [0, 1] (got \(maxUnreadable))")
        }
        let model = try MilanTrain.Classifier.load(URL(fileURLWithPath: classifier))
        let data = EvalImages(try DatasetLoader.open(dataDir, split: "test"),
                              maxUnreadableFraction: maxUnreadable, warn: say)
        let s = try MilanTrain.Classifier.score(model, data: data, limit: limit)
        say(String(format: "| classifier | images | top-1 | top-5 | loss |\n| --- | ---: | ---: | ---: | ---: |\n"
          + "| %@ | %d | %.2f %% | %.2f %% | %.4f |", classifier, s.count, s.top1 * 100, s.top5 * 100, s.loss))
        if let json = options.json {
          let enc = JSONEncoder()
          enc.outputFormatting = [.prettyPrinted, .sortedKeys]
          try enc.encode(s).write(to: URL(fileURLWithPath: json), options: .atomic)
        }
        return
      }
      let group = try options.runtime.start()
      var c = try options.config()
      try probe.apply(&c)
      knn.apply(&c)
      try options.finish(try Evaluation.run(c, group: group, log: say))
    }
  }

  struct Knn: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Weighted k-NN (k = 20, T = 0.07, as DINO) of a pretrained encoder, with the baselines.")
    @OptionGroup var options: EvaluationOptions
    @OptionGroup var knn: KNNOptions

    func run() throws {
      let group = try options.runtime.start()
      var c = try options.config()
      c.linearProbe = false
      knn.apply(&c)
      try options.finish(try Evaluation.run(c, group: group, log: say))
    }
  }

  struct Linprobe: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Linear probe (BatchNorm without affine + Linear, LARS) on the frozen encoder, with the baselines.")
    @OptionGroup var options: EvaluationOptions
    @OptionGroup var probe: ProbeOptions

    func run() throws {
      let group = try options.runtime.start()
      var c = try options.config()
      c.knn = false
      try probe.apply(&c)
      try options.finish(try Evaluation.run(c, group: group, log: say))
    }
  }
}
