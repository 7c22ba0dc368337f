// Linear layers whose weights never change (the teachers): the weight [out, in] is packed once into panels of 32
// outputs (`milan_pack_weight`), and every forward is one pass of an AVX-512 register-tiled product over the packed
// panels with the bias in its initial value — no per-call packing of the weights and no separate bias pass, the two
// costs around OpenBLAS's kernel in a teacher's forward (docs/benchmarks.md). Used only where the CPU has AVX-512;
// `Naive.linear` is the reference, and the portable loop over the same layout is what the tests run at SIMD level 0.
import CMilanKernels
import Foundation

/// A linear layer's weight [outFeatures, inFeatures] packed for `Kernels.packedLinearForward`.
public final class PackedWeight: @unchecked Sendable {
  public let outFeatures: Int, inFeatures: Int
  let panels: Tensor  // ⌈out / 32⌉ panels × inFeatures × 32 floats

  /// `weight`: [outFeatures, inFeatures], row-major (PyTorch's layout); packed into a buffer of its own.
  public init(_ weight: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int) {
    self.outFeatures = outFeatures
    self.inFeatures = inFeatures
    panels = Tensor(uninitialized: [milan_packed_weight_count(outFeatures, inFeatures)])
    milan_pack_weight(weight, outFeatures, inFeatures, panels.data)
  }

  /// Packs `weight` [outFeatures, inFeatures] into its own storage when the panels fit exactly (outFeatures a multiple
  /// of 32, as every ViT width is), so frozen weights cost no extra memory; the tensor then holds the packed layout,
  /// not the weight. Otherwise into a new buffer.
  public static func packing(_ weight: Tensor) -> PackedWeight {
    let n = weight.shape[0], k = weight.shape[1]
    let packed = PackedWeight(weight.data, outFeatures: n, inFeatures: k)
    guard milan_packed_weight_count(n, k) == weight.count else { return packed }
    weight.data.update(from: packed.panels.data, count: weight.count)
    return PackedWeight(sharing: weight, outFeatures: n, inFeatures: k)
  }

  private init(sharing panels: Tensor, outFeatures: Int, inFeatures: Int) {
    self.outFeatures = outFeatures
    self.inFeatures = inFeatures
    self.panels = panels
  }

  /// Whether frozen weights get packed: this CPU runs the packed product with AVX-512 (elsewhere BLAS is faster) and
  /// `MILAN_PACKED_LINEAR=0` does not turn it off (for A/B runs).
  public static var fast: Bool { enabled && milan_packed_linear_avx512() != 0 }
  /// Held while weights are being packed: two first forwards of one teacher on two threads must not pack a weight
  /// twice (an in-place pack of packed data would scramble it).
  public static let packingLock = NSLock()
  nonisolated(unsafe) public static var enabled: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_LINEAR"] != "0"
}

extension Kernels {
  /// y[rows, out] = x[rows, in] · Wᵀ + bias with the packed weight; rows split across threads in tiles of 8.
  public static func packedLinearForward(x: UnsafePointer<Float>, packed w: PackedWeight, bias: UnsafePointer<Float>?,
                                         y: UnsafeMutablePointer<Float>, rows: Int) {
    packedRows(x: x, rows: rows, k: w.inFeatures, panels: w.panels.data, n: w.outFeatures, bias: bias, y: y,
               accumulate: false)
  }

  /// The packed kernel over rows [0, rows) split across threads in tiles of 8:
  /// y[rows, n] (+)= x[rows, k]·panels + bias.
  private static func packedRows(x: UnsafePointer<Float>, rows: Int, k: Int, panels: UnsafePointer<Float>, n: Int,
                                 bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, accumulate: Bool) {
    if BLAS.countFLOPs { milan_flop_counter_add(Int64(2 * rows * n * k)) }
    nonisolated(unsafe) let x = x, y = y, bias = bias, panels = panels
    // Split in units of 4 rows: with the 4-row tile (`usesEdgeTiles`) an odd number of 8-row tiles (1576 rows
    // are 197) splits evenly, each part ending in a 4-row tile, instead of one part running a whole tile more.
    let unit = usesEdgeTiles ? 4 : 8, units = (rows + unit - 1) / unit, acc: Int32 = accumulate ? 1 : 0
    // Parts of at least 2^18 multiply-adds (or 64 rows), so a small product is not split below the dispatch cost.
    let minRows = min(64, ((1 << 18) + n * k - 1) / max(1, n * k))
    Parallel.forEachChunk(units, minChunk: (minRows + unit - 1) / unit) { r in
      let lo = r.lowerBound * unit, hi = min(rows, r.upperBound * unit)
      milan_packed_linear(x + lo * k, k, hi - lo, k, panels, n, bias, y + lo * n, n, acc)
    }
  }

