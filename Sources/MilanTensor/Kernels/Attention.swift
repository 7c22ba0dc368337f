// Multi-head scaled-dot-product attention whose query sequence may differ from its key/value sequence (the MILAN
// prompting decoder queries with the mask tokens only).
//
// Layout is token-major, the way the projections produce it: q: [B, Lq, *] where head h occupies columns
// h·Dh ..< (h+1)·Dh of each row, rows `ldq` floats apart (so q, k and v can be column blocks of one fused qkv
// buffer with ld = 3·H·Dh). Output o: [B, Lq, *] in the same layout. No permute copies are made.
// Per (batch, head): S = Q·Kᵀ, P = softmax(scale·S), O = P·V; (batch, head) pairs are split across cores. P is
// kept for the backward when `probs` is given. Each product is one call of the packed 8 × 32 register tile
// (`milan_packed_product`: the head's right factor copied into 32-wide panels, the left one read in place, as rows or
// transposed) on CPUs with AVX-512, else a one-thread BLAS call (`AttentionProducts`).
import CMilanKernels
import Foundation
import RealModule

public struct AttentionShape: Sendable, Equatable {
  public var batch: Int, heads: Int, headDim: Int, queries: Int, keys: Int
  public var scale: Float

  public init(batch: Int, heads: Int, headDim: Int, queries: Int, keys: Int, scale: Float? = nil) {
    self.batch = batch
    self.heads = heads
    self.headDim = headDim
    self.queries = queries
    self.keys = keys
    self.scale = scale ?? 1 / Float(headDim).squareRoot()
  }

  /// Elements of the saved probabilities [B, H, Lq, Lk].
  public var probsCount: Int { batch * heads * queries * keys }
}

/// A strided token-major operand: element (b, t, h, j) lives at `base + (b·L + t)·ld + h·Dh + j`.
public struct AttentionOperand: @unchecked Sendable {
  public var base: UnsafeMutablePointer<Float>
  public var ld: Int
  public init(_ base: UnsafeMutablePointer<Float>, ld: Int) {
    self.base = base
    self.ld = ld
  }
}

extension Kernels {
  /// o = softmax(scale·q·kᵀ)·v per head. `probs` ([B, H, Lq, Lk]) receives P when non-nil (needed by the backward).
  public static func attentionForward(
    q: AttentionOperand, k: AttentionOperand, v: AttentionOperand, o: AttentionOperand,
    probs: UnsafeMutablePointer<Float>?, shape s: AttentionShape
  ) {
    _ = BLAS.configure
    let pairs = s.batch * s.heads
    let lq = s.queries, lk = s.keys, dh = s.headDim
    let parts = Parallel.parts(pairs, minChunk: 4, tasksPerThread: 4)
    let scratch = probs == nil ? Tensor(uninitialized: [parts, lq * lk]) : nil
    nonisolated(unsafe) let pbase = probs ?? scratch!.data
    let own = probs != nil
    let ahead = AttentionPrefetch(s, read: [(q, lq), (k, lk), (v, lk)], write: [(o, lq)],
                                  probs: own ? (UnsafePointer(pbase), true) : nil)
    let mul = AttentionProducts(s, parts: parts)
    Parallel.forEachChunkIndexed(pairs, minChunk: 4, tasksPerThread: 4) { part, r in
      for pair in r {
        let b = pair / s.heads, h = pair % s.heads
        ahead.next(pair: pair, in: r)
        let qp = q.base + b * lq * q.ld + h * dh
        let kp = k.base + b * lk * k.ld + h * dh
        let vp = v.base + b * lk * v.ld + h * dh
        let op = o.base + b * lq * o.ld + h * dh
        let p = own ? pbase + pair * lq * lk : pbase + part * lq * lk
        // S = Q·Kᵀ, P = softmax(scale·S), O = P·V
        mul.product(part, .none, .transpose, qp, q.ld, kp, k.ld, p, lk, m: lq, n: lk, k: dh, accumulate: false)
        milan_softmax_fwd(p, p, lq, lk, s.scale)
        mul.product(part, .none, .none, p, lk, vp, v.ld, op, o.ld, m: lq, n: dh, k: lk, accumulate: false)
      }
    }
  }

