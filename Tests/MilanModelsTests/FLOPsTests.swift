// The FLOP formulas (FLOPs.swift, docs/benchmarks.md) against the matrix-product work the library actually issues
// (BLAS.sgemmRaw counts 2·M·N·K per call while BLAS.countFLOPs is on): equal to the FLOP, on odd sizes, for every
// decoder and both teacher families. If a kernel did extra products (a recomputation in a backward, a dX nobody
// needs), the benchmark's % of peak would be computed on work that was not the model's: this test says so.
import Foundation
import MilanAutograd
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import Testing

@Suite(.serialized) struct FLOPsTests {
  /// Runs `body` with the counter on and returns the FLOPs it issued. Counting is a flag of this thread (and of the
  /// parts of the regions it starts), so the products other suites run meanwhile are not counted.
  func counted(_ body: () throws -> Void) rethrows -> Double {
    BLAS.countFLOPs = true
    defer { BLAS.countFLOPs = false }
    _ = BLAS.takeCountedFLOPs()
    try body()
    return Double(BLAS.takeCountedFLOPs())
  }

  func check(_ got: Double, _ want: Double, _ what: String) {
    print(String(format: "%@  %@: counted %.0f, formula %.0f", got == want ? "ok " : "BAD", what, got, want))
    #expect(got == want, "\(what): the library issued \(got) FLOPs, the formula says \(want)")
  }

  @Test(arguments: [MILANConfig.Decoder.prompting, .mae, .kd])
  func aTrainingStepIssuesExactlyTheFormulasWork(_ decoder: MILANConfig.Decoder) throws {
    // 40 px, patch 8: 25 patches, mask 0.6 → 10 visible; odd widths and a 3-wide MLP ratio.
    let enc = ViTConfig(imageSize: 40, patchSize: 8, embedDim: 36, depth: 2, numHeads: 3, mlpRatio: 3)
    for target in decoder == .kd ? [MILANConfig.Target.features] : [.features, .pixels] {
      let cfg = MILANConfig(encoder: enc, decoderDim: 20, decoderDepth: 2, decoderHeads: 2, decoder: decoder,
                            target: target, predictionDim: target == .pixels ? 192 : 12)
      let model = MILANModel(cfg)
      var rng = SplitMix64(seed: 3)
      let b = 3
      let images = Tensor.randn([b, 3, 40, 40], rng: &rng)
      let m = Masking.random(noise: Tensor.uniform([b, 25], rng: &rng), maskRatio: 0.6)
      let want = FLOPs.milanStep(cfg, maskRatio: 0.6, batch: b, teacher: nil, teacherImageSize: 0)
      var latent: Variable!
      var pred: Variable!
      let encF = counted { latent = model.forwardEncoder(Variable(images), masking: m, rng: &rng) }
      let decF = counted {
        pred = decoder == .kd ? model.kdPred!(latent) : model.forwardDecoder(latent, masking: m, rng: &rng)
      }
      let teacher = target == .features ? Tensor.randn([b, 26, 12], rng: &rng) : nil
      let loss = try model.loss(pred, images: images, teacher: teacher, masking: m)
      let bwdF = counted { loss.backward() }
      let name = "\(decoder)/\(target)"
      check(encF, want.encoderForward, "\(name) encoder forward")
      check(decF, want.decoderForward, "\(name) decoder forward")
      check(bwdF, want.backward, "\(name) backward")
    }
  }

  @Test func teachersIssueExactlyTheFormulasWork() throws {
    var rng = SplitMix64(seed: 5)
    let clip = CLIPVisionTeacher(CLIPVisionConfig(imageSize: 40, patchSize: 8, width: 36, layers: 2, heads: 3,
                                                  mlpRatio: 3, outputDim: 20))
    var d = DINOv2Config.small14
    (d.imageSize, d.hiddenSize, d.layers, d.heads) = (42, 30, 2, 3)
    let dino = DINOv2Teacher(d)
    for (teacher, size) in [(clip as any Teacher, 40), (dino as any Teacher, 42)] {
      let images = Tensor.randn([2, 3, size, size], rng: &rng)
      let got = counted { _ = teacher.encode(images) }
      check(got, 2 * FLOPs.teacherForward(teacher.architecture, imageSize: size), "\(teacher.architecture.family) teacher")
    }
  }

  @Test func countingIsAFlagOfTheCountingThread() {
    // A product split across the cores while this thread counts is counted whole (its parts run on other threads);
    // one another thread runs meanwhile is not counted at all.
    var rng = SplitMix64(seed: 6)
    let a = Tensor.randn([300, 256], rng: &rng), b = Tensor.randn([256, 280], rng: &rng)
    let c = Tensor(uninitialized: [300, 280]), c2 = Tensor(uninitialized: [300, 280])
    nonisolated(unsafe) let (ap, bp, c2p) = (a.data, b.data, c2.data)
    let got = counted {
      let done = DispatchSemaphore(value: 0)
      Thread {
        BLAS.sgemm(.none, .none, 300, 280, 256, ap, lda: 256, bp, ldb: 280, c2p, ldc: 280)
        done.signal()
      }.start()
      BLAS.sgemm(.none, .none, 300, 280, 256, a.data, lda: 256, b.data, ldb: 280, c.data, ldc: 280)
      done.wait()
    }
    check(got, 2 * 300 * 280 * 256, "one product on this thread while another thread runs one")
    #expect(c.toArray() == c2.toArray())
  }

  @Test func thePaperConfigurationIsTheIssuesHandCount() {
    // ViT-B/16 student, CLIP ViT-B/16 teacher, 224 px, batch 8, mask 0.75, prompting decoder 512×8: 694.4 GFLOP,
    // teacher ~282, encoder forward + backward ~209, decoder forward + backward ~203 (counted by hand in issue 13).
    let enc = ViTConfig(imageSize: 224, patchSize: 16, embedDim: 768, depth: 12, numHeads: 12)
    let s = FLOPs.milanStep(MILANConfig(encoder: enc, predictionDim: 512), maskRatio: 0.75, batch: 8,
                            teacher: CLIPVisionTeacher(.vitB16).architecture, teacherImageSize: 224)
    print(String(format: "paper step: teacher %.1f, encoder %.1f + decoder %.1f forward, backward %.1f, total %.1f GFLOP",
                 s.teacher / 1e9, s.encoderForward / 1e9, s.decoderForward / 1e9, s.backward / 1e9, s.total / 1e9))
    // The hand count embeds all 196 patches; the library embeds only the 49 visible ones (`PatchEmbed(_:keep:)`),
    // 2 · 8 · 147 · 768 · 768 FLOP less in the forward and as much less in the weight gradient.
    let skipped = 2 * 8 * 147 * 768.0 * 768.0
    #expect(abs((s.total + 2 * skipped) / 1e9 - 694.4) < 0.05 && abs(s.teacher / 1e9 - 282.2) < 0.05)
    #expect(abs(s.encoderForward - 8 * (12 * FLOPs.block(tokens: 50, width: 768, mlpHidden: 3072)
                                        + 2 * 49 * 768.0 * 768.0)) < 1)
  }
}
