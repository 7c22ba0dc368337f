import ArgumentParser
import Foundation
import MilanIO
import MilanModels
import MilanTrain

extension Milan {
  struct Step: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run one training step of a checkpoint on a given batch and write every result to a safetensors file.",
      discussion: """
        The batch file holds `images` [B,3,H,W] and the masking noise: `exp_noise` [B,L] (semantic-aware sampling, \
        Exp(1) draws) or `uniform_noise` [B,L] (random masking); optionally the teacher's `target` [B,1+L,C] and \
        `importance` [B,L] (otherwise --teacher is run on the images). The output holds loss, pred, latent, target, \
        importance, mask, ids_*, grad.<key> for every trainable parameter and, with --adamw-lr, updated.<key> after \
        one AdamW step from zero moments. The golden tests drive the same library function.
        """)

    @Option(help: "Model weights: a checkpoint folder (model.safetensors) or a .safetensors file.") var checkpoint: String
    @Option(help: "MILANConfig JSON, when the weights do not carry `milan.config` metadata.") var config: String?
    @Option(help: "Batch safetensors file.") var batch: String
    @Option(help: "DINOv2 ONNX teacher (used when the batch has no target/importance).") var teacher: String?
    @Option(name: .shortAndLong, help: "Output safetensors file.") var output: String
    @Option(help: "Mask ratio.") var maskRatio = 0.75
    @Flag(help: "Feature loss on the masked patches only.") var maskedLossOnly = false
    @Option(help: "Also take one AdamW step at this learning rate and write updated.<key>.") var adamwLr: Float?
    @Option(help: "clip_grad_norm_ before the AdamW step.") var gradClip: Float?

    func run() throws {
      var url = URL(fileURLWithPath: checkpoint)
      var isDir: ObjCBool = false
      if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), isDir.boolValue {
        url = url.appendingPathComponent("model.safetensors")
      }
      let weights = try SafeTensorsFile(contentsOf: url)
      let cfg = try config.map { try JSONDecoder().decode(MILANConfig.self, from: Data(contentsOf: URL(fileURLWithPath: $0))) }
        ?? SingleStep.config(of: weights)
      let model = MILANModel(cfg)
      try model.load(try weights.tensors())
      let t = try teacher.map { try DINOv2ONNX.load(URL(fileURLWithPath: $0)) }
      var o = SingleStepOptions()
      o.maskRatio = maskRatio
      o.maskedLossOnly = maskedLossOnly
      o.adamwLR = adamwLr
      o.gradClip = gradClip
      let result = try SingleStep.run(model: model, batch: try SafeTensorsFile(contentsOf: URL(fileURLWithPath: batch)),
                                      teacher: t, options: o)
      try result.write(to: URL(fileURLWithPath: output))
      say(String(format: "loss %.7f; %d tensors written to %@", result.tensor("loss")!.data[0], result.tensors.count
        + result.indices.count, output))
    }
  }
}
