// The linear probe on real data: the real DINOv2-S/14 teacher's frozen class-token features (a trained encoder)
// against a randomly initialised encoder of the same architecture, on Fashion-MNIST's four upper-body garment
// classes (T-shirt, pullover, coat, shirt — the classes that are hard to tell apart from pixels), with every other
// image's contrast inverted (dark garment on white): the class is what matters, not the pixel statistics. The probe
// must learn the task from the trained features and fall clearly short of it from random ones; with shuffled labels
// it must stay near chance.
import Foundation
import MilanData
import MilanModels
import MilanTensor
import MilanTrain
import Testing

/// Fashion-MNIST with the contrast of odd-numbered images inverted.
struct HalfInverted: ImageDataset {
  let base: IDXDataset
  var count: Int { base.count }
  var classNames: [String] { base.classNames }
  func label(_ i: Int) -> Int { base.label(i) }
  func describe(_ i: Int) -> String { base.describe(i) }
  func load(_ i: Int) throws -> DecodedImage {
    var img = try base.load(i)
    if i % 2 == 1 { img.pixels = img.pixels.map { 255 - $0 } }
    return img
  }
}

@Suite(.serialized, .enabled(if: Real.available || Real.required,
                             "needs dataset-fashion-mnist and scripts/fetch-teacher.sh (scripts/test.sh does both)"))
struct LinearProbeTests {
  @Test func probeLearnsFromTrainedFeaturesNotFromRandomOnes() throws {
    let train = EvalImages(HalfInverted(base: try DatasetLoader.open(Real.data, split: "train") as! IDXDataset))
    let test = EvalImages(HalfInverted(base: try DatasetLoader.open(Real.data, split: "test") as! IDXDataset))
    let keep: [Int: Int] = [0: 0, 2: 1, 4: 2, 6: 3]
    func subset(_ e: EvalImages, _ n: Int) -> ([Int], [Int]) {
      var ids: [Int] = []
      for i in 0..<e.dataset.count where keep[e.dataset.label(i)] != nil {
        ids.append(i)
        if ids.count == n { break }
      }
      return (ids, ids.map { keep[e.dataset.label($0)]! })
    }
    let (trIds, trY) = subset(train, 800), (teIds, teY) = subset(test, 400)
    let teacher = try DINOv2ONNX.load(URL(fileURLWithPath: Real.teacher))
    let size = 56  // 4×4 patch grid of 14 px: enough for the class token, and four times cheaper than 112 px
    let randomViT = VisionTransformer(ViTConfig(imageSize: size, patchSize: 14, embedDim: teacher.featureDim, depth: 12,
                                                numHeads: 6), seed: 11)
    var cfg = LinearProbeConfig()
    cfg.epochs = 60
    cfg.warmupEpochs = 5
    cfg.batchSize = 100
    cfg.blr = 16
    let ft = (try Features.teacher(teacher, images: train, indices: trIds, imageSize: size),
              try Features.teacher(teacher, images: test, indices: teIds, imageSize: size))
    let fr = (try Features.encoder(randomViT, images: train, indices: trIds, imageSize: size),
              try Features.encoder(randomViT, images: test, indices: teIds, imageSize: size))
    let trained = try LinearProbe.run(train: ft.0, trainLabels: trY, test: ft.1, testLabels: teY, classes: 4, config: cfg).final
    let rand = try LinearProbe.run(train: fr.0, trainLabels: trY, test: fr.1, testLabels: teY, classes: 4, config: cfg).final
    var rng = SplitMix64(seed: 5)
    let shuffled = try LinearProbe.run(train: ft.0, trainLabels: trY.shuffled(using: &rng), test: ft.1, testLabels: teY,
                                   classes: 4, config: cfg).final
    print(String(format: "ok  linear probe, 4 garment classes, 800 train / 400 test: DINOv2 features %.2f %%, random "
      + "encoder %.2f %%, DINOv2 with shuffled labels %.2f %%", trained.top1 * 100, rand.top1 * 100, shuffled.top1 * 100))
    #expect(trained.top1 >= 0.65, "trained features: \(trained.top1)")
    #expect(trained.top1 >= rand.top1 + 0.12, "trained \(trained.top1) vs random \(rand.top1)")
    #expect(shuffled.top1 < 0.40, "shuffled labels: \(shuffled.top1)")
  }
}

/// The probe's lr is chosen on held-out training features only: on separable clusters a tiny lr (the probe barely
/// moves from its random start) scores worse on the held-out part than a working one, which is chosen; every
/// candidate's held-out score is reported.
@Suite struct ProbeSelectionTests {
  @Test func choosesTheLrThatScoresBestOnHeldOutTrainingFeatures() throws {
    var rng = SplitMix64(seed: 3)
    let n = 400, d = 16, classes = 4
    let x = Tensor(uninitialized: [n, d])
    var labels: [Int] = []
    for i in 0..<n {
      labels.append(i % classes)
      for j in 0..<d { x.data[i * d + j] = (j % classes == i % classes ? 2 : 0) + 0.5 * rng.nextNormal() }
    }
    var cfg = LinearProbeConfig()
    cfg.epochs = 60
    cfg.warmupEpochs = 5
    cfg.batchSize = 64
    let (blr, scores) = try Evaluation.selectProbeBlr([1e-5, 16], features: x, labels: labels, classes: classes,
                                                      config: cfg, seed: 1)
    #expect(Set(scores.keys) == ["1e-05", "16.0"], "\(scores)")
    #expect(blr == 16 && scores["16.0"]! > 0.9 && scores["16.0"]! > scores["1e-05"]! + 0.3, "\(scores)")
  }
}
