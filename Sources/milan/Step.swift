import ArgumentParser
import Foundation
import MilanIO
import MilanModels
import MilanTensor
import MilanTrain

extension Milan {
  struct Step: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run one training step of a checkpoint on a given batch and write every result to a safetensors file.",
      discussion: """
        The batch file holds `images` [B,3,H,W] and the masking noise: `exp_noise` [B,L] (semantic-aware sampling, \
        Exp(1) draws) or `uniform_noise` [B,L] (random masking); optionally the teacher's `target` [B,1+L,C] and \
        `importance` [B,L] (otherwise the teacher is run: --teacher, or the one the checkpoint folder's state.json \
        records, on `teacher_images` [B,3,S,S] or on the images resized to its input size S). The objective is the checkpoint's own (decoder, target, loss tokens). The output holds \
        loss, pred, latent, target, importance, mask, ids_*, grad.<key> for every trainable parameter and, with \
        --adamw-lr, updated.<key>, exp_avg.<key> and exp_avg_sq.<key> after one AdamW step from zero moments or from \
        --optimizer's. The golden tests drive the same library function.
        """)

    @Option(help: "Model weights: a checkpoint folder (model.safetensors, state.json) or a .safetensors file.") var checkpoint: String
    @Option(help: "MILANConfig JSON, when the weights do not carry `milan.config` metadata.") var config: String?
    @Option(help: "Batch safetensors file.") var batch: String
    @Option(help: "Teacher weights, any format milan pretrain takes (default: the checkpoint's recorded teacher).")
    var teacher: String?
    @Option(name: .shortAndLong, help: "Output safetensors file.") var output: String
    @Option(help: "Mask ratio (default: the checkpoint's, else 0.75).") var maskRatio: Double?
    @Option(help: "Tokens the loss covers: all, patches or masked (default: the checkpoint's).") var lossTokens: String?
    @Flag(help: "Same as --loss-tokens masked.") var maskedLossOnly = false
    @Option(help: "Also take one AdamW step at this learning rate and write updated.<key>.") var adamwLr: Float?
    @Option(help: "AdamW moments to continue from (an optimizer.safetensors: <key>.exp_avg, <key>.exp_avg_sq, step).")
    var optimizer: String?
    @Option(help: "clip_grad_norm_ before the AdamW step.") var gradClip: Float?
    @Option(help: "Worker threads (default: the cores this process may use; MILAN_THREADS also sets it).")
    var threads: Int?

    func run() throws {
      if let threads {
        guard threads > 0 else { throw ValidationError("--threads must be positive") }
        Parallel.threads = threads
      }
      var url = URL(fileURLWithPath: checkpoint)
      var isDir: ObjCBool = false
      var run: TrainState? = nil
      if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("state.json").path) {
          run = try TrainState.read(url)
        }
        url = url.appendingPathComponent("model.safetensors")
      }
      if optimizer != nil && adamwLr == nil { throw ValidationError("--optimizer needs --adamw-lr (the step to take)") }
      let weights = try SafeTensorsFile(contentsOf: url)
      var cfg: MILANConfig
      if let config {
        cfg = try configFile(MILANConfig.self, config)
      } else {
        cfg = try SingleStep.config(of: weights)
      }
      if let lossTokens { cfg.lossTokens = try choice(lossTokens, "--loss-tokens") }
      if maskedLossOnly { cfg.lossTokens = .masked }
      let batchFile = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: batch))
      let hasTeacherOutputs = (try? batchFile.info("target")) != nil && (try? batchFile.info("importance")) != nil
      let needsTeacher = !hasTeacherOutputs && (cfg.target == .features || (try? batchFile.info("exp_noise")) != nil)
      var t: (any Teacher)? = nil
      var teacherSize: Int? = nil
      if needsTeacher {
        if let teacher {
          t = try TeacherFile.load(teacher).teacher
        } else if let run, let loaded = try RunTeacher.load(run.config, override: nil, log: say) {
          t = loaded.teacher
          teacherSize = RunTeacher.inputSize(loaded.spec, run.config)
        }
      }
      let givenDim = hasTeacherOutputs ? try batchFile.info("target").shape.last : nil
      let featureDim = t?.featureDim ?? givenDim
      do { cfg = try cfg.resolved(teacherFeatures: featureDim) } catch { throw ValidationError("\(error)") }
      let model = MILANModel(cfg)
      try model.load(try weights.tensors())
      var o = SingleStepOptions()
      o.maskRatio = maskRatio ?? run?.config.maskRatio ?? 0.75
      o.adamwLR = adamwLr
      o.gradClip = gradClip
      o.optimizerState = optimizer.map { URL(fileURLWithPath: $0) }
      o.teacherImageSize = teacherSize
      if let w = run?.config.weightDecay { o.weightDecay = w }
      let result = try SingleStep.run(model: model, batch: batchFile, teacher: t, options: o)
      try result.write(to: URL(fileURLWithPath: output))
      say(String(format: "loss %.7f; %d tensors written to %@", result.tensor("loss")!.data[0], result.tensors.count
        + result.indices.count, output))
    }
  }
}