  /// Whether the training products with a long inner dimension may run on the packed kernel (`packedProduct`, on
  /// AVX-512 CPUs only); `MILAN_PACKED_TRAINING=0` keeps them on BLAS (A/B runs).
  nonisolated(unsafe) public static var packsTrainingProducts: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_TRAINING"] != "0"

  /// Whether weight gradients of small layers run on the packed kernel (`packedWeightGrad`);
  /// `MILAN_PACKED_WEIGHT_GRAD=0` keeps them on BLAS (A/B runs).
  nonisolated(unsafe) public static var packsWeightGrads: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_WEIGHT_GRAD"] != "0"

  /// Whether the packed kernel's edge tiles (at most 4 rows, or at most 16 columns) run on its 4 × 32 and 8 × 16
  /// tiles (the default), with `packedRows` splitting rows in units of 4, rather than on the 8 × 32 tile with rows
  /// repeated or columns masked off and a split in units of 8 (the same bits; `milan-bench --ab edge-tiles`).
  public static var usesEdgeTiles: Bool {
    get { milan_edge_tiles() != 0 }
    set { milan_set_edge_tiles(newValue ? 1 : 0) }
  }

  /// Whether the weight gradient's micro-panel path copies the next 16 outputs' dY micro-panels inside the current
  /// block's first tiles (the default), or each block's before its tiles (the same bits; `milan-bench --ab
  /// weight-grad-carry` compares them).
  public static var carriesWeightGradCopy: Bool {
    get { milan_weight_grad_carry() != 0 }
    set { milan_set_weight_grad_carry(newValue ? 1 : 0) }
  }

  /// Whether `packedWeightGrad` is the faster way to compute dW[n, k] += dY[rows, n]ᵀ·X[rows, k], on AVX-512 CPUs:
  /// - small weights (at most 64 Ki entries, e.g. 512 × 128: the CPU default's encoder and decoder) over at least 256
  ///   rows, where OpenBLAS packs both operands (2–18 % faster in a one-thread harness on the CPU-default shapes);
  /// - large ones (n, k ≥ 256 over at least 256 rows: the paper's ViT-B/16 and decoder layers), where the packed
  ///   kernel runs at 104–109 GFLOP/s a core against OpenBLAS's 100–103 and writes a first gradient directly, where
  ///   OpenBLAS clears it in a pass of its own (`sgemm_beta`) before accumulating (docs/benchmarks.md).
  public static func prefersPackedWeightGrad(rows: Int, n: Int, k: Int) -> Bool {
    guard packsTrainingProducts && packsWeightGrads && rows >= 256 && milan_packed_linear_avx512() != 0 else {
      return false
    }
    return (n >= 8 && k >= 32 && n * k <= 1 << 16) || (packsLargeProducts && n >= 256 && k >= 256)
  }

