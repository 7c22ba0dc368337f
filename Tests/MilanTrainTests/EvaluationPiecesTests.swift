// The linear-probing and finetuning pieces against PyTorch / timm golden fixtures (tools/make_eval_fixtures.py):
// LARS, the BatchNorm + Linear probe head (forward, loss, gradients, running statistics), MAE's layer-wise lr decay
// groups, Mixup / CutMix (timm 0.3.2 box), label smoothing and soft-target cross-entropy, RandomErasing replaying
// Python's draws.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

func evalFixture(_ name: String) throws -> SafeTensorsFile {
  try SafeTensorsFile(contentsOf: Fixtures.url("eval/\(name).safetensors"))
}

func doubles(_ f: SafeTensorsFile, _ name: String) throws -> [Double] {
  try f.withRawBytes(name) { Array($0.bindMemory(to: Double.self)) }
}

@Suite struct EvaluationPiecesTests {
  @Test func larsMatchesMAE() throws {
    let f = try evalFixture("lars")
    let gw = try f.tensor("gw"), gb = try f.tensor("gb"), lrs = try f.tensor("lrs")
    for (wd, wKey, bKey) in [(Float(0), "w_wd0", "b_wd0"), (0.05, "w_wd05", "b_wd05")] {
      let w = Parameter(try f.tensor("w0"), name: "weight"), b = Parameter(try f.tensor("b0"), name: "bias")
      let opt = LARS(parameters: [("weight", w), ("bias", b)], lr: 0, weightDecay: wd)
      let refW = try f.tensor(wKey), refB = try f.tensor(bKey)
      for s in 0..<5 {
        opt.lr = lrs.data[s]
        w.grad = gw.slice(s..<(s + 1)).reshaped([10, 16]).copy()
        b.grad = gb.slice(s..<(s + 1)).reshaped([10]).copy()
        opt.step()
        #expect(compare(w.value, refW.slice(s..<(s + 1)).reshaped([10, 16]), atol: 1e-6, rtol: 1e-5, "LARS wd \(wd) weight step \(s)").ok)
        #expect(compare(b.value, refB.slice(s..<(s + 1)).reshaped([10]), atol: 1e-6, rtol: 1e-5, "LARS wd \(wd) bias step \(s)").ok)
      }
    }
    // A zero gradient: trust ratio 1 (no division by zero), the momentum still moves the weight.
    let w = Parameter(try f.tensor("w0"), name: "weight")
    let opt = LARS(parameters: [("weight", w)], lr: 0)
    let gz = try f.tensor("gw_zero"), ref = try f.tensor("w_zero_after")
    for s in 0..<3 {
      opt.lr = lrs.data[s]
      w.grad = gz.slice(s..<(s + 1)).reshaped([10, 16]).copy()
      opt.step()
      #expect(compare(w.value, ref.slice(s..<(s + 1)).reshaped([10, 16]), atol: 1e-6, rtol: 1e-5, "LARS zero-gradient step \(s)").ok)
    }
  }

  @Test func probeHeadForwardBackwardAndRunningStatistics() throws {
    let f = try evalFixture("linprobe_head")
    let head = LinearProbeHead(features: 16, classes: 5)
    try head.load(["1.weight": try f.tensor("head_weight"), "1.bias": try f.tensor("head_bias")])
    let feats = Variable(try f.tensor("feats"), requiresGrad: true)
    let labels = try f.indices("labels").values
    let logits = head(feats, training: true)
    #expect(compare(logits.value, try f.tensor("logits"), atol: 1e-5, rtol: 1e-4, "probe logits").ok)
    let loss = crossEntropy(logits, labels: labels)
    #expect(compare(loss.value, try f.tensor("loss"), atol: 1e-6, rtol: 1e-5, "probe loss").ok)
    loss.backward()
    #expect(compare(head.linear.weight.grad!, try f.tensor("grad_weight"), atol: 1e-6, rtol: 1e-4, "probe dW").ok)
    #expect(compare(head.linear.bias!.grad!, try f.tensor("grad_bias"), atol: 1e-6, rtol: 1e-4, "probe db").ok)
    #expect(compare(feats.grad!, try f.tensor("grad_feats"), atol: 1e-6, rtol: 1e-4, "probe d feats (through BN)").ok)
    #expect(compare(head.bn.runningMean, try f.tensor("running_mean"), atol: 1e-6, rtol: 1e-5, "BN running mean").ok)
    #expect(compare(head.bn.runningVar, try f.tensor("running_var"), atol: 1e-6, rtol: 1e-5, "BN running var (unbiased)").ok)
    let eval = Autograd.noGrad { head(Variable(try! f.tensor("feats_eval")), training: false) }
    #expect(compare(eval.value, try f.tensor("logits_eval"), atol: 1e-5, rtol: 1e-4, "probe eval logits").ok)
  }

