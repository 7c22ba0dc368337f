// Optimised kernels against the naive references (float64), on sizes that exercise SIMD tails and the 2-way
// thread split, with both the AVX2 and the portable code paths.
import CMilanKernels
import MilanTensor
import MilanTestSupport
import Testing

private func randn(_ shape: [Int], _ seed: UInt64, std: Float = 1) -> Tensor {
  var rng = SplitMix64(seed: seed)
  return Tensor.randn(shape, std: std, rng: &rng)
}

private func d(_ t: Tensor) -> [Double] { t.toArray().map(Double.init) }

/// dW[o, j] = Σ_r dY[r, o]·X[r, j] in float64: the reference of the weight-gradient kernels.
private func weightGradReference(dy: Tensor, x: Tensor, rows: Int, outF: Int, inF: Int) -> [Double] {
  var ref = [Double](repeating: 0, count: outF * inF)
  for r in 0..<rows { for o in 0..<outF { let g = Double(dy.data[r * outF + o])
    for j in 0..<inF { ref[o * inF + j] += g * Double(x.data[r * inF + j]) } } }
  return ref
}

/// dX = dY·W of a linear layer in float64: dy [rows, outF], w [outF, inF] → [rows, inF].
private func inputGradReference(dy: Tensor, w: Tensor, rows: Int, outF: Int, inF: Int) -> [Double] {
  var ref = [Double](repeating: 0, count: rows * inF)
  for r in 0..<rows { for o in 0..<outF { let g = Double(dy.data[r * outF + o])
    for j in 0..<inF { ref[r * inF + j] += g * Double(w.data[o * inF + j]) } } }
  return ref
}

/// Runs `body` once per available SIMD level (portable, then AVX2, then AVX-512 when the CPU has them).
private func forEachSIMDLevel(_ body: (Int) -> Void) {
  simdLevelLock.lock()
  defer { simdLevelLock.unlock() }
  let hw = Int(milan_set_simd_level(2))
  for level in 0...hw {
    milan_set_simd_level(Int32(level))
    body(level)
  }
  milan_set_simd_level(Int32(hw))
}

@Suite(.serialized) struct KernelTests {
  @Test func linearForwardBackwardMatchesNaive() {
    // Large enough to be split across threads (M·N·K ≥ 2^18), odd sizes.
    // (1100, 67, 129): the weight gradient has K = 1100 ≫ M, N and takes the split-K path.
    for (rows, inF, outF) in [(301, 67, 129), (5, 3, 2), (64, 200, 17), (1100, 67, 129)] {
      let x = randn([rows, inF], 1), w = randn([outF, inF], 2), b = randn([outF], 3)
      let y = Tensor(uninitialized: [rows, outF])
      Kernels.linearForward(x: x.data, weight: w.data, bias: b.data, y: y.data, rows: rows, inFeatures: inF,
                            outFeatures: outF)
      let ref = Naive.linear(d(x), d(w), d(b), rows: rows, inF: inF, outF: outF)
      #expect(compare(y.toArray(), ref, atol: 1e-4, rtol: 1e-4, "linear fwd \(rows)x\(inF)x\(outF)").ok)

      // Backward: dx = dy·w, dw = dyᵀ·x, db = Σ dy, accumulated onto existing values.
      let dy = randn([rows, outF], 4)
      let dx = Tensor(shape: [rows, inF], repeating: 0.5), dw = Tensor(zeros: [outF, inF]), db = Tensor(zeros: [outF])
      Kernels.linearBackward(dy: dy.data, x: x.data, weight: w.data, dx: dx.data, dWeight: dw.data, dBias: db.data,
                             rows: rows, inFeatures: inF, outFeatures: outF)
      // References through the naive GEMM: dx = dy·w is linear(dy, wᵀ); dw = dyᵀ·x is linear(dyᵀ, xᵀ).
      let wt = d(w.transposed(0, 1)), dyt = d(dy.transposed(0, 1)), xt = d(x.transposed(0, 1))
      let dxRef = Naive.linear(d(dy), wt, nil, rows: rows, inF: outF, outF: inF).map { $0 + 0.5 }
      let dwRef = Naive.linear(dyt, xt, nil, rows: outF, inF: rows, outF: inF)
      var dbRef = [Double](repeating: 0, count: outF)
      for r in 0..<rows { for o in 0..<outF { dbRef[o] += Double(dy[r, o]) } }
      #expect(compare(dx.toArray(), dxRef, atol: 1e-4, rtol: 1e-4, "linear dx (accumulated)").ok)
      #expect(compare(dw.toArray(), dwRef, atol: 2e-4, rtol: 1e-4, "linear dw").ok)
      #expect(compare(db.toArray(), dbRef, atol: 1e-4, rtol: 1e-4, "linear db").ok)
    }
  }

  @Test func bmmMatchesNaive() {
    for (batch, m, n, k) in [(7, 33, 21, 19), (1, 120, 90, 70)] {
      let a = randn([batch, m, k], 5), b = randn([batch, k, n], 6)
      let c = Tensor(uninitialized: [batch, m, n])
      Kernels.bmmForward(.none, .none, a: a.data, b: b.data, c: c.data, batch: batch, m: m, n: n, k: k)
      #expect(compare(c.toArray(), Naive.bmm(d(a), d(b), batch: batch, m: m, n: n, k: k), atol: 1e-4, "bmm").ok)
    }
  }

