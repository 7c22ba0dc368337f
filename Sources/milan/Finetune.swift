import ArgumentParser
import Foundation
import MilanTrain

extension Milan {
  struct Finetune: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Finetune a pretrained encoder end to end (MAE/MILAN recipe) and report top-1 / top-5 on the test split.",
      discussion: """
        AdamW (0.9, 0.999) with layer-wise lr decay, drop path, RandomResizedCrop(0.08–1) + flip + RandAugment \
        rand-m9-mstd0.5-inc1 + RandomErasing(0.25), Mixup 0.8 / CutMix 1.0 with label smoothing 0.1, mean pooling + \
        fc_norm + a new head; evaluation with Resize(size/0.875) + CenterCrop (IDX digits: resized only). \
        Writes classifier.safetensors (timm names, global_pool="avg"), finetune-optimizer.safetensors and \
        finetune-state.json (one unit, at every epoch end and on Ctrl-C), log.jsonl and finetune.json to the \
        output folder.
        """)

    @Option(help: "Pretraining output folder (model.safetensors, state.json).") var checkpoint = "runs/milan-fashion"
    @Option(help: "IDX folder or image folder with train/ and val/ (default: the pretraining data).") var dataDir: String?
    @Option(name: .shortAndLong, help: "Output folder.") var output = "runs/milan-finetune"
    @Option var epochs = 100
    @Option(help: "Warmup epochs (default: MAE's 5, or the whole run when it is shorter).") var warmupEpochs: Double?
    @Option(help: "Batch size (even: Mixup pairs each image with its mirror in the batch).") var batchSize = 64
    @Option(help: "Base lr (lr = blr × batch / 256).") var blr = 1e-3
    @Option var layerDecay: Float = 0.75
    @Option var dropPath: Float = 0.1
    @Option(help: "Random-erasing probability.") var reprob = 0.25
    @Flag(help: "No Mixup/CutMix (label smoothing 0.1 only).") var noMixup = false
    @Flag(help: "No RandAugment.") var noRandaugment = false
    @Option(help: "Training images (seeded subset).") var trainImages: Int?
    @Option(help: "Test images (seeded subset).") var testImages: Int?
    @Option var seed: UInt64 = 0
    @Option(help: "Fraction of unreadable images tolerated (skipped and counted) per split; default 0.01.")
    var maxUnreadable = 0.01
    @Flag(help: "Continue from the checkpoint in the output folder (written at every epoch end and on Ctrl-C).")
    var resume = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
      let group = try runtime.start()
      var c = FinetuneConfig(checkpoint: checkpoint, outputDir: output)
      c.dataDir = dataDir
      c.epochs = epochs
      c.warmupEpochs = warmupEpochs ?? min(5, Double(max(epochs, 0)))
      c.batchSize = batchSize
      c.blr = blr
      c.layerDecay = layerDecay
      c.dropPath = dropPath
      c.reprob = reprob
      if noMixup { c.mixup = nil }
      c.randAugment = !noRandaugment
      c.trainImages = trainImages
      c.testImages = testImages
      c.seed = seed
      c.maxUnreadableFraction = maxUnreadable
      StopSignal.install()
      let f = try Finetuner(c, group: group, log: say)
      let r = try f.run(resume: resume)
      if f.interrupted { return }
      say(String(format: "finetuned: test top-1 %.2f %%, top-5 %.2f %% (best top-1 %.2f %%); %@/classifier.safetensors",
                 r.test.top1 * 100, r.test.top5 * 100, r.best.top1 * 100, output))
    }
  }
}
