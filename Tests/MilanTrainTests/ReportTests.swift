// The report: its numbers are the library's own (teacher class attention, the student's last-block attention, the
// per-patch loss map against the objective, the t-SNE input), t-SNE and PCA separate what is separable and are
// deterministic, and the page, as headless Chromium sees it, decodes every picture with nothing on the console.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

@Suite struct EmbeddingPlotTests {
  /// Three Gaussian clusters in 10-D: in t-SNE's 2-D map each point's nearest neighbour is of its own cluster.
  @Test func tsneKeepsSeparableClustersApartAndIsDeterministic() {
    var rng = SplitMix64(seed: 5)
    let n = 150, d = 10
    let x = Tensor(uninitialized: [n, d])
    var labels: [Int] = []
    for i in 0..<n {
      labels.append(i % 3)
      for j in 0..<d { x.data[i * d + j] = (j == i % 3 ? 6 : 0) + rng.nextNormal() }
    }
    let (points, method) = TSNE.embed(x)
    #expect(method.hasPrefix("t-SNE"))
    var agree = 0
    for i in 0..<n {
      let j = (0..<n).filter { $0 != i }.min { a, b in
        pow(points[a][0] - points[i][0], 2) + pow(points[a][1] - points[i][1], 2)
          < pow(points[b][0] - points[i][0], 2) + pow(points[b][1] - points[i][1], 2)
      }!
      if labels[j] == labels[i] { agree += 1 }
    }
    print("ok  t-SNE: \(agree)/\(n) points have a nearest neighbour of their own cluster")
    #expect(agree >= 145)
    #expect(TSNE.embed(x).points == points)
    // Too few points for the perplexity: PCA.
    #expect(TSNE.embed(Tensor.randn([20, 4], rng: &rng)).method.hasPrefix("PCA"))
  }

  /// Points spread along one direction: PCA's first coordinate is that position (up to sign, which is fixed).
  @Test func pcaFindsTheMainAxis() {
    var rng = SplitMix64(seed: 6)
    let n = 200, d = 5
    let axis: [Float] = [0.6, -0.8, 0, 0, 0]
    let x = Tensor(uninitialized: [n, d])
    var t: [Double] = []
    for i in 0..<n {
      let s = Float(i - n / 2) / 20
      t.append(Double(s))
      for j in 0..<d { x.data[i * d + j] = s * axis[j] + 0.05 * rng.nextNormal() }
    }
    let p = PCA.project2D(x).map { $0[0] }
    let mp = p.reduce(0, +) / Double(n), mt = t.reduce(0, +) / Double(n)
    let cov = zip(p, t).reduce(0) { $0 + ($1.0 - mp) * ($1.1 - mt) }
    let corr = cov / (p.reduce(0) { $0 + ($1 - mp) * ($1 - mp) } * t.reduce(0) { $0 + ($1 - mt) * ($1 - mt) }).squareRoot()
    #expect(abs(corr) > 0.999, "correlation \(corr)")
  }
}

@Suite(.serialized) struct ReportTests {
  /// A tiny run on the tiny folder with the CLIP fixture teacher (and its output folder).
  static func tinyRun(_ name: String) throws -> URL {
    let dir = try scratchDir(name)
    let data = try tinyImageNet(dir.appendingPathComponent("data")).path
    let run = dir.appendingPathComponent("run")
    let r = try milan(["pretrain", "--data-dir", data, "--model", "vit_demo_patch4_32", "--patch-size", "8", "--epochs",
                       "2", "--batch-size", "2", "--teacher", Fixtures.url("models/clip_openclip.safetensors").path,
                       "-o", run.path, "--no-report"])
    #expect(r.status == 0, "\(r.text)")
    return run
  }