  /// dW[n, k] (+)= dY[rows, n]ᵀ·X[rows, k] (all contiguous) on the packed kernel. Small weights split the rows — the
  /// reduction — across the cores in parts of at least 256 (`Parallel.forEachPartialSum`, the split BLAS uses for
  /// these products too); large ones split the longer side of dW (outputs in steps of 16, or columns in steps of 32),
  /// each part packing the whole of the other operand's chunk itself, so there is no partial sum to add and the
  /// result does not depend on the number of threads.
  static func packedWeightGrad(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, rows: Int, n: Int, k: Int,
                               dw: UnsafeMutablePointer<Float>, accumulate: Bool) {
    if BLAS.countFLOPs { milan_flop_counter_add(Int64(2 * rows * n * k)) }
    nonisolated(unsafe) let dy = dy, x = x, dw = dw
    let acc: Int32 = accumulate ? 1 : 0
    if n * k <= 1 << 16 {
      let perScratch = milan_packed_weight_grad_scratch(rows, k)  // enough for every part's (shorter) rows
      let scratch = Tensor(uninitialized: [Parallel.parts(rows, minChunk: 256) * perScratch])
      nonisolated(unsafe) let sp = scratch.data
      Parallel.forEachPartialSum(rows, minChunk: 256, rows: n, cols: k, into: dw, ld: k) { part, r, dst, _ in
        milan_packed_weight_grad(dy + r.lowerBound * n, x + r.lowerBound * k, r.count, n, k, 0, n, 0, k, dst,
                                 part == 0 ? acc : 0, sp + part * perScratch)
      }
      return
    }
    let splitOutputs = n >= k, step = splitOutputs ? 16 : 32, units = ((splitOutputs ? n : k) + step - 1) / step
    let parts = Parallel.parts(units)
    let perScratch = milan_packed_weight_grad_scratch(rows, splitOutputs ? k : (units + parts - 1) / parts * step)
    let scratch = Tensor(uninitialized: [parts * perScratch])
    nonisolated(unsafe) let sp = scratch.data
    Parallel.forEachChunkIndexed(units) { part, r in  // `parts` parts, as `Parallel.parts(units)` counted
      let lo = r.lowerBound * step, hi = min(r.upperBound * step, splitOutputs ? n : k)
      let (iLo, iHi, cLo, cHi) = splitOutputs ? (lo, hi, 0, k) : (0, n, lo, hi)
      milan_packed_weight_grad(dy, x, rows, n, k, iLo, iHi, cLo, cHi, dw, acc, sp + part * perScratch)
    }
  }

  /// Whether `packedProduct` is the faster way to compute y[rows, n] = x[rows, k]·op(B): the inner dimension at least
  /// twice the output's (the MLP's second layer forward, the backward dX of qkv, fc1 and the decoder's kv), where
  /// OpenBLAS spends a large share packing x, which the packed kernel reads in place; and every product with all
  /// three sizes ≥ 256 (the paper's ViT-B/16 and decoder layers), where the packed kernel's inner loop runs at 96–99 %
  /// of a core's FMA peak against OpenBLAS's 84–89 % (one-thread harness, packing of B included: 5–10 % faster;
  /// in-process A/B of the paper step with cached targets: median −3.4 %; docs/benchmarks.md).
  public static func prefersPackedProduct(rows: Int, k: Int, n: Int) -> Bool {
    packsTrainingProducts && milan_packed_linear_avx512() != 0
      && ((k >= 2 * n && n >= 32 && rows >= 64) || (packsLargeProducts && rows >= 256 && n >= 256 && k >= 256))
  }

  /// Whether large products (rows, n, k ≥ 256) run on the packed kernel whatever their shape (`prefersPackedProduct`,
  /// and the weight gradients of `prefersPackedWeightGrad`); `MILAN_PACKED_LARGE=0` keeps them on OpenBLAS (A/B runs).
  nonisolated(unsafe) public static var packsLargeProducts: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_LARGE"] != "0"

  /// Whether a forward y = x·Wᵀ + b runs on the packed kernel: the long inner dimensions above, and short ones
  /// (16 ≤ k ≤ 256, the CPU default's 128- and 96-wide layers), where OpenBLAS's copy of x and the separate bias
  /// pass weigh most against the product (in a one-thread harness 1–13 % faster on those shapes before counting the
  /// bias pass the packed kernel folds in; docs/benchmarks.md). Wider layers stay on OpenBLAS.
  public static func prefersPackedForward(rows: Int, k: Int, n: Int) -> Bool {
    prefersPackedProduct(rows: rows, k: k, n: n)
      || (packsTrainingProducts && packsShortForwards && k >= 16 && k <= 256 && n >= 32 && rows >= 64
          && milan_packed_linear_avx512() != 0)
  }

