// Finetuning end to end on the tiny image folder: a pretraining checkpoint (tiny MILAN, CLIP fixture teacher) is
// loaded into a classifier (mean pooling + fc_norm + head, learned positions), trained with the full augmentation
// stack and layer-wise lr decay, scored, and written under timm's names.
import Foundation
import MilanIO
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

@Suite(.serialized) struct FinetuneTests {
  @Test func finetunesAPretrainedCheckpoint() throws {
    let pre = tempDir("ft-pre"), out = tempDir("ft-out")
    defer { try? FileManager.default.removeItem(at: pre); try? FileManager.default.removeItem(at: out) }
    _ = try Pretrainer(folderConfig(pre), teacher: try clipFixtureTeacher(), log: { _ in }).run()
    var c = FinetuneConfig(checkpoint: pre.path, outputDir: out.path)
    c.epochs = 3
    c.warmupEpochs = 1
    c.batchSize = 2
    c.blr = 1e-2
    c.maxUnreadableFraction = 0.2
    let f = try Finetuner(c, log: { _ in })
    // The encoder comes from the checkpoint; fc_norm and head are new; groups follow MAE's layer decay.
    let pretrained = try SafeTensorsFile(contentsOf: pre.appendingPathComponent("model.safetensors"))
    #expect(f.model.blocks.items[1].mlp.fc2.weight.value.toArray() == (try pretrained.tensor("blocks.1.mlp.fc2.weight")).toArray())
    #expect(f.model.posEmbed.requiresGrad && f.model.config.globalPool == .avg && f.model.config.numClasses == 2)
    let scales = Dictionary(uniqueKeysWithValues: f.optimizer.groups.flatMap { g in g.parameters.map { ($0.0, g.lrScale) } })
    #expect(abs(scales["patch_embed.proj.weight"]! - 0.75 * 0.75 * 0.75) < 1e-6 && scales["head.weight"] == 1)
    let r = try f.run()
    #expect(r.epochs == 3 && r.trainLoss.isFinite && r.test.count == 7)
    let saved = try SafeTensorsFile(contentsOf: out.appendingPathComponent("classifier.safetensors"))
    let keys = Set(saved.tensors.map(\.name))
    #expect(keys.contains("fc_norm.weight") && keys.contains("head.weight") && !keys.contains("norm.weight")
      && !keys.contains("decoder_pred.weight"))
    #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("finetune.json").path))
  }

  @Test func oddBatchWithMixupIsRefused() throws {
    var c = FinetuneConfig(checkpoint: "/nonexistent", outputDir: "/tmp/x")
    c.batchSize = 3
    #expect(throws: FinetuneError.self) { _ = try Finetuner(c, log: { _ in }) }
  }
}
