// Every differentiable op against PyTorch values: fixtures written by tools/make_fixtures.py (torch 2.13.0+cpu,
// float32). Each fixture stores inputs, the output, a random upstream gradient and PyTorch's input gradients.
import Foundation
import MilanAutograd
import MilanIO
import MilanTensor
import MilanTestSupport
import Testing

private func fixture(_ name: String) throws -> SafeTensorsFile {
  try SafeTensorsFile(contentsOf: Fixtures.url("kernels/\(name).safetensors"))
}

private func leaf(_ f: SafeTensorsFile, _ name: String) throws -> Variable {
  Variable(try f.tensor(name), requiresGrad: true, name: name)
}

/// Runs backward with PyTorch's upstream gradient and compares the output and the listed gradients.
private func check(_ label: String, _ y: Variable, _ f: SafeTensorsFile, out: String, seed: String?,
                   grads: [(Variable, String)], atol: Double = 1e-5, rtol: Double = 1e-4) throws {
  #expect(compare(y.value, try f.tensor(out), atol: atol, rtol: rtol, "\(label) \(out)").ok)
  y.backward(seed: try seed.map { try f.tensor($0) })
  for (v, name) in grads {
    let g = try #require(v.grad, "\(label): no gradient reached \(name)")
    #expect(compare(g, try f.tensor(name), atol: atol, rtol: rtol, "\(label) \(name)").ok)
  }
}

@Suite struct GoldenTests {
  @Test func linearAndBmm() throws {
    let f = try fixture("matmul")
    let x = try leaf(f, "x"), w = try leaf(f, "w"), b = try leaf(f, "b")
    try check("linear", linear(x, w, b), f, out: "y", seed: "gy", grads: [(x, "dx"), (w, "dw"), (b, "db")])
    let a = try leaf(f, "a"), bm = try leaf(f, "bm")
    try check("bmm", bmm(a, bm), f, out: "c", seed: "gc", grads: [(a, "da"), (bm, "dbm")])
  }

  @Test func activations() throws {
    let f = try fixture("activations")
    for (kind, key) in [(Activation.gelu, "gelu"), (.geluTanh, "gelu_tanh"), (.quickGelu, "quick_gelu")] {
      let x = try leaf(f, "x")
      try check("\(kind)", x.activation(kind), f, out: "\(key)_y", seed: "gy", grads: [(x, "\(key)_dx")],
                atol: 2e-6, rtol: 1e-5)
    }
  }

  @Test func layerNorm() throws {
    let f = try fixture("layernorm")
    let x = try leaf(f, "x"), w = try leaf(f, "w"), b = try leaf(f, "b")
    try check("layerNorm", MilanAutograd.layerNorm(x, weight: w, bias: b, eps: 1e-6), f, out: "y", seed: "gy",
              grads: [(x, "dx"), (w, "dw"), (b, "db")])
    let y5 = MilanAutograd.layerNorm(try leaf(f, "x"), weight: try leaf(f, "w"), bias: try leaf(f, "b"), eps: 1e-5)
    #expect(compare(y5.value, try f.tensor("y_eps5"), "layerNorm eps 1e-5").ok)
  }

  @Test func softmaxAndLogSoftmax() throws {
    let f = try fixture("softmax")
    let x = try leaf(f, "x")
    try check("softmax", x.softmax(), f, out: "softmax_y", seed: "gy", grads: [(x, "softmax_dx")], atol: 1e-6)
    let x2 = try leaf(f, "x")
    try check("logSoftmax", x2.logSoftmax(), f, out: "log_softmax_y", seed: "gy", grads: [(x2, "log_softmax_dx")])
  }