  /// dq += …, dk += …, dv += … (each optional) from do and the saved probabilities. With `overwrite` set for an
  /// operand its head blocks are written (beta 0), not accumulated: its buffer may hold anything (a fresh gradient).
  public static func attentionBackward(
    dOut: AttentionOperand, q: AttentionOperand, k: AttentionOperand, v: AttentionOperand,
    probs: UnsafePointer<Float>, dq: AttentionOperand?, dk: AttentionOperand?, dv: AttentionOperand?,
    shape s: AttentionShape, overwrite: (dq: Bool, dk: Bool, dv: Bool) = (false, false, false)
  ) {
    _ = BLAS.configure
    let pairs = s.batch * s.heads
    let lq = s.queries, lk = s.keys, dh = s.headDim
    let parts = Parallel.parts(pairs, minChunk: 4, tasksPerThread: 4)
    let scratch = Tensor(uninitialized: [parts, lq * lk])
    nonisolated(unsafe) let probs = probs, sp = scratch.data
    let written = [dq.map { ($0, lq) }, dk.map { ($0, lk) }, dv.map { ($0, lk) }].compactMap { $0 }
    let ahead = AttentionPrefetch(s, read: [(dOut, lq), (q, lq), (k, lk), (v, lk)], write: written,
                                  probs: (probs, false))
    let mul = AttentionProducts(s, parts: parts)
    Parallel.forEachChunkIndexed(pairs, minChunk: 4, tasksPerThread: 4) { part, r in
      let ds = sp + part * lq * lk
      for pair in r {
        let b = pair / s.heads, h = pair % s.heads
        ahead.next(pair: pair, in: r)
        let qp = q.base + b * lq * q.ld + h * dh
        let kp = k.base + b * lk * k.ld + h * dh
        let vp = v.base + b * lk * v.ld + h * dh
        let gop = dOut.base + b * lq * dOut.ld + h * dh
        let p = probs + pair * lq * lk
        if let dv {  // dV += Pᵀ·dO
          mul.product(part, .transpose, .none, p, lk, gop, dOut.ld, dv.base + b * lk * dv.ld + h * dh, dv.ld,
                      m: lk, n: dh, k: lq, accumulate: !overwrite.dv)
        }
        if dq == nil && dk == nil { continue }
        // dP = dO·Vᵀ, then dS = scale·P∘(dP − rowsum(dP∘P)) in place.
        mul.product(part, .none, .transpose, gop, dOut.ld, vp, v.ld, ds, lk, m: lq, n: lk, k: dh, accumulate: false)
        milan_softmax_bwd(p, ds, ds, lq, lk, s.scale, 0)
        if let dq {  // dQ += dS·K
          mul.product(part, .none, .none, ds, lk, kp, k.ld, dq.base + b * lq * dq.ld + h * dh, dq.ld,
                      m: lq, n: dh, k: lk, accumulate: !overwrite.dq)
        }
        if let dk {  // dK += dSᵀ·Q
          mul.product(part, .transpose, .none, ds, lk, qp, q.ld, dk.base + b * lk * dk.ld + h * dh, dk.ld,
                      m: lk, n: dh, k: lq, accumulate: !overwrite.dk)
        }
      }
    }
  }

  /// Whether the heads' products run on the packed register tile where the CPU has AVX-512 (`AttentionProducts`);
  /// `MILAN_PACKED_ATTENTION=0` keeps them on BLAS (A/B runs).
  nonisolated(unsafe) public static var packsAttention: Bool =
    ProcessInfo.processInfo.environment["MILAN_PACKED_ATTENTION"] != "0"

  /// Whether the attention kernels prefetch the next batch element's rows while the current one's heads run
  /// (`AttentionPrefetch`); `MILAN_ATTENTION_PREFETCH=0` turns it off (A/B runs).
  nonisolated(unsafe) public static var prefetchesAttention: Bool =
    ProcessInfo.processInfo.environment["MILAN_ATTENTION_PREFETCH"] != "0"

  /// Mean over heads of the probabilities: probs [B, H, Lq, Lk] → out [B, Lq, Lk].
  public static func attentionProbsHeadMean(_ probs: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>,
                                            shape s: AttentionShape) {
    let block = s.queries * s.keys
    let inv = 1 / Float(s.heads)
    nonisolated(unsafe) let probs = probs, out = out
    Parallel.forEachChunk(s.batch, minChunk: max(1, (1 << 16) / max(1, block * s.heads))) { r in
      for b in r {
        let o = out + b * block
        o.update(repeating: 0, count: block)
        for h in 0..<s.heads {
          let p = probs + (b * s.heads + h) * block
          for i in 0..<block { o[i] += p[i] }
        }
        for i in 0..<block { o[i] *= inv }
      }
    }
  }
}

