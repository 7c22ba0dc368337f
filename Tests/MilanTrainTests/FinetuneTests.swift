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

/// Three short epochs on the tiny folder, from the pretraining checkpoint in `pre`.
func tinyFinetuneConfig(_ pre: URL, _ out: URL) -> FinetuneConfig {
  var c = FinetuneConfig(checkpoint: pre.path, outputDir: out.path)
  c.epochs = 3
  c.warmupEpochs = 1
  c.batchSize = 2
  c.blr = 1e-2
  c.maxUnreadableFraction = 0.2
  return c
}

@Suite(.serialized) struct FinetuneTests {
  @Test func finetunesAPretrainedCheckpoint() throws {
    let pre = tempDir("ft-pre"), out = tempDir("ft-out")
    defer { try? FileManager.default.removeItem(at: pre); try? FileManager.default.removeItem(at: out) }
    _ = try Pretrainer(folderConfig(pre), teacher: try clipFixtureTeacher(), log: { _ in }).run()
    let f = try Finetuner(tinyFinetuneConfig(pre, out), log: { _ in })
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

  @Test func interruptedFinetuningResumesBitForBit() throws {
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let pre = tempDir("ft-pre2"), a = tempDir("ft-a"), b = tempDir("ft-b")
    defer { for d in [pre, a, b] { try? FileManager.default.removeItem(at: d) } }
    _ = try Pretrainer(folderConfig(pre), teacher: try clipFixtureTeacher(), log: { _ in }).run()
    func config(_ out: URL) -> FinetuneConfig { tinyFinetuneConfig(pre, out) }
    let whole = try Finetuner(config(a), log: { _ in }).run()
    let first = try Finetuner(config(b), log: { _ in })
    var calls = 0
    first.shouldStop = { calls += 1; return calls == 5 }  // 3 steps per epoch: inside the second epoch
    _ = try first.run()
    #expect(first.interrupted)
    let second = try Finetuner(config(b), log: { _ in })
    second.shouldStop = { false }
    let resumed = try second.run(resume: true)
    #expect(resumed.trainLoss == whole.trainLoss && resumed.test == whole.test)
    let fa = try SafeTensorsFile(contentsOf: a.appendingPathComponent("classifier.safetensors")).tensors()
    let fb = try SafeTensorsFile(contentsOf: b.appendingPathComponent("classifier.safetensors")).tensors()
    #expect(fa.keys.sorted() == fb.keys.sorted())
    for (k, t) in fa.sorted(by: { $0.key < $1.key }) {
      #expect(t.toArray() == fb[k]?.toArray(), "\(k) differs after resume")
    }
    #expect(try Data(contentsOf: a.appendingPathComponent("classifier.safetensors"))
      == Data(contentsOf: b.appendingPathComponent("classifier.safetensors")), "classifier files differ")
  }

  @Test func oddBatchWithMixupIsRefused() throws {
    var c = FinetuneConfig(checkpoint: "/nonexistent", outputDir: "/tmp/x")
    c.batchSize = 3
    #expect(throws: FinetuneError.self) { _ = try Finetuner(c, log: { _ in }) }
  }
}