  @Test func theMapsAreTheLibrarysOwnValues() throws {
    let run = try Self.tinyRun("report-maps")
    defer { try? FileManager.default.removeItem(at: run.deletingLastPathComponent()) }
    let state = try TrainState.read(run)
    let cfg = state.config
    let model = MILANModel(cfg.model)
    try model.load(try SafeTensorsFile(contentsOf: run.appendingPathComponent("model.safetensors")).tensors())
    let teacher = try TeacherFile.load(Fixtures.url("models/clip_openclip.safetensors").path)
    let test = EvalImages(try DatasetLoader.open(cfg.dataDir, split: "test"))
    let shared = try Report.shared(cfg, teacher: teacher, test: test, count: 3)
    let maps = Report.analyze(model, cfg, shared)

    // Teacher attention: the teacher's own on the same images at its input size.
    let teacherImages = try test.batch([0, 1, 2], size: 32)
    let t = teacher.teacher.encode(teacherImages)
    #expect(compare(shared.teacher!.clsAttention, t.clsAttention, atol: 0, rtol: 0, "report teacher attention").ok)
    // Student attention: the encoder's last block on the full images.
    let a = Autograd.noGrad { model.encoder.forwardFeaturesWithAttention(Variable(shared.images)) }.clsAttention
    #expect(compare(maps.attention, a.toArray(), atol: 0, rtol: 0, "report student attention").ok)
    // Loss map: its mean over the patches is the objective over the patch tokens (MILANModel.loss, lossTokens
    // patches) for the same masking.
    var patches = cfg.model
    patches.lossTokens = .patches
    let pm = MILANModel(patches)
    try pm.load(try SafeTensorsFile(contentsOf: run.appendingPathComponent("model.safetensors")).tensors())
    var rng = SplitMix64(seed: 0)
    let m = shared.semanticMask!
    let loss = try Autograd.noGrad {
      try pm.loss(pm.predict(Variable(shared.images), masking: m, training: false, rng: &rng), images: shared.images,
                  teacher: shared.teacher!.features, masking: m)
    }
    let mean = maps.lossMap.reduce(0, +) / Float(maps.lossMap.count)
    #expect(compare([mean], [loss.value.data[0]], atol: 1e-6, rtol: 1e-5, "loss map mean vs MILANModel.loss").ok)
    #expect(maps.lossMap.allSatisfy { $0.isFinite && $0 >= 0 && $0 <= 4 })
    // The t-SNE input: the class-token features `milan eval` scores (student and teacher) and a seed-7 random encoder.
    let sets = try Report.embeddingInputs([("run", model, cfg)], teacher: teacher, teacherConfig: cfg, test: test,
                                          ids: [0, 1, 2, 3])
    #expect(sets.map(\.0) == ["run: student", "random encoder", "teacher CLIP ViT-48w2d/8"])
    var r2 = SplitMix64(seed: 0)
    let direct = Autograd.noGrad { model.encoder.forwardFeatures(Variable(try! test.batch([0, 1, 2, 3], size: 32)), rng: &r2) }
    let cls = (0..<4).flatMap { i in (0..<128).map { direct.value.data[i * 17 * 128 + $0] } }
    #expect(compare(sets[0].1.toArray(), cls, atol: 0, rtol: 0, "t-SNE input vs the encoder's class tokens").ok)
    let t4 = teacher.teacher.encode(try test.batch([0, 1, 2, 3], size: 32)).features
    let t4cls = (0..<4).flatMap { i in (0..<24).map { t4.data[i * 17 * 24 + $0] } }
    #expect(compare(sets[2].1.toArray(), t4cls, atol: 0, rtol: 0, "t-SNE input vs the teacher's class tokens").ok)
    #expect(sets[1].1.shape == [4, 128] && sets[1].1.toArray().allSatisfy(\.isFinite))
    // The masks are the run's ratio.
    #expect(shared.randomMask.lenKeep == Masking.lenKeep(patches: 16, maskRatio: cfg.maskRatio))
  }

  @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") || Real.required,
                 "needs Debian's chromium (scripts/test.sh installs it)"))
  func theReportOpensInHeadlessChromium() throws {
    let run = try Self.tinyRun("report-page")
    defer { try? FileManager.default.removeItem(at: run.deletingLastPathComponent()) }
    let r = try milan(["report", run.path, "--images", "3", "--embed-images", "7"])
    #expect(r.status == 0, "\(r.text)")
    let page = run.appendingPathComponent("report.html")
    let html = try String(contentsOf: page, encoding: .utf8)
    #expect(html.contains("teacher class attention") && html.contains("semantic-aware mask") && html.contains("<svg")
      && !html.contains("http://") || html.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    #expect(!html.contains("<script src") && !html.contains("<link"), "the page must not load anything")
    let shot = run.appendingPathComponent("shot.png")
    let check = try milan([], shell: "bash '\(Fixtures.root.path)/scripts/check-report.sh' '\(page.path)' '\(shot.path)'")
    #expect(check.status == 0 && check.stdout.contains("images decoded"), "\(check.text)")
    let png = try ImageDecoder.decode(file: shot)
    #expect(png.width == 1500 && png.height > 600, "\(png.width)×\(png.height)")
  }
}