  @Test func batchNormBackwardMatchesFiniteDifferences() throws {
    var rng = SplitMix64(seed: 3)
    let x = Tensor.randn([6, 4], std: 2, mean: 0.5, rng: &rng)
    let reports = GradCheck.run("batchNorm (training)", inputs: [x], op: { v in
      batchNorm(v[0], runningMean: Tensor(zeros: [4]), runningVar: Tensor(shape: [4], values: [1, 1, 1, 1]), training: true)
    }, reference: { xs in
      let x = xs[0], n = 6, c = 4
      var y = [Double](repeating: 0, count: n * c)
      for j in 0..<c {
        let col = (0..<n).map { x[$0 * c + j] }
        let m = col.reduce(0, +) / Double(n)
        let v = col.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(n)
        for i in 0..<n { y[i * c + j] = (x[i * c + j] - m) / (v + 1e-6).squareRoot() }
      }
      return y
    })
    for r in reports { #expect(r.passed, "\(r)") }
  }

  @Test func layerDecayGroupsMatchMAE() throws {
    let data = try Data(contentsOf: Fixtures.url("eval/layer_decay.json"))
    let obj = try JSONSerialization.jsonObject(with: data) as! [String: Any]
    let params = obj["params"] as! [[String: Any]]
    var cfg = ViTConfig(imageSize: 224, patchSize: 16, embedDim: 192, depth: 3, numHeads: 3)
    cfg.globalPool = .avg
    cfg.numClasses = 7
    cfg.fixedSinCosPosEmbed = false
    let vit = VisionTransformer(cfg)
    let groups = ParamGroup.layerDecayGroups(vit.namedParameters(), depth: 3, weightDecay: 0.05, layerDecay: 0.65)
    var ours: [String: (Float, Float)] = [:]
    for g in groups { for (k, _) in g.parameters { ours[k] = (g.lrScale, g.weightDecay) } }
    #expect(Set(ours.keys) == Set(params.map { $0["name"] as! String }), "parameter names differ from timm's")
    var worst = 0.0
    for p in params {
      let name = p["name"] as! String
      guard let (scale, wd) = ours[name] else { continue }
      worst = max(worst, abs(Double(scale) - (p["lr_scale"] as! Double)) / (p["lr_scale"] as! Double))
      #expect(wd == Float(p["weight_decay"] as! Double), "\(name): weight decay \(wd)")
      #expect(ParamGroup.layerID(name, depth: 3) == p["layer_id"] as! Int, "\(name): layer id")
    }
    #expect(worst < 1e-6, "lr_scale relative difference \(worst)")
    print("ok  layer decay: \(params.count) parameters, lr_scale max rel diff \(worst)")
  }

  @Test func mixupAndCutMixMatchTimm032() throws {
    let f = try evalFixture("mixup")
    let y = try f.indices("y").values
    // Mixup
    let lam = try doubles(f, "mix_lam")[0]
    let x = try f.tensor("x")
    let mixed = x.copy()
    let (t, _) = Mixup.apply(MixDraw(lambda: lam, cutmix: false), images: mixed, labels: y, classes: 10, smoothing: 0.1)
    #expect(compare(mixed, try f.tensor("mix_x"), atol: 0, rtol: 0, "mixup images (bit-exact)").ok)
    #expect(compare(t, try f.tensor("mix_target"), atol: 1e-7, rtol: 1e-6, "mixup targets").ok)
    // CutMix, square and rectangular, with timm 0.3.2's box
    for (prefix, input) in [("cut", "x"), ("cutr", "x_rect")] {
      let img = try f.tensor(input)
      let d = MixDraw(lambda: try doubles(f, "\(prefix)_lam_raw")[0], cutmix: true,
                      centerY: Int(try f.int64s("\(prefix)_cy")[0]), centerX: Int(try f.int64s("\(prefix)_cx")[0]))
      let box = Mixup.box(d, height: img.shape[2], width: img.shape[3])
      #expect([box.yl, box.yh, box.xl, box.xh] == (try f.int64s("\(prefix)_box_t032")).map { Int($0) }, "\(prefix) box")
      let out = img.copy()
      let (tc, lc) = Mixup.apply(d, images: out, labels: y, classes: 10, smoothing: 0.1)
      #expect(abs(lc - (try doubles(f, "\(prefix)_lam_t032")[0])) < 1e-12, "\(prefix) corrected lambda \(lc)")
      #expect(compare(out, try f.tensor("\(prefix)_x_t032"), atol: 0, rtol: 0, "\(prefix) images").ok)
      #expect(compare(tc, try f.tensor("\(prefix)_target_t032"), atol: 1e-7, rtol: 1e-6, "\(prefix) targets").ok)
    }
  }

  @Test func labelSmoothingAndSoftTargetLosses() throws {
    let f = try evalFixture("mixup")
    let y = try f.indices("y").values
    let smooth = Mixup.targets(labels: y, classes: 10, lambda: 1, smoothing: 0.1)
    #expect(compare(smooth, try f.tensor("smooth_target"), atol: 1e-7, rtol: 1e-6, "smoothed one-hot").ok)
    for (target, lossKey, gradKey) in [(try f.tensor("mix_target"), "sce_loss", "sce_dlogits"), (smooth, "ls_loss", "ls_dlogits")] {
      let logits = Variable(try f.tensor("logits"), requiresGrad: true)
      let loss = softCrossEntropy(logits, targets: target)
      #expect(compare(loss.value, try f.tensor(lossKey), atol: 1e-6, rtol: 1e-5, lossKey).ok)
      loss.backward()
      #expect(compare(logits.grad!, try f.tensor(gradKey), atol: 1e-7, rtol: 1e-5, gradKey).ok)
    }
  }

  /// Python's draws, replayed.
  struct Replay: EraseRandomness {
    var randoms: [Double], uniforms: [Double], ints: [Int], normals: [Float]
    mutating func random() -> Double {
      // timm draws random.random() once for the probability, then random.uniform (= a + (b − a)·random()).
      if !randoms.isEmpty { return randoms.removeFirst() }
      return uniforms.removeFirst()
    }
    mutating func randint(_ lo: Int, _ hi: Int) -> Int {
      let v = ints.removeFirst()
      precondition(v >= lo && v <= hi)
      return v
    }
    mutating func normal() -> Float { normals.removeFirst() }
  }

  @Test func randomErasingReplaysTimm() throws {
    let f = try evalFixture("random_erasing")
    let e = RandomErasing(probability: 1)
    for i in 0..<4 {
      let x = try f.tensor("case\(i)_x"), ref = try f.tensor("case\(i)_y")
      let c = x.shape[0], h = x.shape[1], w = x.shape[2]
      let refBox = try f.int64s("case\(i)_box").map { Int($0) }
      // Uniforms are stored as returned by random.uniform(a, b); turn them back into random() values.
      let u = try doubles(f, "case\(i)_uniforms")
      let lo = log(0.3), hi = log(1 / 0.3)
      var raw: [Double] = []
      for (k, v) in u.enumerated() { raw.append(k % 2 == 0 ? (v - 0.02) / (1.0 / 3 - 0.02) : (v - lo) / (hi - lo)) }
      var fill: [Float] = []
      for ch in 0..<c {
        for y in refBox[0]..<(refBox[0] + refBox[2]) {
          for xx in refBox[1]..<(refBox[1] + refBox[3]) { fill.append(ref.data[(ch * h + y) * w + xx]) }
        }
      }
      var r = Replay(randoms: try doubles(f, "case\(i)_random"), uniforms: raw,
                     ints: try f.int64s("case\(i)_randints").map { Int($0) }, normals: fill)
      let out = x.copy()
      let box = e.apply(out.data, channels: c, height: h, width: w, rng: &r)
      #expect(box.map { [$0.top, $0.left, $0.height, $0.width] } == refBox, "case \(i): box \(String(describing: box)) vs \(refBox) (\(u.count / 2) attempts)")
      #expect(r.uniforms.isEmpty && r.ints.isEmpty, "case \(i): not every draw consumed")
      #expect(compare(out, ref, atol: 0, rtol: 0, "random erasing case \(i)").ok)
    }
  }
}