/// The products of a head, C[m, n] (+)= op(A)·op(B), with the operands strided (a head's columns of a
/// token-major buffer, or a block of probabilities). Packed: the right factor is copied into 32-wide panels in a
/// per-part scratch (a head's K or V: at most ⌈Lk/32⌉·32·Dh floats) and the left one is read in place by
/// `milan_packed_product` (1.2–1.3× a one-thread OpenBLAS call on the paper's head shapes, bit-equal there).
/// Otherwise a one-thread BLAS call; `Naive.attention` is what both are tested against.
struct AttentionProducts: @unchecked Sendable {
  private let packed: Bool
  private let scratch: Tensor?
  private let stride: Int

  init(_ s: AttentionShape, parts: Int) {
    packed = Kernels.packsAttention && milan_packed_linear_avx512() != 0
    let rows = max(s.queries, s.keys), width = (s.headDim + 31) / 32 * 32
    stride = max((s.keys + 31) / 32 * 32 * s.headDim, rows * width)
    scratch = packed ? Tensor(uninitialized: [parts, stride]) : nil
  }

  /// C[m, n] (+)= op(A)·op(B), the orientations a head needs, as `BLAS.sgemmRaw` takes them: S = Q·Kᵀ and
  /// dP = dO·Vᵀ (B transposed: its rows packed as a weight's), O = P·V and dQ = dS·K (B's rows copied into panels),
  /// dV = Pᵀ·dO and dK = dSᵀ·Q (A transposed: read in place, 8 adjacent floats of one row per step).
  @inline(__always)
  func product(_ part: Int, _ ta: Transpose, _ tb: Transpose, _ a: UnsafePointer<Float>, _ lda: Int,
               _ b: UnsafePointer<Float>, _ ldb: Int, _ c: UnsafeMutablePointer<Float>, _ ldc: Int,
               m: Int, n: Int, k: Int, accumulate: Bool) {
    guard packed else {
      BLAS.sgemmRaw(ta, tb, m, n, k, alpha: 1, a, lda: lda, b, ldb: ldb, beta: accumulate ? 1 : 0, c, ldc: ldc)
      return
    }
    if milan_flop_counting() != 0 { milan_flop_counter_add(Int64(2 * m * n * k)) }
    let pk = scratch!.data + part * stride
    if tb == .transpose {
      milan_pack_weight_panels_ld(b, ldb, n, k, 0, (n + 31) / 32, pk)
    } else {
      milan_pack_rows_panels(b, ldb, k, n, 0, (n + 31) / 32, pk)
    }
    let (ldx, ldk) = ta == .transpose ? (1, lda) : (lda, 1)
    milan_packed_product(a, ldx, ldk, m, k, pk, n, c, ldc, accumulate ? 1 : 0)
  }
}

/// Software prefetch for the per-head loop: when a part reaches the first head of batch element b, the row blocks of
/// element b + 1 (every operand's rows, all heads' columns, and its probabilities) are requested into L2 while b's
/// heads run. Each head reads a few strided columns of those rows; without the hint every head waits on L3 or memory
/// for lines the hardware prefetcher does not predict (in a harness with the cached CPU step's decoder shape, B128
/// H4 Dh24 48 × 65, the forward's per-head time fell from 10.4 to 8.6 µs). Only for elements of at most 512 KiB,
/// where the next element's rows fit in L2 beside the current one's. Never changes a result.
struct AttentionPrefetch: @unchecked Sendable {
  private var blocks: [(UnsafeRawPointer, Int, Bool)] = []  // (start of element 0's rows, bytes per element, write)
  private let heads: Int, batch: Int

