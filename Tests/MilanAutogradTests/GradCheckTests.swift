// Every backward against float64 central differences (GradCheck): the op runs in float32 through the tape, the
// reference is the same function in float64 built from the naive kernels.
import MilanAutograd
import MilanTensor
import MilanTestSupport
import Testing

private func randn(_ shape: [Int], _ seed: UInt64, std: Float = 1) -> Tensor {
  var rng = SplitMix64(seed: seed)
  return Tensor.randn(shape, std: std, rng: &rng)
}

private func expectAll(_ reports: [GradCheckReport]) {
  for r in reports { #expect(r.passed, "\(r)") }
}

/// [cls, unshuffle(visible ++ masked)] in float64: batch 2, K = 2, M = 3, D = 3.
private func assembleReference(_ x: [[Double]], restore: [Int], clsBatch: Int) -> [Double] {
  var out: [Double] = []
  for bi in 0..<2 {
    let c0 = clsBatch == 1 ? 0 : bi * 3
    out += x[0][c0..<(c0 + 3)]
    for i in 0..<5 {
      let j = restore[bi * 5 + i]
      let src: ArraySlice<Double>
      if j < 2 {
        let o = (bi * 2 + j) * 3
        src = x[1][o..<(o + 3)]
      } else {
        let o = (bi * 3 + j - 2) * 3
        src = x[2][o..<(o + 3)]
      }
      out += src
    }
  }
  return out
}

@Suite struct GradCheckTests {
  @Test func linearBmm() {
    expectAll(GradCheck.run("linear", inputs: [randn([4, 3, 5], 1), randn([6, 5], 2), randn([6], 3)],
                            op: { linear($0[0], $0[1], $0[2]) },
                            reference: { Naive.linear($0[0], $0[1], $0[2], rows: 12, inF: 5, outF: 6) }))
    expectAll(GradCheck.run("bmm", inputs: [randn([2, 3, 4], 4), randn([2, 4, 5], 5)], op: { bmm($0[0], $0[1]) },
                            reference: { Naive.bmm($0[0], $0[1], batch: 2, m: 3, n: 5, k: 4) }))
  }

  @Test func elementwiseWithBroadcast() {
    let a = randn([2, 3, 4], 6), full = randn([2, 3, 4], 7), table = randn([1, 3, 4], 8), bias = randn([4], 9)
    for (name, b) in [("same", full), ("pos table", table), ("bias", bias)] {
      let n = b.count
      expectAll(GradCheck.run("add \(name)", inputs: [a, b], op: { $0[0] + $0[1] },
                              reference: { x in x[0].indices.map { x[0][$0] + x[1][$0 % n] } }))
      expectAll(GradCheck.run("sub \(name)", inputs: [a, b], op: { $0[0] - $0[1] },
                              reference: { x in x[0].indices.map { x[0][$0] - x[1][$0 % n] } }))
      expectAll(GradCheck.run("mul \(name)", inputs: [a, b], op: { $0[0] * $0[1] },
                              reference: { x in x[0].indices.map { x[0][$0] * x[1][$0 % n] } }))
    }
    expectAll(GradCheck.run("affine", inputs: [a], op: { $0[0].affine(-1.5, 0.25) },
                            reference: { $0[0].map { -1.5 * $0 + 0.25 } }))
    expectAll(GradCheck.run("reshape", inputs: [a], op: { ($0[0].reshaped([4, 6]) * Variable(randn([6], 10))) },
                            reference: { x in let w = randn([6], 10).toArray(); return x[0].indices.map { x[0][$0] * Double(w[$0 % 6]) } }))
  }

  @Test func activations() {
    let x = randn([3, 17], 11, std: 2.5)
    for kind in Activation.allCases {
      expectAll(GradCheck.run("\(kind)", inputs: [x], op: { $0[0].activation(kind) },
                              reference: { $0[0].map { Naive.activation(kind, $0) } }))
    }
  }

  @Test func layerNormSoftmaxLogSoftmax() {
    let x = randn([5, 12], 12, std: 2)
    expectAll(GradCheck.run("layerNorm", inputs: [x, randn([12], 13), randn([12], 14)],
                            op: { layerNorm($0[0], weight: $0[1], bias: $0[2], eps: 1e-5) },
                            reference: { Naive.layerNorm($0[0], $0[1], $0[2], rows: 5, d: 12, eps: 1e-5) }))
    expectAll(GradCheck.run("layerNorm no affine", inputs: [x], op: { layerNorm($0[0], weight: nil, bias: nil, eps: 1e-6) },
                            reference: { Naive.layerNorm($0[0], nil, nil, rows: 5, d: 12, eps: 1e-6) }))
    expectAll(GradCheck.run("softmax", inputs: [x], op: { $0[0].softmax() },
                            reference: { Naive.softmax($0[0], rows: 5, n: 12) }))
    expectAll(GradCheck.run("logSoftmax", inputs: [x], op: { $0[0].logSoftmax() },
                            reference: { Naive.logSoftmax($0[0], rows: 5, n: 12) }))
  }

  @Test func attentionAllLayouts() {
    let b = 2, h = 2, dh = 4, lq = 3, lk = 5, w = h * dh
    expectAll(GradCheck.run("attention", inputs: [randn([b, lq, w], 15), randn([b, lk, w], 16), randn([b, lk, w], 17)],
                            op: { attention($0[0], $0[1], $0[2], heads: h) },
                            reference: { Naive.attention($0[0], $0[1], $0[2], batch: b, heads: h, headDim: dh,
                                                         queries: lq, keys: lk).out }))
    func columns(_ x: [Double], rows: Int, width: Int, from: Int, count: Int) -> [Double] {
      (0..<rows).flatMap { r in x[(r * width + from)..<(r * width + from + count)] }
    }
    expectAll(GradCheck.run("selfAttention qkv", inputs: [randn([b, lk, 3 * w], 18)],
                            op: { selfAttention(qkv: $0[0], heads: h).0 },
                            reference: { x in
                              let q = columns(x[0], rows: b * lk, width: 3 * w, from: 0, count: w)
                              let k = columns(x[0], rows: b * lk, width: 3 * w, from: w, count: w)
                              let v = columns(x[0], rows: b * lk, width: 3 * w, from: 2 * w, count: w)
                              return Naive.attention(q, k, v, batch: b, heads: h, headDim: dh, queries: lk, keys: lk).out
                            }))
    expectAll(GradCheck.run("crossAttention q+kv", inputs: [randn([b, lq, w], 19), randn([b, lk, 2 * w], 20)],
                            op: { crossAttention(q: $0[0], kv: $0[1], heads: h) },
                            reference: { x in
                              let k = columns(x[1], rows: b * lk, width: 2 * w, from: 0, count: w)
                              let v = columns(x[1], rows: b * lk, width: 2 * w, from: w, count: w)
                              return Naive.attention(x[0], k, v, batch: b, heads: h, headDim: dh, queries: lq, keys: lk).out
                            }))
    // One variable as q, k and v (the backward accumulates its three parts), and one kv shared by two attentions
    // (the first backward writes a fresh gradient, the second accumulates onto it).
    expectAll(GradCheck.run("attention (x, x, x)", inputs: [randn([b, lk, w], 39)],
                            op: { attention($0[0], $0[0], $0[0], heads: h) },
                            reference: { Naive.attention($0[0], $0[0], $0[0], batch: b, heads: h, headDim: dh,
                                                         queries: lk, keys: lk).out }))
    expectAll(GradCheck.run("crossAttention, kv shared", inputs: [randn([b, lq, w], 40), randn([b, lq, w], 41),
                                                                 randn([b, lk, 2 * w], 42)],
                            op: { crossAttention(q: $0[0], kv: $0[2], heads: h) + crossAttention(q: $0[1], kv: $0[2], heads: h).affine(2) },
                            reference: { x in
                              let k = columns(x[2], rows: b * lk, width: 2 * w, from: 0, count: w)
                              let v = columns(x[2], rows: b * lk, width: 2 * w, from: w, count: w)
                              let o1 = Naive.attention(x[0], k, v, batch: b, heads: h, headDim: dh, queries: lq, keys: lk).out
                              let o2 = Naive.attention(x[1], k, v, batch: b, heads: h, headDim: dh, queries: lq, keys: lk).out
                              return zip(o1, o2).map { $0 + 2 * $1 }
                            }))
  }

  @Test func tokenOps() {
    let x = randn([2, 6, 3], 21)
    let ids = IndexTensor(shape: [2, 4], values: [5, 0, 2, 2, 1, 4, 3, 1])
    expectAll(GradCheck.run("gatherTokens", inputs: [x], op: { gatherTokens($0[0], ids: ids) },
                            reference: { Naive.gatherTokens($0[0], ids: ids.values, batch: 2, tokens: 6, picked: 4, dim: 3) }))
    expectAll(GradCheck.run("scatterAddTokens", inputs: [randn([2, 4, 3], 22)],
                            op: { scatterAddTokens($0[0], ids: ids, tokens: 6) },
                            reference: { x in
                              var out = [Double](repeating: 0, count: 2 * 6 * 3)
                              for bi in 0..<2 { for k in 0..<4 { for j in 0..<3 {
                                out[(bi * 6 + ids.values[bi * 4 + k]) * 3 + j] += x[0][(bi * 4 + k) * 3 + j] } } }
                              return out
                            }))
    expectAll(GradCheck.run("concatTokens (cls broadcast)", inputs: [randn([1, 1, 3], 23), x],
                            op: { concatTokens([$0[0], $0[1]]) },
                            reference: { x in (0..<2).flatMap { bi in x[0] + x[1][(bi * 18)..<(bi * 18 + 18)] } }))
    expectAll(GradCheck.run("sliceTokens", inputs: [x], op: { sliceTokens($0[0], 1..<4) },
                            reference: { x in (0..<2).flatMap { bi in x[0][(bi * 18 + 3)..<(bi * 18 + 12)] } }))
    // MILAN's [cls, unshuffle(visible ++ masked)] in one op: cls broadcast from batch 1, and per-sample cls.
    let restore = IndexTensor(shape: [2, 5], values: [3, 0, 4, 1, 2, 1, 4, 0, 2, 3])
    for clsBatch in [1, 2] {
      expectAll(GradCheck.run("assembleTokens (cls batch \(clsBatch))",
                              inputs: [randn([clsBatch, 1, 3], 30), randn([2, 2, 3], 31), randn([2, 3, 3], 32)],
                              op: { assembleTokens(cls: $0[0], visible: $0[1], masked: $0[2], idsRestore: restore) },
                              reference: { x in assembleReference(x, restore: restore.values, clsBatch: clsBatch) }))
    }
    // The prompts feed every decoder layer: visible and masked also used by a second op, so one of the two backwards
    // finds their gradients already there and adds to them.
    expectAll(GradCheck.run("assembleTokens (inputs used twice)",
                            inputs: [randn([2, 1, 3], 35), randn([2, 2, 3], 36), randn([2, 3, 3], 37)],
                            op: { x in
                              concatTokens([assembleTokens(cls: x[0], visible: x[1], masked: x[2], idsRestore: restore),
                                            x[1], x[2]])
                            },
                            reference: { x in
                              let a = assembleReference(x, restore: restore.values, clsBatch: 2)
                              var out: [Double] = []
                              for bi in 0..<2 {
                                out += a[(bi * 18)..<(bi * 18 + 18)]
                                out += x[1][(bi * 6)..<(bi * 6 + 6)]
                                out += x[2][(bi * 9)..<(bi * 9 + 9)]
                              }
                              return out
                            }))
    // The in-place residual: the branch is a fresh result (here x·2 through affine).
    expectAll(GradCheck.run("residualAdd", inputs: [randn([2, 4, 3], 33), randn([2, 4, 3], 34)],
                            op: { residualAdd($0[0], $0[1].affine(2)) },
                            reference: { x in zip(x[0], x[1]).map { $0 + 2 * $1 } }))
    let g = PatchGeometry(batch: 2, channels: 2, height: 4, width: 6, patch: 2)
    expectAll(GradCheck.run("patchEmbed", inputs: [randn([2, 2, 4, 6], 24), randn([3, 2, 2, 2], 25), randn([3], 26)],
                            op: { patchEmbed($0[0], weight: $0[1], bias: $0[2]) },
                            reference: { Naive.patchEmbed($0[0], $0[1], $0[2], geometry: g, embedDim: 3) }))
    // Only the kept patches (MILAN's visible ones, in shuffled order): the gathered rows of the full embedding, and
    // the image gradient reaches only those patches' pixels.
    let keep = IndexTensor(shape: [2, 3], values: [5, 0, 3, 2, 4, 1])
    expectAll(GradCheck.run("patchEmbed (kept patches)",
                            inputs: [randn([2, 2, 4, 6], 35), randn([3, 2, 2, 2], 36), randn([3], 37)],
                            op: { patchEmbed($0[0], weight: $0[1], bias: $0[2], keep: keep) },
                            reference: {
                              Naive.gatherTokens(Naive.patchEmbed($0[0], $0[1], $0[2], geometry: g, embedDim: 3),
                                                 ids: keep.values, batch: 2, tokens: 6, picked: 3, dim: 3)
                            }))
    // A position table [1, L, D] picked from by every image: its gradient sums over the images (here both pick
    // token 4, and image 1 picks token 0 twice).
    let shared = IndexTensor(shape: [2, 3], values: [4, 1, 5, 0, 4, 0])
    expectAll(GradCheck.run("gatherTokens (shared source)", inputs: [randn([1, 6, 3], 38)],
                            op: { gatherTokens($0[0], ids: shared) },
                            reference: { x in shared.values.flatMap { t in Array(x[0][(t * 3)..<(t * 3 + 3)]) } }))
  }

  @Test func lossesAndReductions() {
    var rng = SplitMix64(seed: 27)
    let targets = Tensor.uniform([4, 5], 0, 1, rng: &rng)
    let t64 = targets.toArray().map(Double.init)
    expectAll(GradCheck.run("softCrossEntropy", inputs: [randn([4, 5], 28, std: 2)],
                            op: { softCrossEntropy($0[0], targets: targets) },
                            reference: { [Naive.softCrossEntropy($0[0], t64, rows: 4, classes: 5)] }))
    let labels = [1, 4, 0, 2]
    expectAll(GradCheck.run("crossEntropy", inputs: [randn([4, 5], 29, std: 2)],
                            op: { crossEntropy($0[0], labels: labels) },
                            reference: { x in
                              let lp: [Double] = Naive.logSoftmax(x[0], rows: 4, n: 5)
                              var s: Double = 0
                              for r in 0..<4 { s -= lp[r * 5 + labels[r]] }
                              return [s / 4]
                            }))
    let feat = randn([2, 3, 6], 30), f64 = feat.toArray().map(Double.init)
    expectAll(GradCheck.run("cosineLoss", inputs: [randn([2, 3, 6], 31)], op: { cosineLoss($0[0], target: feat) },
                            reference: { [Naive.cosineLoss($0[0], f64, rows: 6, dim: 6)] }))
    let mask = Tensor(shape: [6], values: [0, 1, 1, 0, 1, 0])
    expectAll(GradCheck.run("cosineLoss masked", inputs: [randn([2, 3, 6], 32)],
                            op: { cosineLoss($0[0], target: feat, weights: mask) },
                            reference: { [Naive.cosineLoss($0[0], f64, weights: [0, 1, 1, 0, 1, 0], rows: 6, dim: 6)] }))
    let x = randn([3, 4, 5], 33)
    for axis in 0..<3 {
      let split = AxisSplit(shape: [3, 4, 5], axis: axis)
      expectAll(GradCheck.run("sum axis \(axis)", inputs: [x], op: { $0[0].sum(axis: axis) },
                              reference: { Naive.sumAxis($0[0], split: split) }))
      expectAll(GradCheck.run("mean axis \(axis)", inputs: [x], op: { $0[0].mean(axis: axis) },
                              reference: { Naive.sumAxis($0[0], split: split).map { $0 / Double(split.n) } }))
    }
    expectAll(GradCheck.run("sum all", inputs: [x], op: { $0[0].sum() }, reference: { [$0[0].reduce(0, +)] }))
    expectAll(GradCheck.run("mean all", inputs: [x], op: { $0[0].mean() }, reference: { [$0[0].reduce(0, +) / 60] }))
  }

  @Test func gradCheckCatchesAWrongGradient() {
    // The checker itself must fail on a wrong backward: scale a correct op's output after the fact so the
    // float64 reference disagrees.
    let reports = GradCheck.run("deliberately wrong backward (this FAIL is expected)", inputs: [randn([3, 4], 34)], op: { $0[0].affine(2) },
                                reference: { $0[0].map { 2.01 * $0 } })
    #expect(reports.contains { !$0.passed })
  }
}

@Suite struct TapeTests {
  @Test func gradientsAccumulateAcrossBackwardCallsUntilZeroed() {
    let w = Parameter(randn([3, 4], 40), name: "blocks.0.mlp.fc1.weight")
    let x = Variable(randn([2, 4], 41))
    linear(x, w).sum().backward()
    let once = w.grad!.toArray()
    linear(x, w).sum().backward()
    #expect(compare(w.grad!.toArray(), once.map { 2 * $0 }, atol: 1e-6, "accumulated twice").ok)
    w.zeroGrad()
    #expect(w.grad == nil)
    #expect(w.name == "blocks.0.mlp.fc1.weight" && w.requiresGrad)
  }

  @Test func noGradRecordsNothing() {
    let w = Parameter(randn([3, 4], 42), name: "w")
    let y = Autograd.noGrad { linear(Variable(randn([2, 4], 43)), w).gelu() }
    #expect(!y.requiresGrad && y.isLeaf)
    #expect(Autograd.isGradEnabled)
    let z = linear(Variable(randn([2, 4], 43)), w)
    #expect(z.requiresGrad && !z.isLeaf)
  }

  @Test func accumulateGradWritesOnFirstUseAndAddsAfter() {
    // First use writes alpha·g into an uninitialised buffer: the same bits as adding it to zeros; then it adds.
    let count = 70_001  // several chunks of the parallel kernels, with a tail
    let g = randn([count], 45, std: 3), h = randn([count], 46)
    let v = Variable(Tensor(zeros: [count]), requiresGrad: true)
    v.accumulateGrad(g, alpha: -0.37)
    let zeros = Tensor(zeros: [count])
    Kernels.axpy(-0.37, x: g.data, y: zeros.data, count: count)
    #expect(compare(v.grad!.toArray(), zeros.toArray(), atol: 0, rtol: 0, "first use vs 0 + alpha·g").ok)
    v.accumulateGrad(h)
    Kernels.axpy(1, x: h.data, y: zeros.data, count: count)
    #expect(compare(v.grad!.toArray(), zeros.toArray(), atol: 0, rtol: 0, "second use adds").ok)
  }

  @Test func sharedInputsSumTheirGradientsAndGraphIsFreed() {
    let a = Variable(randn([5], 44), requiresGrad: true)
    let y = (a * a + a).sum()  // d/da = 2a + 1
    y.backward()
    #expect(compare(a.grad!.toArray(), a.value.toArray().map { 2 * $0 + 1 }, atol: 1e-6, "shared input").ok)
    #expect(y.isLeaf)  // closures released after backward
  }
}