  /// The AdamW kernel against the same update in float64, on both SIMD paths (which must agree bit for bit: no FMA).
  @Test func adamwKernelMatchesFloat64OnBothSIMDPaths() {
    let n = 1037  // SIMD body and a scalar tail
    var rng = SplitMix64(seed: 41)
    let w0 = (0..<n).map { _ in rng.nextNormal() }, g = (0..<n).map { _ in 0.01 * rng.nextNormal() }
    let m0 = (0..<n).map { _ in 0.001 * rng.nextNormal() }, v0 = (0..<n).map { _ in 1e-5 * rng.nextUniform() }
    let (lr, wd, b1, b2, eps): (Double, Double, Double, Double, Double) = (1e-3, 0.05, 0.9, 0.95, 1e-8)
    let stepSize = lr / (1 - b1 * b1 * b1), bc2 = (1 - b2 * b2 * b2).squareRoot()  // t = 3
    var results: [[Float]] = []
    forEachSIMDLevel { level in
      var w = w0, m = m0, v = v0
      milan_adamw_step(&w, g, &m, &v, n, Float(1 - lr * wd), Float(b1), Float(b2), Float(stepSize), Float(bc2), Float(eps))
      var worst = 0.0
      for i in 0..<n {
        let mi = Double(m0[i]) + (1 - b1) * (Double(g[i]) - Double(m0[i]))
        let vi = b2 * Double(v0[i]) + (1 - b2) * Double(g[i]) * Double(g[i])
        let wi = Double(w0[i]) * (1 - lr * wd) - stepSize * mi / (vi.squareRoot() / bc2 + eps)
        worst = max(worst, abs(Double(w[i]) - wi) / (1e-6 + abs(wi)))
        // float32 rounding of the inputs' scale, not of the (possibly cancelling) result
        let mScale = abs(Double(m0[i])) + abs(Double(g[i])), vScale = Double(v0[i]) + Double(g[i]) * Double(g[i])
        #expect(abs(Double(m[i]) - mi) <= 1e-6 * mScale && abs(Double(v[i]) - vi) <= 1e-6 * vScale)
      }
      #expect(worst < 1e-5, "AdamW level \(level): max rel diff \(worst)")
      print("ok  AdamW kernel (SIMD level \(level)) vs float64: max rel diff \(worst)")
      results.append(w + m + v)
    }
    if results.count == 2 { #expect(results[0] == results[1], "the AVX2 and portable AdamW paths differ") }
  }

  @Test func activationsMatchNaiveOnBothSIMDPaths() {
    var rng = SplitMix64(seed: 11)
    let n = 100_003  // several chunks and a SIMD tail
    let x = Tensor.randn([n], std: 4, rng: &rng)
    // Include extreme values: far tails, zero, exact boundaries.
    for (i, v) in [-30, -12, -5, -1e-8, 0, 1e-8, 5, 12, 30].enumerated() { x.data[i] = Float(v) }
    let dy = randn([n], 12)
    forEachSIMDLevel { level in
      for kind in Activation.allCases {
        let y = Tensor(uninitialized: [n])
        Kernels.activationForward(kind, x: x.data, y: y.data, count: n)
        let ref = x.toArray().map { Naive.activation(kind, Double($0)) }
        #expect(compare(y.toArray(), ref, atol: 2e-6, rtol: 2e-6, "\(kind) fwd simd\(level)").ok)
        let dx = Tensor(zeros: [n])
        Kernels.activationBackward(kind, x: x.data, dy: dy.data, dx: dx.data, count: n)
        let dref = (0..<n).map { Naive.activationGrad(kind, Double(x.data[$0])) * Double(dy.data[$0]) }
        #expect(compare(dx.toArray(), dref, atol: 4e-6, rtol: 4e-6, "\(kind) bwd simd\(level)").ok)
      }
    }
  }

  /// The exact GELU's AVX-512 forward computes the erfc tail for the far lanes only (a list per block of 2048); it
  /// must give the bits of the per-vector tail it replaced, on block and vector tails, far values alone or mixed.
  @Test func geluTailListMatchesTheVectorwiseTailBitForBit() {
    for (n, std) in [(1, 4.0), (15, 3.0), (17, 3.0), (2047, 2.0), (2048, 4.0), (2049, 1.0), (100_003, 4.0),
                     (65_536, 1.5)] as [(Int, Float)] {
      var rng = SplitMix64(seed: UInt64(n))
      let x = Tensor.randn([n], std: std, rng: &rng)
      let specials: [Float] = [-.infinity, .infinity, -30, 30, -2.5, 2.5, -2.5000002, 2.5000002, 0, -0.0]
      for (i, v) in specials.enumerated() where i < n { x.data[n - 1 - i] = v }
      forEachSIMDLevel { level in
        let y = [Float](unsafeUninitializedCapacity: n) { b, c in milan_gelu_erf_fwd(x.data, b.baseAddress!, n); c = n }
        let ref = [Float](unsafeUninitializedCapacity: n) { b, c in
          milan_gelu_erf_fwd_vectorwise(x.data, b.baseAddress!, n); c = n
        }
        let inPlace = x.copy()
        milan_gelu_erf_fwd(inPlace.data, inPlace.data, n)  // y == x is allowed
        let differ = (0..<n).filter { y[$0].bitPattern != ref[$0].bitPattern }
        let differInPlace = (0..<n).filter { inPlace.data[$0].bitPattern != ref[$0].bitPattern }
        #expect(differ.isEmpty, "GELU n=\(n) std \(std) simd\(level): \(differ.count) values differ, first at \(differ.first ?? -1)")
        #expect(differInPlace.isEmpty, "GELU in place n=\(n) simd\(level): \(differInPlace.count) values differ")
      }
    }
  }

  @Test func layerNormMatchesNaiveOnBothSIMDPaths() {
    forEachSIMDLevel { level in
      for (rows, dim) in [(257, 384), (9, 37), (1000, 8)] {
        let x = randn([rows, dim], 21, std: 3), w = randn([dim], 22), b = randn([dim], 23)
        for affine in [true, false] {
          let y = Tensor(uninitialized: [rows, dim]), mean = Tensor(uninitialized: [rows]),
            rstd = Tensor(uninitialized: [rows])
          Kernels.layerNormForward(x: x.data, weight: affine ? w.data : nil, bias: affine ? b.data : nil, y: y.data,
                                   mean: mean.data, rstd: rstd.data, rows: rows, d: dim, eps: 1e-6)
          let ref = Naive.layerNorm(d(x), affine ? d(w) : nil, affine ? d(b) : nil, rows: rows, d: dim, eps: 1e-6)
          #expect(compare(y.toArray(), ref, atol: 1e-5, rtol: 1e-5, "layerNorm \(rows)x\(dim) affine=\(affine) simd\(level)").ok)
        }
      }
    }
  }

  @Test func backwardPathsAgreeAcrossSIMDLevels() {
    // The float64 gradient checks (MilanAutogradTests) run on the default path; here the portable path must give
    // the same gradients as the AVX2 and AVX-512 ones.
    let rows = 130, dim = 45
    let x = randn([rows, dim], 31, std: 2), w = randn([dim], 32), dy = randn([rows, dim], 33)
    var results: [[Float]] = []
    forEachSIMDLevel { _ in
      let y = Tensor(uninitialized: [rows, dim]), mean = Tensor(uninitialized: [rows]), rstd = Tensor(uninitialized: [rows])
      Kernels.layerNormForward(x: x.data, weight: w.data, bias: nil, y: y.data, mean: mean.data, rstd: rstd.data,
                               rows: rows, d: dim, eps: 1e-5)
      let dx = Tensor(zeros: [rows, dim]), dw = Tensor(zeros: [dim]), db = Tensor(zeros: [dim])
      Kernels.layerNormBackward(dy: dy.data, x: x.data, weight: w.data, mean: mean.data, rstd: rstd.data, dx: dx.data,
                                dWeight: dw.data, dBias: db.data, rows: rows, d: dim)
      let p = Tensor(uninitialized: [rows, dim])
      Kernels.softmaxForward(x: x.data, y: p.data, rows: rows, n: dim, scale: 0.7)
      let ds = Tensor(zeros: [rows, dim])
      Kernels.softmaxBackward(y: p.data, dy: dy.data, dx: ds.data, rows: rows, n: dim, scale: 0.7)
      let lp = Tensor(uninitialized: [rows, dim])
      Kernels.logSoftmaxForward(x: x.data, y: lp.data, rows: rows, n: dim)
      let dl = Tensor(zeros: [rows, dim])
      Kernels.logSoftmaxBackward(y: lp.data, dy: dy.data, dx: dl.data, rows: rows, n: dim)
      results.append(dx.toArray() + dw.toArray() + db.toArray() + p.toArray() + ds.toArray() + lp.toArray() + dl.toArray())
    }
    for level in results.indices.dropFirst() {
      #expect(compare(results[level], results[0], atol: 1e-5, rtol: 1e-5,
                      "SIMD level \(level) vs portable (LN, softmax, log-softmax fwd+bwd)").ok)
    }
  }

  @Test func softmaxMatchesNaiveOnBothSIMDPaths() {
    forEachSIMDLevel { level in
      for (rows, n) in [(384, 50), (7, 197), (3, 5), (2, 257), (4, 32), (5, 17)] {
        let x = randn([rows, n], 41, std: 5)
        let y = Tensor(uninitialized: [rows, n]), ly = Tensor(uninitialized: [rows, n])
        Kernels.softmaxForward(x: x.data, y: y.data, rows: rows, n: n)
        Kernels.logSoftmaxForward(x: x.data, y: ly.data, rows: rows, n: n)
        #expect(compare(y.toArray(), Naive.softmax(d(x), rows: rows, n: n), atol: 1e-7, rtol: 1e-5, "softmax \(rows)x\(n) simd\(level)").ok)
        #expect(compare(ly.toArray(), Naive.logSoftmax(d(x), rows: rows, n: n), atol: 1e-5, rtol: 1e-5, "logSoftmax simd\(level)").ok)
      }
    }
    // Rows run in pairs on the AVX-512 path; each row must come out exactly as when computed alone.
    forEachSIMDLevel { level in
      let (rows, n) = (5, 197)
      let x = randn([rows, n], 43, std: 5)
      let all = Tensor(uninitialized: [rows, n]), one = Tensor(uninitialized: [rows, n])
      Kernels.softmaxForward(x: x.data, y: all.data, rows: rows, n: n, scale: 0.3)
      for r in 0..<rows { Kernels.softmaxForward(x: x.data + r * n, y: one.data + r * n, rows: 1, n: n, scale: 0.3) }
      #expect(compare(all.toArray(), one.toArray(), atol: 0, rtol: 0, "softmax rows together vs alone simd\(level)").ok)
    }
    // -inf entries (masked logits) get probability exactly 0.
    let x = Tensor(shape: [1, 9], values: [1, -.infinity, 2, 3, 4, 5, 6, 7, -.infinity])
    Kernels.softmaxForward(x: x.data, y: x.data, rows: 1, n: 9)
    #expect(x[0, 1] == 0 && x[0, 8] == 0 && abs(x.toArray().reduce(0, +) - 1) < 1e-6)
  }

  /// The packed-weight linear layer (frozen teacher weights) against the naive one, on both SIMD paths (AVX-512 where
  /// the CPU has it, else the portable loop over the same layout): 1-row and 8k ± 1 rows (register tiles and the
  /// 2-way split), outputs that are not a multiple of the 32-wide panel (masked stores), short and odd inner sizes,
  /// with and without a bias.
  @Test func packedLinearMatchesNaiveOnBothSIMDPaths() {
    let shapes = [(1, 5, 3), (7, 32, 19), (8, 33, 1), (9, 70, 64), (17, 96, 40), (130, 64, 129), (1000, 40, 48)]
    forEachSIMDLevel { level in
      var worst = 0.0
      for (i, (rows, n, k)) in shapes.enumerated() {
        let x = randn([rows, k], 400 + UInt64(i)), w = randn([n, k], 500 + UInt64(i)), b = randn([n], 600 + UInt64(i))
        let packed = PackedWeight(w.data, outFeatures: n, inFeatures: k)
        for withBias in [true, false] {
          let y = Tensor(uninitialized: [rows, n])
          for j in 0..<y.count { y.data[j] = .nan }  // every output must be written
          Kernels.packedLinearForward(x: x.data, packed: packed, bias: withBias ? b.data : nil, y: y.data, rows: rows)
          let ref = Naive.linear(d(x), d(w), withBias ? d(b) : nil, rows: rows, inF: k, outF: n)
          let r = compare(y.toArray(), ref, atol: 1e-5, rtol: 1e-5, "packed linear L\(level) \(rows)x\(n)x\(k) bias \(withBias)")
          #expect(r.ok)
          worst = max(worst, r.maxAbs)
        }
      }
      print("packed linear (SIMD level \(level), AVX-512 \(PackedWeight.fast)): max |Δ| \(worst)")
    }
  }

  /// Training linear layers whose inner dimension is at least twice the output's, or whose sizes are all ≥ 256, run
  /// on the packed kernel with the weight packed per call (forward: W as panels of outputs; backward dX = dY·W: W's
  /// rows as panels): against the float64 reference and against the BLAS path, with and without bias, dX written and
  /// accumulated, on odd sizes (row tails, outputs past a multiple of 32).
  @Test func packedTrainingProductsMatchNaiveAndBLAS() {
    // Held so no other suite switches to the portable SIMD path (which has no packed product) meanwhile.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let saved = Kernels.packsTrainingProducts
    defer { Kernels.packsTrainingProducts = saved }
    var worst = 0.0
    let shapes = [(64, 96, 32), (67, 200, 45), (130, 192, 64), (9, 64, 40), (400, 33, 100), (261, 300, 257)]
    for (i, (rows, inF, outF)) in shapes.enumerated() {
      let x = randn([rows, inF], 1000 + UInt64(i)), w = randn([outF, inF], 1100 + UInt64(i))
      let b = randn([outF], 1200 + UInt64(i)), dy = randn([rows, outF], 1300 + UInt64(i))
      let dx0 = randn([rows, inF], 1400 + UInt64(i))
      // Sums of up to 200 products of unit normals stay within 1e-5; of 257–300, float32 rounding reaches 4.7e-5 on
      // both paths (OpenBLAS included).
      let atol = max(inF, outF) > 256 ? 1e-4 : 1e-5
      Kernels.packsTrainingProducts = true
      let forwardPacked = Kernels.prefersPackedForward(rows: rows, k: inF, n: outF)
      let backwardPacked = Kernels.prefersPackedProduct(rows: rows, k: outF, n: inF)
      // dX reference: dy·W (+ dx0 when accumulating).
      let dxRef = inputGradReference(dy: dy, w: w, rows: rows, outF: outF, inF: inF)
      var results: [[[Float]]] = []
      for packed in [true, false] {
        Kernels.packsTrainingProducts = packed
        var outs: [[Float]] = []
        for withBias in [true, false] {
          let y = Tensor(uninitialized: [rows, outF])
          Kernels.linearForward(x: x.data, weight: w.data, bias: withBias ? b.data : nil, y: y.data, rows: rows,
                                inFeatures: inF, outFeatures: outF)
          let ref = Naive.linear(d(x), d(w), withBias ? d(b) : nil, rows: rows, inF: inF, outF: outF)
          let r = compare(y.toArray(), ref, atol: atol, rtol: 1e-5,
                          "linear \(rows)x\(inF)→\(outF) bias \(withBias) packed \(packed && forwardPacked)")
          #expect(r.ok)
          worst = max(worst, r.maxAbs)
          outs.append(y.toArray())
        }
        for accumulate in [false, true] {
          let dx = Tensor(uninitialized: [rows, inF])
          if accumulate { dx.data.update(from: dx0.data, count: dx.count) }
          Kernels.linearBackward(dy: dy.data, x: x.data, weight: w.data, dx: dx.data, dWeight: nil, dBias: nil,
                                 rows: rows, inFeatures: inF, outFeatures: outF, overwriteDx: !accumulate)
          let ref = accumulate ? zip(dxRef, d(dx0)).map { $0 + $1 } : dxRef
          let r = compare(dx.toArray(), ref, atol: atol, rtol: 1e-5,
                          "dX \(rows)x\(outF)→\(inF) accumulate \(accumulate) packed \(packed && backwardPacked)")
          #expect(r.ok)
          worst = max(worst, r.maxAbs)
          outs.append(dx.toArray())
        }
        results.append(outs)
      }
      for (a, b) in zip(results[0], results[1]) {
        #expect(compare(a, b.map(Double.init), atol: atol, rtol: 1e-5, "packed vs BLAS \(rows)x\(inF)x\(outF)").ok)
      }
      print("packed training products \(rows)x\(inF)x\(outF): forward packed \(forwardPacked), "
            + "dX packed \(backwardPacked)")
    }
    #if arch(x86_64)
    Kernels.packsTrainingProducts = true
    if PackedWeight.fast {  // the shapes above do reach the packed path on AVX-512 CPUs
      #expect(Kernels.prefersPackedProduct(rows: 67, k: 200, n: 45))
      #expect(Kernels.prefersPackedProduct(rows: 400, k: 100, n: 33))
      #expect(Kernels.prefersPackedForward(rows: 130, k: 192, n: 64))  // a short inner dimension (k < 2n)
      #expect(Kernels.prefersPackedForward(rows: 261, k: 300, n: 257))  // large: every size ≥ 256
      #expect(Kernels.prefersPackedProduct(rows: 261, k: 257, n: 300))
    }
    #endif
    print("packed training products: max |Δ| vs float64 \(worst)")
  }

  @Test func packedWeightGradientsMatchNaiveAndBLAS() {
    // dW = dYᵀ·X on the packed kernel (AVX-512) or its portable loop, against float64 and against BLAS: odd widths
    // (8-row tiles and 32-column panels with tails), several chunks of the reduction (777 and 1030 rows: 2 and 3),
    // small weights with the rows split into two parts whose partial products are added, large ones (n, k ≥ 256)
    // with the outputs split (n ≥ k) or the columns (n < k), written and accumulated; then the kernel on blocks of
    // outputs × columns directly. Blocks of ≥ 256 columns take the micro-panel path (521 × 257, and 700 × 600 with
    // its 320- and 280-column blocks), narrower ones read dY in place.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let saved = (Kernels.packsTrainingProducts, Kernels.packsWeightGrads, milan_simd_level())
    defer {
      Kernels.packsTrainingProducts = saved.0
      Kernels.packsWeightGrads = saved.1
      milan_set_simd_level(saved.2)
    }
    var worst = 0.0
    let hw = Int(milan_set_simd_level(1))
    for (i, (rows, inF, outF)) in [(777, 40, 13), (256, 32, 8), (300, 100, 96), (1030, 128, 384), (600, 300, 273),
                                   (521, 257, 520), (700, 600, 40)].enumerated() {
      let x = randn([rows, inF], 2000 + UInt64(i)), dy = randn([rows, outF], 2100 + UInt64(i))
      let dw0 = randn([outF, inF], 2200 + UInt64(i))
      let ref = weightGradReference(dy: dy, x: x, rows: rows, outF: outF, inF: inF)
      for level in 0...hw {
        milan_set_simd_level(Int32(level))
        var results: [[Float]] = []
        for packed in [true, false] {
          Kernels.packsTrainingProducts = packed
          Kernels.packsWeightGrads = packed
          let onPacked = Kernels.prefersPackedWeightGrad(rows: rows, n: outF, k: inF)
          #expect(onPacked == (packed && level > 0 && PackedWeight.fast))
          for accumulate in [false, true] {
            let dw = Tensor(uninitialized: [outF, inF])
            if accumulate { dw.data.update(from: dw0.data, count: dw.count) }
            Kernels.linearBackward(dy: dy.data, x: x.data, weight: dw0.data, dx: nil, dWeight: dw.data, dBias: nil,
                                   rows: rows, inFeatures: inF, outFeatures: outF, overwriteDWeight: !accumulate)
            let want = accumulate ? zip(ref, d(dw0)).map { $0 + $1 } : ref
            // Sums of up to 1030 products of unit normals (partial sums |·| ~ 30): float32 rounding reaches 6e-5 for
            // OpenBLAS and the packed kernel, 1.8e-4 (at |dW| ~ 30) for the portable loop's sequential sum.
            let r = compare(dw.toArray(), want, atol: 1e-4, rtol: 1e-5,
                            "dW \(rows)x\(outF)x\(inF) accumulate \(accumulate) SIMD \(level) packed \(onPacked)")
            #expect(r.ok)
            worst = max(worst, r.maxAbs)
            results.append(dw.toArray())
          }
        }
        for (a, b) in zip(results[0..<2], results[2..<4]) {
          #expect(compare(a, b.map(Double.init), atol: 1e-4, rtol: 1e-5, "packed vs BLAS dW \(rows)x\(outF)x\(inF)").ok)
        }
      }
      // The kernel called directly on four blocks of outputs × columns (odd boundaries: a part tile of 8 outputs,
      // a column block not starting at 0), at every level (0: the portable loop a CPU without AVX-512 runs).
      for level in 0...hw {
        milan_set_simd_level(Int32(level))
        let dw = Tensor(shape: [outF, inF], repeating: .nan)
        let iMid = outF / 2 + 3, cMid = min(inF - 1, 32 * ((inF / 2 + 31) / 32))
        for (iLo, iHi, cLo, cHi) in [(0, iMid, 0, cMid), (iMid, outF, 0, cMid), (0, iMid, cMid, inF),
                                     (iMid, outF, cMid, inF)] {
          let scratch = Tensor(uninitialized: [milan_packed_weight_grad_scratch(rows, cHi - cLo)])
          milan_packed_weight_grad(dy.data, x.data, rows, outF, inF, iLo, iHi, cLo, cHi, dw.data, 0, scratch.data)
        }
        let r = compare(dw.toArray(), ref, atol: 1e-4, rtol: 1e-5,
                        "packed dW by blocks \(rows)x\(outF)x\(inF) SIMD \(level)")
        #expect(r.ok)
        worst = max(worst, r.maxAbs)
      }
    }
    print("packed weight gradients: max |Δ| vs float64 \(worst)")
  }

  @Test func weightGradientMicroPanelsCarriedAcrossPartialBlocks() {
    // Blocks of ≥ 256 columns copy dY into micro-panels, the next 16 outputs' full ones inside the current block's
    // tiles: output ranges whose last block holds 13 outputs (a full micro-panel carried, a partial one copied alone),
    // 5, 9 and 16, over one chunk and over two (777 rows), written over NaN and accumulated.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let hw = Int(milan_set_simd_level(1))
    defer { milan_set_simd_level(Int32(hw)) }
    var worst = 0.0
    for (i, rows) in [300, 777].enumerated() {
      let outF = 61, inF = 300
      let x = randn([rows, inF], 2300 + UInt64(i)), dy = randn([rows, outF], 2400 + UInt64(i))
      let dw0 = randn([outF, inF], 2500 + UInt64(i))
      let ref = weightGradReference(dy: dy, x: x, rows: rows, outF: outF, inF: inF)
      for level in 0...hw {
        milan_set_simd_level(Int32(level))
        for (iLo, iHi) in [(0, 45), (3, 24), (20, 61), (45, 61)] {
          for accumulate in [false, true] {
            let dw = accumulate ? Tensor(shape: [outF, inF], values: dw0.toArray())
                                : Tensor(shape: [outF, inF], repeating: .nan)
            let scratch = Tensor(uninitialized: [milan_packed_weight_grad_scratch(rows, inF)])
            milan_packed_weight_grad(dy.data, x.data, rows, outF, inF, iLo, iHi, 0, inF, dw.data, accumulate ? 1 : 0,
                                     scratch.data)
            let got = Array(dw.toArray()[(iLo * inF)..<(iHi * inF)])
            // Copying each block's micro-panels before its tiles (the carry off) gives the same bits.
            let alone = accumulate ? Tensor(shape: [outF, inF], values: dw0.toArray())
                                   : Tensor(shape: [outF, inF], repeating: .nan)
            Kernels.carriesWeightGradCopy = false
            milan_packed_weight_grad(dy.data, x.data, rows, outF, inF, iLo, iHi, 0, inF, alone.data,
                                     accumulate ? 1 : 0, scratch.data)
            Kernels.carriesWeightGradCopy = true
            #expect(compare(Array(alone.toArray()[(iLo * inF)..<(iHi * inF)]), got.map(Double.init), atol: 0, rtol: 0,
                            "dW carried vs copied alone, rows \(rows) outputs \(iLo)..<\(iHi) SIMD \(level)").ok)
            let want = (iLo * inF..<iHi * inF).map { ref[$0] + (accumulate ? Double(dw0.data[$0]) : 0) }
            let r = compare(got, want, atol: 1e-4, rtol: 1e-5,
                            "dW rows \(rows) outputs \(iLo)..<\(iHi) accumulate \(accumulate) SIMD \(level)")
            #expect(r.ok)
            worst = max(worst, r.maxAbs)
          }
        }
      }
    }
    print("weight gradient micro-panels: max |Δ| vs float64 \(worst)")
  }

  @Test func edgeTilesGiveTheBitsOfFullTiles() {
    // Edge tiles run on the 4 × 32 tile (at most 4 rows) and the 8 × 16 one (at most 16 columns), and `packedRows`
    // splits rows in units of 4: linear layers whose rows leave 1–4 in a last tile or make an odd number of 8-row
    // tiles split across the threads (each part then ends in a 4-row tile), and whose outputs (forward) or inputs (dX)
    // leave 1–16 in a last panel, written over NaN; attention heads with 1–5 queries or keys, or 1–16 keys or a head
    // width of 8 or 16 in a last panel (S, O, and the transposed dV and dK). Against float64, and bit for bit against
    // the 8 × 32 tile alone.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    guard PackedWeight.fast else {
      print("edge tiles: this CPU has no AVX-512 packed kernel; nothing to compare")
      return
    }
    defer { Kernels.usesEdgeTiles = true }
    var worst = 0.0
    for (i, (rows, inF, outF)) in [(68, 33, 40), (197, 48, 64), (201, 32, 70), (1572, 20, 40)].enumerated() {
      let x = randn([rows, inF], 2600 + UInt64(i)), w = randn([outF, inF], 2700 + UInt64(i))
      let b = randn([outF], 2800 + UInt64(i)), dy = randn([rows, outF], 2900 + UInt64(i))
      #expect(Kernels.prefersPackedForward(rows: rows, k: inF, n: outF))
      if i == 2 { #expect(Kernels.prefersPackedProduct(rows: rows, k: outF, n: inF)) }  // dX packed too
      var runs: [[[Float]]] = []
      for edges in [true, false] {
        Kernels.usesEdgeTiles = edges
        let y = Tensor(shape: [rows, outF], repeating: .nan), dx = Tensor(shape: [rows, inF], repeating: .nan)
        Kernels.linearForward(x: x.data, weight: w.data, bias: b.data, y: y.data, rows: rows, inFeatures: inF,
                              outFeatures: outF)
        Kernels.linearBackward(dy: dy.data, x: x.data, weight: w.data, dx: dx.data, dWeight: nil, dBias: nil,
                               rows: rows, inFeatures: inF, outFeatures: outF, overwriteDx: true)
        runs.append([y.toArray(), dx.toArray()])
      }
      for (a, b) in zip(runs[0], runs[1]) {
        #expect(compare(a, b.map(Double.init), atol: 0, rtol: 0,
                        "linear \(rows)x\(inF)→\(outF): edge tiles vs 8 × 32").ok)
      }
      let ref = Naive.linear(d(x), d(w), d(b), rows: rows, inF: inF, outF: outF)
      let dxRef = inputGradReference(dy: dy, w: w, rows: rows, outF: outF, inF: inF)
      for (got, want, what) in [(runs[0][0], ref, "y"), (runs[0][1], dxRef, "dX")] {
        let r = compare(got, want, atol: 1e-5, rtol: 1e-5, "edge tiles \(what) \(rows)x\(inF)→\(outF)")
        #expect(r.ok)
        worst = max(worst, r.maxAbs)
      }
    }
    for (b, h, dh, lq, lk) in [(2, 2, 8, 5, 3), (2, 3, 16, 13, 4), (1, 2, 32, 2, 37), (2, 2, 64, 197, 1)] {
      let wd = h * dh
      let q = randn([b, lq, wd], 61), k = randn([b, lk, wd], 62), v = randn([b, lk, wd], 63)
      let go = randn([b, lq, wd], 64)
      let s = AttentionShape(batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      var runs: [[[Float]]] = []
      for edges in [true, false] {
        Kernels.usesEdgeTiles = edges
        let o = Tensor(shape: [b, lq, wd], repeating: .nan), p = Tensor(uninitialized: [b, h, lq, lk])
        Kernels.attentionForward(q: AttentionOperand(q.data, ld: wd), k: AttentionOperand(k.data, ld: wd),
                                 v: AttentionOperand(v.data, ld: wd), o: AttentionOperand(o.data, ld: wd),
                                 probs: p.data, shape: s)
        let dq = Tensor(shape: [b, lq, wd], repeating: .nan), dk = Tensor(shape: [b, lk, wd], repeating: .nan)
        let dv = Tensor(shape: [b, lk, wd], repeating: .nan)
        Kernels.attentionBackward(dOut: AttentionOperand(go.data, ld: wd), q: AttentionOperand(q.data, ld: wd),
                                  k: AttentionOperand(k.data, ld: wd), v: AttentionOperand(v.data, ld: wd),
                                  probs: p.data, dq: AttentionOperand(dq.data, ld: wd),
                                  dk: AttentionOperand(dk.data, ld: wd), dv: AttentionOperand(dv.data, ld: wd),
                                  shape: s, overwrite: (true, true, true))
        runs.append([o.toArray(), dq.toArray(), dk.toArray(), dv.toArray()])
      }
      for (a, b) in zip(runs[0], runs[1]) {
        #expect(compare(a, b.map(Double.init), atol: 0, rtol: 0,
                        "attention \(lq)x\(lk) dh\(dh): edge tiles vs 8 × 32").ok)
      }
      let ref = Naive.attention(d(q), d(k), d(v), batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      let grads = Naive.attentionBackward(d(go), d(q), d(k), d(v), probs: ref.probs, batch: b, heads: h,
                                          headDim: dh, queries: lq, keys: lk)
      for (got, want, what) in [(runs[0][0], ref.out, "out"), (runs[0][1], grads.dq, "dQ"),
                                (runs[0][2], grads.dk, "dK"), (runs[0][3], grads.dv, "dV")] {
        let r = compare(got, want, atol: 3e-5, rtol: 1e-4, "edge tiles attention \(what) \(lq)x\(lk) dh\(dh)")
        #expect(r.ok)
        worst = max(worst, r.maxAbs)
      }
    }
    print("edge tiles: max |Δ| vs float64 \(worst)")
  }

  @Test func attentionMatchesNaiveWithDifferentQueryAndKeyLengths() {
    // Held so no other test switches the SIMD path between the runs compared bit for bit below.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    for (b, h, dh, lq, lk) in [(2, 3, 8, 5, 7), (3, 4, 16, 37, 50), (2, 2, 32, 50, 50)] {
      let w = h * dh
      let q = randn([b, lq, w], 51), k = randn([b, lk, w], 52), v = randn([b, lk, w], 53)
      let o = Tensor(uninitialized: [b, lq, w])
      let s = AttentionShape(batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      let probs = Tensor(uninitialized: [b, h, lq, lk])
      Kernels.attentionForward(q: AttentionOperand(q.data, ld: w), k: AttentionOperand(k.data, ld: w),
                               v: AttentionOperand(v.data, ld: w), o: AttentionOperand(o.data, ld: w),
                               probs: probs.data, shape: s)
      let ref = Naive.attention(d(q), d(k), d(v), batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      #expect(compare(o.toArray(), ref.out, atol: 2e-5, rtol: 1e-4, "attention out b\(b) h\(h) dh\(dh) \(lq)x\(lk)").ok)
      #expect(compare(probs.toArray(), ref.probs, atol: 1e-6, rtol: 1e-4, "attention probs").ok)
      // Without saved probabilities (no-grad path) the output is the same.
      let o2 = Tensor(uninitialized: [b, lq, w])
      Kernels.attentionForward(q: AttentionOperand(q.data, ld: w), k: AttentionOperand(k.data, ld: w),
                               v: AttentionOperand(v.data, ld: w), o: AttentionOperand(o2.data, ld: w),
                               probs: nil, shape: s)
      #expect(o2.toArray() == o.toArray())
      // The next batch element's rows are prefetched (every shape here is small enough): a hint only, so the
      // forward and the backward give the same bits without it.
      let go = randn([b, lq, w], 54)
      var runs: [[[Float]]] = []
      for prefetch in [true, false] {
        Kernels.prefetchesAttention = prefetch
        let o3 = Tensor(uninitialized: [b, lq, w]), p3 = Tensor(uninitialized: [b, h, lq, lk])
        Kernels.attentionForward(q: AttentionOperand(q.data, ld: w), k: AttentionOperand(k.data, ld: w),
                                 v: AttentionOperand(v.data, ld: w), o: AttentionOperand(o3.data, ld: w),
                                 probs: p3.data, shape: s)
        let dq = Tensor(zeros: [b, lq, w]), dk = Tensor(zeros: [b, lk, w]), dv = Tensor(zeros: [b, lk, w])
        Kernels.attentionBackward(dOut: AttentionOperand(go.data, ld: w), q: AttentionOperand(q.data, ld: w),
                                  k: AttentionOperand(k.data, ld: w), v: AttentionOperand(v.data, ld: w),
                                  probs: p3.data, dq: AttentionOperand(dq.data, ld: w),
                                  dk: AttentionOperand(dk.data, ld: w), dv: AttentionOperand(dv.data, ld: w), shape: s)
        runs.append([o3.toArray(), dq.toArray(), dk.toArray(), dv.toArray()])
      }
      Kernels.prefetchesAttention = true
      #expect(runs[0] == runs[1], "attention with and without prefetching b\(b) h\(h) dh\(dh) \(lq)x\(lk)")
    }
  }

  @Test func attentionBackwardPackedAndBLASMatchNaive() {
    // Odd shapes: a single query and key, head widths that are not multiples of 8 or of the 32-wide panel (tails in
    // every product), a head of 64, and the decoder's query ≠ key lengths; both the packed products (where the CPU
    // has AVX-512) and the BLAS calls, accumulating into gradients that already hold values. Held like the test
    // above, so a run comparing bits elsewhere never sees the path switched under it.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    var worst: Double = 0
    for (b, h, dh, lq, lk) in [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (2, 2, 40, 33, 1), (3, 2, 64, 9, 37),
                                (2, 4, 32, 37, 50), (1, 2, 20, 50, 13)] {
      let w = h * dh
      let q = randn([b, lq, w], 71), k = randn([b, lk, w], 72), v = randn([b, lk, w], 73), go = randn([b, lq, w], 74)
      let s = AttentionShape(batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      let ref = Naive.attention(d(q), d(k), d(v), batch: b, heads: h, headDim: dh, queries: lq, keys: lk)
      let g = Naive.attentionBackward(d(go), d(q), d(k), d(v), probs: ref.probs, batch: b, heads: h, headDim: dh,
                                      queries: lq, keys: lk)
      let start = (randn([b, lq, w], 75), randn([b, lk, w], 76), randn([b, lk, w], 77))
      for packed in [true, false] {
        Kernels.packsAttention = packed
        defer { Kernels.packsAttention = true }
        let o = Tensor(uninitialized: [b, lq, w]), p = Tensor(uninitialized: [b, h, lq, lk])
        Kernels.attentionForward(q: AttentionOperand(q.data, ld: w), k: AttentionOperand(k.data, ld: w),
                                 v: AttentionOperand(v.data, ld: w), o: AttentionOperand(o.data, ld: w),
                                 probs: p.data, shape: s)
        let dq = start.0.copy(), dk = start.1.copy(), dv = start.2.copy()
        Kernels.attentionBackward(dOut: AttentionOperand(go.data, ld: w), q: AttentionOperand(q.data, ld: w),
                                  k: AttentionOperand(k.data, ld: w), v: AttentionOperand(v.data, ld: w),
                                  probs: p.data, dq: AttentionOperand(dq.data, ld: w),
                                  dk: AttentionOperand(dk.data, ld: w), dv: AttentionOperand(dv.data, ld: w), shape: s)
        let label = "\(packed ? "packed" : "BLAS") b\(b) h\(h) dh\(dh) \(lq)x\(lk)"
        func plus(_ t: Tensor, _ r: [Double]) -> [Double] { zip(d(t), r).map { $0 + $1 } }
        let checks = [
          compare(o.toArray(), ref.out, atol: 2e-6, rtol: 1e-5, "attention out, \(label)"),
          compare(dq.toArray(), plus(start.0, g.dq), atol: 2e-6, rtol: 1e-5, "attention dq, \(label)"),
          compare(dk.toArray(), plus(start.1, g.dk), atol: 2e-6, rtol: 1e-5, "attention dk, \(label)"),
          compare(dv.toArray(), plus(start.2, g.dv), atol: 2e-6, rtol: 1e-5, "attention dv, \(label)"),
        ]
        for c in checks {
          #expect(c.ok)
          worst = max(worst, c.maxAbs)
        }
      }
    }
    print("attention forward/backward, packed and BLAS: max |Δ| vs float64 \(worst)")
  }

  @Test func packedProductMatchesNaiveInBothOrientations() {
    // y (+)= x·B with x read as rows (ldk = 1) or transposed (ldx = 1), B packed from rows or from a transposed
    // strided matrix; sizes with tails in rows (8-row tiles), columns (32-wide panels) and k; every SIMD level.
    for (rows, k, n) in [(1, 1, 1), (7, 5, 33), (17, 40, 31), (9, 3, 64), (25, 19, 70)] {
      let a = randn([rows * k + 3], 81), b = randn([k * n], 82), y0 = randn([rows * n], 83)
      var ref = [Double](repeating: 0, count: rows * n)
      let ad = d(a), bd = d(b)
      for r in 0..<rows { for j in 0..<n { for kk in 0..<k { ref[r * n + j] += ad[r * k + kk] * bd[kk * n + j] } } }
      let bT = Tensor(uninitialized: [n, k + 2])  // Bᵀ with rows k + 2 floats apart
      for j in 0..<n { for kk in 0..<k { bT.data[j * (k + 2) + kk] = b.data[kk * n + j] } }
      let aT = Tensor(uninitialized: [k * rows])  // A transposed: aT[kk, r]
      for r in 0..<rows { for kk in 0..<k { aT.data[kk * rows + r] = a.data[r * k + kk] } }
      forEachSIMDLevel { level in
        let count = milan_packed_weight_count(n, k)
        let fromRows = Tensor(uninitialized: [count]), fromT = Tensor(uninitialized: [count])
        milan_pack_rows_panels(b.data, n, k, n, 0, (n + 31) / 32, fromRows.data)
        milan_pack_weight_panels_ld(bT.data, k + 2, n, k, 0, (n + 31) / 32, fromT.data)
        #expect(fromRows.toArray() == fromT.toArray(), "packed panels, rows vs strided transposed, level \(level)")
        for (transposed, acc) in [(false, false), (true, false), (false, true), (true, true)] {
          let y = y0.copy()
          if transposed {
            milan_packed_product(aT.data, 1, rows, rows, k, fromRows.data, n, y.data, n, acc ? 1 : 0)
          } else {
            milan_packed_product(a.data, k, 1, rows, k, fromRows.data, n, y.data, n, acc ? 1 : 0)
          }
          let want = acc ? zip(d(y0), ref).map { $0 + $1 } : ref
          #expect(compare(y.toArray(), want, atol: 5e-6, rtol: 1e-5,
                          "packed product \(rows)x\(k)x\(n) transposed \(transposed) acc \(acc) level \(level)").ok)
        }
      }
    }
  }

  /// The product that packs one panel at a time (`milan_packed_product_panels`, panels split across threads) gives
  /// the same bits as packing every panel first and running the packed kernel over the rows: in C on odd sizes (row
  /// tiles, column panels and k with tails; B and x with padded rows; split panel ranges), at every SIMD level, and
  /// through `Kernels.linearForward` / `linearBackward` on a layer that takes the path, against float64 as well.
  @Test func panelByPanelProductsMatchPackingFirstBitForBit() {
    for (i, (rows, k, n)) in [(1, 1, 1), (7, 5, 33), (17, 40, 95), (9, 300, 64), (25, 19, 70)].enumerated() {
      let seed = 900 + UInt64(i) * 10
      let ldx = k + 2, ldw = k + 3, ldb = n + 5
      let x = randn([rows * ldx], seed), w = randn([n * ldw], seed + 1), bias = randn([n], seed + 2)
      let bKN = Tensor(uninitialized: [k * ldb])  // the same matrix as B [k, n]: B[kk, j] = W[j, kk]
      for j in 0..<n { for kk in 0..<k { bKN.data[kk * ldb + j] = w.data[j * ldw + kk] } }
      let y0 = randn([rows * n], seed + 3)
      var ref = [Double](repeating: 0, count: rows * n)  // x·Wᵀ in float64
      for r in 0..<rows { for j in 0..<n { for kk in 0..<k {
        ref[r * n + j] += Double(x.data[r * ldx + kk]) * Double(w.data[j * ldw + kk]) } } }
      let panels = (n + 31) / 32, split = panels / 2
      forEachSIMDLevel { level in
        for (transposed, withBias, acc) in [(true, true, false), (false, false, true), (true, false, true),
                                            (false, true, false)] {
          let packed = Tensor(uninitialized: [milan_packed_weight_count(n, k)])
          if transposed {
            milan_pack_weight_panels_ld(w.data, ldw, n, k, 0, panels, packed.data)
          } else {
            milan_pack_rows_panels(bKN.data, ldb, k, n, 0, panels, packed.data)
          }
          let first = y0.copy(), byPanel = y0.copy()
          let bp = withBias ? UnsafePointer(bias.data) : nil
          milan_packed_linear(x.data, ldx, rows, k, packed.data, n, bp, first.data, n, acc ? 1 : 0)
          let scratch = Tensor(uninitialized: [2 * 32 * k])
          let src = transposed ? w.data : bKN.data, ld = transposed ? ldw : ldb
          for (lo, hi, s) in [(0, split, 0), (split, panels, 1)] {
            milan_packed_product_panels(x.data, ldx, rows, k, src, ld, transposed ? 1 : 0, n, lo, hi, bp,
                                        byPanel.data, n, acc ? 1 : 0, scratch.data + s * 32 * k)
          }
          let label = "\(rows)x\(k)x\(n) transposed \(transposed) bias \(withBias) acc \(acc) level \(level)"
          let same = byPanel.toArray() == first.toArray()  // a Bool, so a failure prints the label, not both arrays
          #expect(same, "panel by panel vs packing first, \(label)")
          var want = ref
          for r in 0..<rows { for j in 0..<n {
            if withBias { want[r * n + j] += Double(bias.data[j]) }
            if acc { want[r * n + j] += Double(y0.data[r * n + j]) } } }
          #expect(compare(byPanel.toArray(), want, atol: 2e-5, rtol: 1e-5, "panel by panel, \(label)").ok)
        }
      }
    }
    // Through the library: a layer of 300 rows, 520 → 530 (and 530 → 520 for dX), packed panel by panel on AVX-512.
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let saved = Kernels.packsPanelsOneByOne
    defer { Kernels.packsPanelsOneByOne = saved }
    let rows = 300, inF = 520, outF = 530
    #if arch(x86_64)
    if PackedWeight.fast && Kernels.packsTrainingProducts && Kernels.packsLargeProducts {
      #expect(Kernels.packsPanelByPanel(rows: rows, k: inF, n: outF) == (Parallel.threads * 4 <= 17))
      #expect(Kernels.prefersPackedForward(rows: rows, k: inF, n: outF))
      #expect(Kernels.prefersPackedProduct(rows: rows, k: outF, n: inF))
    }
    #endif
    let x = randn([rows, inF], 951), w = randn([outF, inF], 952), b = randn([outF], 953)
    let dy = randn([rows, outF], 954)
    var yRef = [Double](repeating: 0, count: rows * outF), dxRef = [Double](repeating: 0, count: rows * inF)
    for r in 0..<rows { for o in 0..<outF {
      var s = Double(b.data[o])
      let g = Double(dy.data[r * outF + o])
      for j in 0..<inF {
        s += Double(x.data[r * inF + j]) * Double(w.data[o * inF + j])
        dxRef[r * inF + j] += g * Double(w.data[o * inF + j])
      }
      yRef[r * outF + o] = s } }
    var outs: [[Float]] = []
    var worst = 0.0
    for on in [true, false] {
      Kernels.packsPanelsOneByOne = on
      let y = Tensor(uninitialized: [rows, outF]), dx = Tensor(uninitialized: [rows, inF])
      Kernels.linearForward(x: x.data, weight: w.data, bias: b.data, y: y.data, rows: rows, inFeatures: inF,
                            outFeatures: outF)
      Kernels.linearBackward(dy: dy.data, x: x.data, weight: w.data, dx: dx.data, dWeight: nil, dBias: nil, rows: rows,
                             inFeatures: inF, outFeatures: outF, overwriteDx: true)
      for (got, want, what) in [(y.toArray(), yRef, "y"), (dx.toArray(), dxRef, "dX")] {
        let r = compare(got, want, atol: 1e-4, rtol: 1e-5, "linear \(what) \(rows)x\(inF)x\(outF) panel by panel \(on)")
        #expect(r.ok)
        worst = max(worst, r.maxAbs)
      }
      outs.append(y.toArray() + dx.toArray())
    }
    let same = outs[0] == outs[1]
    #expect(same, "linear forward and dX: panel by panel vs packing first, bit for bit")
    print("panel-by-panel products: the same bits as packing first; linear \(rows)x\(inF)x\(outF) max |Δ| vs float64 "
          + "\(worst)")
  }

  @Test func gatherScatterPatchEmbedAndReductionsMatchNaive() {
    let b = 3, l = 11, dim = 6, k = 5
    let x = randn([b, l, dim], 61)
    var rng = SplitMix64(seed: 62)
    let ids = (0..<(b * k)).map { _ in Int(rng.next() % UInt64(l)) }
    let y = Tensor(uninitialized: [b, k, dim])
    Kernels.gatherTokens(x: x.data, ids: ids, y: y.data, batch: b, tokens: l, picked: k, dim: dim)
    #expect(compare(y.toArray(), Naive.gatherTokens(d(x), ids: ids, batch: b, tokens: l, picked: k, dim: dim),
                    atol: 0, rtol: 0, "gather").ok)
    // scatter-add is the adjoint of gather: <gather(x), y> == <x, scatter(y)>.
    let back = Tensor(zeros: [b, l, dim])
    Kernels.scatterAddTokens(src: y.data, ids: ids, out: back.data, batch: b, tokens: l, picked: k, dim: dim)
    let lhs = zip(y.toArray(), y.toArray()).reduce(0.0) { $0 + Double($1.0 * $1.1) }
    let rhs = zip(x.toArray(), back.toArray()).reduce(0.0) { $0 + Double($1.0 * $1.1) }
    #expect(abs(lhs - rhs) < 1e-3 * max(1, abs(lhs)), "adjoint: \(lhs) vs \(rhs)")

    let g = PatchGeometry(batch: 2, channels: 3, height: 12, width: 20, patch: 4)
    let img = randn([2, 3, 12, 20], 63), pw = randn([7, 3, 4, 4], 64), pb = randn([7], 65)
    let cols = Tensor(uninitialized: [g.batch * g.patchesPerImage, g.patchDim])
    let pe = Tensor(uninitialized: [2, g.patchesPerImage, 7])
    Kernels.patchEmbedForward(img: img.data, weight: pw.data, bias: pb.data, cols: cols.data, y: pe.data, geometry: g,
                              embedDim: 7)
    #expect(compare(pe.toArray(), Naive.patchEmbed(d(img), d(pw), d(pb), geometry: g, embedDim: 7), atol: 1e-4,
                    "patch embed").ok)

    for axis in 0..<3 {
      let split = AxisSplit(shape: [b, l, dim], axis: axis)
      let s = Tensor(uninitialized: [split.outer * split.inner])
      Kernels.sumAxis(x: x.data, y: s.data, split: split)
      #expect(compare(s.toArray(), Naive.sumAxis(d(x), split: split), atol: 1e-5, "sum axis \(axis)").ok)
    }
  }

  @Test func bufferPoolReusesAndBoundsMemory() {
    // Other suites allocate concurrently, so this checks properties that do not depend on global byte counts.
    // A released buffer of an unusual size class comes back for the next request of that class.
    let n = 7_777_777
    var first: UnsafeMutablePointer<Float>? = nil
    do {
      let t = Tensor(uninitialized: [n])
      t.fill(.nan)  // garbage for the next user
      first = t.storage.pointer
    }
    let z = Tensor(zeros: [n])
    #expect(z.storage.pointer == first, "released buffer not reused")
    #expect(z.toArray().allSatisfy { $0 == 0 }, "a reused buffer must come back zeroed from Tensor(zeros:)")
    let stats = BufferPool.shared.stats
    #expect(stats.peak >= stats.live && stats.live >= n * 4)
    for m in [1, 15, 1024, 1025, 1_000_001, 50_000_000] {
      let c = BufferPool.sizeClassForTesting(m)
      #expect(c >= m && c <= max(16, m + m / 8 + 16), "size class \(c) for \(m)")
    }
    // Buffers of 4 MiB and more start on a 2 MiB boundary (huge pages; a reused one was allocated so too), smaller
    // ones on 64 bytes.
    if BufferPool.usesHugePages {
      let big = Tensor(uninitialized: [1_234_567 * 4 + 3])
      #expect(Int(bitPattern: big.storage.pointer) % (2 << 20) == 0, "a 19 MB buffer is not 2 MiB-aligned")
    }
    let small = Tensor(uninitialized: [12_345])
    #expect(Int(bitPattern: small.storage.pointer) % 64 == 0)
  }

  @Test func tensorViewsAndPermutes() {
    let t = Tensor(shape: [2, 3, 4], values: (0..<24).map(Float.init))
    let v = t.reshaped([6, -1])
    #expect(v.shape == [6, 4])
    v[1, 0] = 100  // views share storage
    #expect(t[0, 1, 0] == 100)
    let s = t.slice(1..<2)
    #expect(s.shape == [1, 3, 4] && s[0, 0, 0] == 12)
    let p = t.permuted([2, 0, 1])
    #expect(p.shape == [4, 2, 3] && p[3, 1, 2] == t[1, 2, 3])
  }
}