  init(_ s: AttentionShape, read: [(AttentionOperand, Int)], write: [(AttentionOperand, Int)],
       probs: (UnsafePointer<Float>, Bool)?) {
    heads = s.heads
    batch = s.batch
    guard Kernels.prefetchesAttention, s.batch > 1 else { return }
    func add(_ op: AttentionOperand, rows: Int, write: Bool) {
      let bytes = rows * op.ld * 4
      // Column blocks of one fused buffer (q | k | v, or k | v) share their rows: list those rows once.
      let start = UnsafeRawPointer(op.base)
      if blocks.contains(where: { $0.1 == bytes && abs(start - $0.0) < op.ld * 4 }) { return }
      blocks.append((start, bytes, write))
    }
    for (op, rows) in read { add(op, rows: rows, write: false) }
    for (op, rows) in write { add(op, rows: rows, write: true) }
    if let (p, w) = probs { blocks.append((UnsafeRawPointer(p), s.heads * s.queries * s.keys * 4, w)) }
    if blocks.reduce(0, { $0 + $1.1 }) > 512 << 10 { blocks = [] }
  }

  /// Called before each pair's work: at the first head of an element, prefetch the next element if it is in `r`.
  @inline(__always) func next(pair: Int, in r: Range<Int>) {
    if blocks.isEmpty || (pair % heads != 0 && pair != r.lowerBound) { return }
    let b = pair / heads + 1
    if b >= batch || b * heads >= r.upperBound { return }
    for (base, bytes, write) in blocks { milan_prefetch(base + b * bytes, bytes, write ? 1 : 0) }
  }
}

extension Naive {
  /// Token-major attention reference: q [B, Lq, H·Dh], k, v [B, Lk, H·Dh] → o [B, Lq, H·Dh]; also the probabilities
  /// [B, H, Lq, Lk].
  public static func attention<T: RealScalar>(_ q: [T], _ k: [T], _ v: [T], batch: Int, heads: Int, headDim: Int,
                                        queries lq: Int, keys lk: Int) -> (out: [T], probs: [T]) {
    let w = heads * headDim
    let scale = 1 / T.sqrt(T(headDim))
    var o = [T](repeating: 0, count: batch * lq * w)
    var probs = [T](repeating: 0, count: batch * heads * lq * lk)
    for b in 0..<batch {
      for h in 0..<heads {
        for i in 0..<lq {
          var s = [T](repeating: 0, count: lk)
          for j in 0..<lk {
            var a: T = 0
            for d in 0..<headDim { a += q[(b * lq + i) * w + h * headDim + d] * k[(b * lk + j) * w + h * headDim + d] }
            s[j] = a * scale
          }
          let p = softmax(s, rows: 1, n: lk)
          for j in 0..<lk { probs[((b * heads + h) * lq + i) * lk + j] = p[j] }
          for d in 0..<headDim {
            var a: T = 0
            for j in 0..<lk { a += p[j] * v[(b * lk + j) * w + h * headDim + d] }
            o[(b * lq + i) * w + h * headDim + d] = a
          }
        }
      }
    }
    return (o, probs)
  }

  /// The backward of `attention` from its probabilities: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = scale·P∘(dP − rowsum(dP∘P)),
  /// dQ = dS·K, dK = dSᵀ·Q, per head, in the same token-major layout.
  public static func attentionBackward<T: RealScalar>(
    _ dOut: [T], _ q: [T], _ k: [T], _ v: [T], probs: [T], batch: Int, heads: Int, headDim: Int,
    queries lq: Int, keys lk: Int
  ) -> (dq: [T], dk: [T], dv: [T]) {
    let w = heads * headDim
    let scale = 1 / T.sqrt(T(headDim))
    var dq = [T](repeating: 0, count: batch * lq * w), dk = [T](repeating: 0, count: batch * lk * w)
    var dv = [T](repeating: 0, count: batch * lk * w)
    for b in 0..<batch {
      for h in 0..<heads {
        func at(_ rows: Int, _ t: Int, _ d: Int) -> Int { (b * rows + t) * w + h * headDim + d }
        for i in 0..<lq {
          let p = (0..<lk).map { probs[((b * heads + h) * lq + i) * lk + $0] }
          let dp = (0..<lk).map { j in (0..<headDim).reduce(T(0)) { $0 + dOut[at(lq, i, $1)] * v[at(lk, j, $1)] } }
          let dot = (0..<lk).reduce(T(0)) { $0 + dp[$1] * p[$1] }
          for j in 0..<lk {
            let ds = scale * p[j] * (dp[j] - dot)
            for d in 0..<headDim {
              dv[at(lk, j, d)] += p[j] * dOut[at(lq, i, d)]
              dq[at(lq, i, d)] += ds * k[at(lk, j, d)]
              dk[at(lk, j, d)] += ds * q[at(lq, i, d)]
            }
          }
        }
      }
    }
    return (dq, dk, dv)
  }
}