  @Test func crossAndSelfAttention() throws {
    let f = try fixture("attention")
    let q = try leaf(f, "q"), k = try leaf(f, "k"), v = try leaf(f, "v")
    try check("attention Lq≠Lk", attention(q, k, v, heads: 3), f, out: "o", seed: "go",
              grads: [(q, "dq"), (k, "dk"), (v, "dv")])
    // The same through the fused layouts: MILAN's q + kv and a qkv projection.
    let kv = Variable(try concatLastAxis([f.tensor("k"), f.tensor("v")]), requiresGrad: true)
    let q1 = try leaf(f, "q")
    let y1 = crossAttention(q: q1, kv: kv, heads: 3)
    #expect(compare(y1.value, try f.tensor("o"), "crossAttention fused kv").ok)
    y1.backward(seed: try f.tensor("go"))
    #expect(compare(q1.grad!, try f.tensor("dq"), "crossAttention dq").ok)
    #expect(compare(kv.grad!, try concatLastAxis([f.tensor("dk"), f.tensor("dv")]), "crossAttention dkv").ok)

    let qkv = Variable(try concatLastAxis([f.tensor("q2"), f.tensor("k2"), f.tensor("v2")]), requiresGrad: true)
    let (y2, _) = selfAttention(qkv: qkv, heads: 3)
    #expect(compare(y2.value, try f.tensor("o2"), "selfAttention fused qkv").ok)
    y2.backward(seed: try f.tensor("go2"))
    #expect(compare(qkv.grad!, try concatLastAxis([f.tensor("dq2"), f.tensor("dk2"), f.tensor("dv2")]),
                    "selfAttention dqkv").ok)

    // Head-averaged probabilities (the teacher's importance map), no graph recorded.
    let (_, mean) = Autograd.noGrad {
      selfAttention(qkv: Variable(try! concatLastAxis([f.tensor("q"), f.tensor("k"), f.tensor("k")])), heads: 3,
                    headMeanProbs: true)
    }
    #expect(mean != nil)
    let (_, crossMean) = attentionHeadMean(try f.tensor("q"), try f.tensor("k"), try f.tensor("v"), heads: 3)
    #expect(compare(crossMean, try f.tensor("probs_mean"), atol: 1e-6, "attention probs head mean").ok)
  }

  @Test func gatherPatchEmbedLossesReductionsElementwise() throws {
    let g = try fixture("gather")
    let x = try leaf(g, "x")
    try check("gatherTokens", gatherTokens(x, ids: try g.indices("ids")), g, out: "y", seed: "gy", grads: [(x, "dx")])

    let p = try fixture("patch_embed")
    let img = try leaf(p, "img"), w = try leaf(p, "w"), b = try leaf(p, "b")
    try check("patchEmbed", patchEmbed(img, weight: w, bias: b), p, out: "y", seed: "gy",
              grads: [(img, "dimg"), (w, "dw"), (b, "db")])

    let l = try fixture("losses")
    let logits = try leaf(l, "logits")
    try check("softCrossEntropy", softCrossEntropy(logits, targets: try l.tensor("target")), l, out: "ce", seed: nil,
              grads: [(logits, "ce_dlogits")])
    let logits2 = try leaf(l, "logits")
    try check("crossEntropy", crossEntropy(logits2, labels: try l.indices("labels").values), l, out: "ce_hard",
              seed: nil, grads: [(logits2, "ce_hard_dlogits")])
    let pred = try leaf(l, "pred")
    try check("cosineLoss", cosineLoss(pred, target: try l.tensor("feat")), l, out: "cos_loss", seed: nil,
              grads: [(pred, "cos_dpred")])

    let r = try fixture("reductions")
    let x1 = try leaf(r, "x")
    try check("sum(axis: -1)", x1.sum(axis: 2), r, out: "sum_last", seed: "gy_sum_last", grads: [(x1, "dsum_last")])
    let x2 = try leaf(r, "x")
    try check("mean(axis: 1)", x2.mean(axis: 1), r, out: "mean_mid", seed: "gy_mean_mid", grads: [(x2, "dmean_mid")])
    #expect(compare(try leaf(r, "x").sum().value, try r.tensor("sum_all"), "sum()").ok)

    let e = try fixture("elementwise")
    #expect(compare((try leaf(e, "a") + leaf(e, "b")).value, try e.tensor("add"), "add").ok)
    let a = try leaf(e, "a"), bb = try leaf(e, "b")
    try check("mul", a * bb, e, out: "mul", seed: "gy", grads: [(a, "mul_da"), (bb, "mul_db")])
    let a2 = try leaf(e, "a"), bias = try leaf(e, "bias")
    try check("add bias", a2 + bias, e, out: "add_bias", seed: "gy", grads: [(bias, "add_bias_dbias")])
  }
}

extension GoldenTests {
  @Test func tokenDataMovementAndAffine() throws {
    let f = try fixture("tokens")
    let src = try leaf(f, "src")
    try check("scatterAddTokens", scatterAddTokens(src, ids: try f.indices("ids"), tokens: 6), f, out: "scatter",
              seed: "g_scatter", grads: [(src, "dsrc")])
    let cls = try leaf(f, "cls"), x = try leaf(f, "x")
    try check("concatTokens", concatTokens([cls, x]), f, out: "cat", seed: "g_cat",
              grads: [(cls, "dcls"), (x, "dx_cat")])
    let x2 = try leaf(f, "x")
    try check("sliceTokens", sliceTokens(x2, 1..<4), f, out: "slice", seed: "g_slice", grads: [(x2, "dx_slice")])
    let x3 = try leaf(f, "x")
    try check("affine", x3.affine(-1.5, 0.25), f, out: "affine", seed: "g_affine", grads: [(x3, "dx_affine")])
  }
}

/// Concatenates same-shaped [B, L, W] tensors along the last axis.
func concatLastAxis(_ ts: [Tensor]) -> Tensor {
  let rows = ts[0].rows
  let total = ts.reduce(0) { $0 + $1.lastDim }
  let out = Tensor(uninitialized: Array(ts[0].shape.dropLast()) + [total])
  for r in 0..<rows {
    var c = 0
    for t in ts {
      (out.data + r * total + c).update(from: t.data + r * t.lastDim, count: t.lastDim)
      c += t.lastDim
    }
  }
  return out
}

/// Cross-attention probabilities averaged over heads, through the kernel.
func attentionHeadMean(_ q: Tensor, _ k: Tensor, _ v: Tensor, heads: Int) -> (Tensor, Tensor) {
  let b = q.shape[0], lq = q.shape[1], lk = k.shape[1], w = q.shape[2]
  let s = AttentionShape(batch: b, heads: heads, headDim: w / heads, queries: lq, keys: lk)
  let o = Tensor(uninitialized: [b, lq, w]), probs = Tensor(uninitialized: [b, heads, lq, lk])
  Kernels.attentionForward(q: AttentionOperand(q.data, ld: w), k: AttentionOperand(k.data, ld: w),
                           v: AttentionOperand(v.data, ld: w), o: AttentionOperand(o.data, ld: w), probs: probs.data,
                           shape: s)
  let mean = Tensor(uninitialized: [b, lq, lk])
  Kernels.attentionProbsHeadMean(probs.data, into: mean.data, shape: s)
  return (o, mean)
}