@Suite struct OverwriteModeTests {
  /// Backward kernels in overwrite mode must not read their (uninitialised, here NaN-filled) gradient buffer.
  @Test func overwriteModeIgnoresGarbageAndEqualsAccumulateOnZeros() {
    var rng = SplitMix64(seed: 90)
    let rows = 33, n = 70
    let x = Tensor.randn([rows, n], rng: &rng), dy = Tensor.randn([rows, n], rng: &rng)
    func pair(_ label: String, _ body: (UnsafeMutablePointer<Float>, Bool) -> Void) {
      let a = Tensor(zeros: [rows, n]), b = Tensor(shape: [rows, n], repeating: .nan)
      body(a.data, true)
      body(b.data, false)
      #expect(compare(b.toArray(), a.toArray(), atol: 0, rtol: 0, "overwrite vs accumulate: \(label)").ok)
    }
    for kind in Activation.allCases {
      pair("\(kind)") { Kernels.activationBackward(kind, x: x.data, dy: dy.data, dx: $0, count: rows * n, accumulate: $1) }
    }
    let mean = Tensor(uninitialized: [rows]), rstd = Tensor(uninitialized: [rows]), y = Tensor(uninitialized: [rows, n])
    Kernels.layerNormForward(x: x.data, weight: nil, bias: nil, y: y.data, mean: mean.data, rstd: rstd.data, rows: rows,
                             d: n, eps: 1e-6)
    pair("layerNorm") {
      Kernels.layerNormBackward(dy: dy.data, x: x.data, weight: nil, mean: mean.data, rstd: rstd.data, dx: $0,
                                dWeight: nil, dBias: nil, rows: rows, d: n, accumulate: $1)
    }
    Kernels.softmaxForward(x: x.data, y: y.data, rows: rows, n: n)
    pair("softmax") { Kernels.softmaxBackward(y: y.data, dy: dy.data, dx: $0, rows: rows, n: n, accumulate: $1) }
    Kernels.logSoftmaxForward(x: x.data, y: y.data, rows: rows, n: n)
    pair("logSoftmax") { Kernels.logSoftmaxBackward(y: y.data, dy: dy.data, dx: $0, rows: rows, n: n, accumulate: $1) }
    let w = Tensor.randn([n, n], rng: &rng)
    pair("linear dx") {
      Kernels.linearBackward(dy: dy.data, x: x.data, weight: w.data, dx: $0, dWeight: nil, dBias: nil, rows: rows,
                             inFeatures: n, outFeatures: n, overwriteDx: !$1)
    }
    // Attention backward into a fused qkv gradient [B, L, 3·H·Dh] (2 images, 3 heads of 5, 7 tokens): every head
    // block of dq, dk and dv written once.
    let (b, h, dh, l) = (2, 3, 5, 7), wd = h * dh
    let shape = AttentionShape(batch: b, heads: h, headDim: dh, queries: l, keys: l)
    let qkv = Tensor.randn([b, l, 3 * wd], rng: &rng), gOut = Tensor.randn([b, l, wd], rng: &rng)
    let o = Tensor(uninitialized: [b, l, wd]), probs = Tensor(uninitialized: [shape.probsCount])
    func op(_ p: UnsafeMutablePointer<Float>, _ column: Int) -> AttentionOperand { AttentionOperand(p + column, ld: 3 * wd) }
    Kernels.attentionForward(q: op(qkv.data, 0), k: op(qkv.data, wd), v: op(qkv.data, 2 * wd),
                             o: AttentionOperand(o.data, ld: wd), probs: probs.data, shape: shape)
    let a = Tensor(zeros: [b, l, 3 * wd]), c = Tensor(shape: [b, l, 3 * wd], repeating: .nan)
    for (buffer, overwrite) in [(a, false), (c, true)] {
      Kernels.attentionBackward(dOut: AttentionOperand(gOut.data, ld: wd), q: op(qkv.data, 0), k: op(qkv.data, wd),
                                v: op(qkv.data, 2 * wd), probs: probs.data, dq: op(buffer.data, 0),
                                dk: op(buffer.data, wd), dv: op(buffer.data, 2 * wd), shape: shape,
                                overwrite: (overwrite, overwrite, overwrite))
    }
    #expect(compare(c.toArray(), a.toArray(), atol: 0, rtol: 0, "overwrite vs accumulate: attention").ok)
  }
}
