import ArgumentParser
import Foundation
import MilanData
import MilanTrain

struct EvaluationOptions: ParsableArguments {
  @Option(help: "Pretraining output folder (model.safetensors, state.json).") var checkpoint = "runs/milan-fashion"
  @Option(help: "IDX folder or image folder with train/ and val/ (default: the pretraining data).") var dataDir: String?
  @Option(help: "DINOv2 ONNX teacher for the teacher baseline (default: the pretraining teacher).") var teacher: String?
  @Option(help: "Train images: the k-NN bank and the probe's training set (seeded subset).") var trainImages = 4000
  @Option(help: "Test images (seeded subset of the test split).") var testImages = 2000
  @Option(help: "Encoder feature: token (class token after the final norm) or mean (mean of patch tokens).")
  var pool = "token"
  @Option(help: "Write the results as JSON here.") var json: String?
  @Flag(help: "Skip the random-encoder, teacher and raw-pixel baselines.") var noBaselines = false
  @Option(help: "Fraction of unreadable images tolerated (skipped and counted) per split.") var maxUnreadable = 0.01

  func config() throws -> EvaluationConfig {
    var c = EvaluationConfig(checkpoint: checkpoint)
    c.dataDir = dataDir
    c.teacherPath = teacher
    c.trainImages = trainImages
    c.testImages = testImages
    guard let p = FeaturePool(rawValue: pool) else { throw ValidationError("--pool must be token or mean") }
    c.pool = p
    c.baselines = !noBaselines
    c.maxUnreadableFraction = maxUnreadable
    return c
  }

  func finish(_ r: EvaluationReport) throws {
    say("")
    say(r.table)
    if r.unreadableImages > 0 { say("\(r.unreadableImages) unreadable image(s) were skipped") }
    if let json {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      try enc.encode(r).write(to: URL(fileURLWithPath: json), options: .atomic)
      say("results written to \(json)")
    }
  }
}

struct ProbeOptions: ParsableArguments {
  @Option(help: "Linear probe epochs.") var probeEpochs = 90
  @Option(help: "Linear probe warmup epochs.") var probeWarmup = 10.0
  @Option(help: "Linear probe batch size.") var probeBatch = 256
  @Option(help: "Linear probe base lr (lr = blr × batch / 256), LARS with trust 0.001. MAE's ViT-B recipe runs lr 3.2–6.4 at batch 16384 for ~7,800 steps; on a few thousand cached features at batch 256 (~1,400 steps) blr 16 scored best of {0.1, 1, 4, 16, 64} on the demo.") var probeBlr = 16.0
  @Option(help: "Semantic-aware probing: keep this fraction of patches by teacher attention (paper: 0.5).")
  var semanticKeep: Double?

  func apply(_ c: inout EvaluationConfig) throws {
    c.probe.epochs = probeEpochs
    c.probe.warmupEpochs = probeWarmup
    c.probe.batchSize = probeBatch
    c.probe.blr = probeBlr
    if let k = semanticKeep {
      guard k > 0 && k <= 1 else { throw ValidationError("--semantic-keep must be in (0, 1]") }
      c.semanticKeep = k
    }
  }
}

struct KNNOptions: ParsableArguments {
  @Option(help: "k-NN neighbours.") var k = 20
  @Option(help: "k-NN temperature.") var temperature: Float = 0.07

  func apply(_ c: inout EvaluationConfig) {
    c.k = k
    c.temperature = temperature
  }
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
        guard let dataDir = options.dataDir else { throw ValidationError("--classifier needs --data-dir") }
        let model = try MilanTrain.Classifier.load(URL(fileURLWithPath: classifier))
        let data = EvalImages(try DatasetLoader.open(dataDir, split: "test"), warn: say)
        let s = try MilanTrain.Classifier.score(model, data: data, limit: options.testImages)
        say(String(format: "| classifier | images | top-1 | top-5 | loss |\n| --- | ---: | ---: | ---: | ---: |\n"
          + "| %@ | %d | %.2f %% | %.2f %% | %.4f |", classifier, s.count, s.top1 * 100, s.top5 * 100, s.loss))
        if let json = options.json {
          let enc = JSONEncoder()
          enc.outputFormatting = [.prettyPrinted, .sortedKeys]
          try enc.encode(s).write(to: URL(fileURLWithPath: json), options: .atomic)
        }
        return
      }
      var c = try options.config()
      try probe.apply(&c)
      knn.apply(&c)
      try options.finish(try Evaluation.run(c, log: say))
    }
  }

  struct Knn: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Weighted k-NN (k = 20, T = 0.07, as DINO) of a pretrained encoder, with the baselines.")
    @OptionGroup var options: EvaluationOptions
    @OptionGroup var knn: KNNOptions

    func run() throws {
      var c = try options.config()
      c.linearProbe = false
      knn.apply(&c)
      try options.finish(try Evaluation.run(c, log: say))
    }
  }

  struct Linprobe: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Linear probe (BatchNorm without affine + Linear, LARS) on the frozen encoder, with the baselines.")
    @OptionGroup var options: EvaluationOptions
    @OptionGroup var probe: ProbeOptions

    func run() throws {
      var c = try options.config()
      c.knn = false
      try probe.apply(&c)
      try options.finish(try Evaluation.run(c, log: say))
    }
  }
}
