import ArgumentParser
import Foundation
import MilanTrain

extension Milan {
  struct Ablate: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Train and score the paper's ablation rows at one budget on the same data, with seeds, and the baselines once.",
      discussion: """
        Rows: (1) MAE (pixels with norm_pix_loss, MAE decoder, random masking), (2) teacher target + MAE decoder + \
        random masking, (3) + prompting decoder, (4) MILAN (+ semantic-aware masking), (5) KD without decoder, \
        (6) MILAN with the loss on masked patches only. Default budget: the CPU demo (Fashion-MNIST, 4,000 images, \
        15 epochs, the DINOv2-S/14 teacher); --config and the flags below change it for every row. Each row × seed \
        trains in OUTPUT/<row>/seed-<n> with milan pretrain's engine and is scored with milan eval's (k-NN and a \
        linear probe whose lr is chosen on held-out training images); the random encoder, the teacher and raw \
        pixels are scored once. Writes OUTPUT/ablation.md and ablation.json. Run again after an interruption: \
        finished runs are skipped, the interrupted one resumes.
        """)

    @Option(name: .shortAndLong, help: "Output folder (default runs/ablate).") var output = "runs/ablate"
    @Option(help: "JSON configuration shared by every row (a PretrainConfig; default: the CPU demo on 4,000 images).")
    var config: String?
    @Option(help: "Training data (default: Debian's Fashion-MNIST).") var dataDir: String?
    @Option(help: "Teacher weights (default: the DINOv2-S/14 of scripts/fetch-teacher.sh).") var teacher: String?
    @Option(help: "Epochs of every run.") var epochs: Int?
    @Option(help: "Training images (seeded subset, the same for every row and seed).") var trainImages: Int?
    @Option(help: "Batch size of every run (per process).") var batchSize: Int?
    @Option(help: "Seeds of every row, comma-separated (default 0,1).") var seeds = "0,1"
    @Option(help: "Only these rows, comma-separated names (mae, teacher-mae-random, teacher-prompting-random, milan, kd, milan-masked-loss).")
    var rows: String?
    @Option(help: "Evaluation: train images (k-NN bank, probe training; default 4000).") var evalTrainImages = 4000
    @Option(help: "Evaluation: test images (default 2000).") var evalTestImages = 2000
    @Option(help: "Linear probe epochs (default 90).") var probeEpochs = 90
    @Flag(help: "Do not write report.html at the end.") var noReport = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
      let group = try runtime.start()
      var base: PretrainConfig
      if let config {
        base = try configFile(PretrainConfig.self, config)
      } else {
        base = .fashionDemo(dataDir: PretrainConfig.defaultDataDir, teacherPath: "", outputDir: output)
      }
      if let dataDir { base.dataDir = dataDir }
      if let teacher { base.teacherPath = teacher }
      if let epochs { base.epochs = epochs }
      if let trainImages { base.trainImages = trainImages }
      if let batchSize { base.batchSize = batchSize }
      var c = AblationConfig(base: base, output: output)
      c.seeds = try seeds.split(separator: ",").map {
        guard let s = UInt64($0.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("--seeds: \($0) is not a seed") }
        return s
      }
      guard !c.seeds.isEmpty else { throw ValidationError("--seeds needs at least one seed") }
      if let rows {
        c.rows = try rows.split(separator: ",").map { name in
          guard let r = AblationRow.all.first(where: { $0.name == name }) else {
            throw ValidationError("--rows: no row \(name); rows: " + AblationRow.all.map(\.name).joined(separator: ", "))
          }
          return r
        }
      }
      c.evaluation.trainImages = evalTrainImages
      c.evaluation.testImages = evalTestImages
      c.evaluation.probe.epochs = probeEpochs
      c.evaluation.probe.warmupEpochs = min(c.evaluation.probe.warmupEpochs, Double(max(probeEpochs, 0)))
      for row in c.rows {
        var probe = row.apply(to: base, seed: c.seeds[0], output: URL(fileURLWithPath: output))
        probe.outputDir = output
        do { try probe.validate() } catch { throw ValidationError("row \(row.name): \(error)") }
      }
      StopSignal.install()
      let t0 = Date()
      guard let r = try Ablation.run(c, group: group, log: say) else {
        say("ablate interrupted: run the same command again to continue")
        return
      }
      say("")
      say(r.table)
      say(String(format: "ablate done in %.0f s: %@/ablation.md and ablation.json", Date().timeIntervalSince(t0), output))
      if !noReport && group.rank == 0 { writeReport(output) }
    }
  }
}