  /// Whether forwards with a short inner dimension use the packed kernel (`prefersPackedForward`);
  /// `MILAN_PACKED_SHORT_FORWARD=0` keeps them on BLAS (A/B runs).
  nonisolated(unsafe) public static var packsShortForwards: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_SHORT_FORWARD"] != "0"

  /// Whether `packedProduct` splits the 32-output panels across the cores, each packing one panel at a time into a
  /// buffer that stays in L2 and running every row against it (`milan_packed_product_panels`), rather than packing
  /// all of B first and splitting the rows. It pays where few rows meet a large B (rows < 1024, B ≥ 2^18 floats: the
  /// paper's encoder layers at 400 tokens, ViT-L's at 200), where writing B's packed copy and streaming it back once
  /// per 16 rows weighs most; with at least 4 panels per thread, so the split stays even. Two-thread harness, B cold
  /// in cache (docs/benchmarks.md): 400 × 768 → 3072 5–8 % faster, 200 × 1024 → 4096 17–20 %, 1176 × 512 → 2048
  /// the same, 3200 × 384 → 1536 7 % slower (hence the row bound).
  public static func packsPanelByPanel(rows: Int, k: Int, n: Int) -> Bool {
    packsPanelsOneByOne && rows < 1024 && n * k >= 1 << 18 && (n + 31) / 32 >= 4 * Parallel.threads
  }

  /// Whether `packsPanelByPanel` may choose the panel-by-panel product at all; `MILAN_PANEL_BY_PANEL=0` or
  /// `milan-bench --ab panel-by-panel` turns it off (A/B runs).
  nonisolated(unsafe) public static var packsPanelsOneByOne: Bool =
    ProcessInfo.processInfo.environment["MILAN_PANEL_BY_PANEL"] != "0"

  /// y[rows, n] = x[rows, k]·op(B) + bias (y += … with `accumulate`), op(B) [k, n] given as W [n, k] (`transposedB`,
  /// a forward) or as B [k, n] (a backward dX = dY·W); x is read in place. Either panel by panel
  /// (`packsPanelByPanel`), or B packed into 32-wide panels for this call (the panels split across the cores), then
  /// the packed kernel over rows split across the cores. The two give the same bits.
  static func packedProduct(x: UnsafePointer<Float>, rows: Int, k: Int, b: UnsafePointer<Float>, n: Int,
                            transposedB: Bool, bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>,
                            accumulate: Bool) {
    if packsPanelByPanel(rows: rows, k: k, n: n) {
      if BLAS.countFLOPs { milan_flop_counter_add(Int64(2 * rows * n * k)) }
      let count = (n + 31) / 32, parts = Parallel.parts(count)
      let scratch = Tensor(uninitialized: [parts * 32 * k])
      nonisolated(unsafe) let x = x, b = b, bias = bias, y = y, sp = scratch.data
      let ldb = transposedB ? k : n, acc: Int32 = accumulate ? 1 : 0
      Parallel.forEachChunkIndexed(count) { part, r in  // `parts` parts, as `Parallel.parts(count)` counted
        milan_packed_product_panels(x, k, rows, k, b, ldb, transposedB ? 1 : 0, n, r.lowerBound, r.upperBound, bias,
                                    y, n, acc, sp + part * 32 * k)
      }
      return
    }
    let panels = Tensor(uninitialized: [milan_packed_weight_count(n, k)])
    nonisolated(unsafe) let b = b, p = panels.data
    Parallel.forEachChunk((n + 31) / 32, minChunk: max(1, (1 << 16) / max(1, 32 * k))) { r in
      if transposedB {
        milan_pack_weight_panels(b, n, k, r.lowerBound, r.upperBound, p)
      } else {
        milan_pack_rows_panels(b, n, k, n, r.lowerBound, r.upperBound, p)
      }
    }
    packedRows(x: x, rows: rows, k: k, panels: p, n: n, bias: bias, y: y, accumulate: accumulate)
  }
}
