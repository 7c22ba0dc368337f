// Multi-head scaled-dot-product attention whose query sequence may differ from its key/value sequence (the MILAN
// prompting decoder queries with the mask tokens only).
//
// Layout is token-major, the way the projections produce it: q: [B, Lq, *] where head h occupies columns
// h·Dh ..< (h+1)·Dh of each row, rows `ldq` floats apart (so q, k and v can be column blocks of one fused qkv
// buffer with ld = 3·H·Dh). Output o: [B, Lq, *] in the same layout. No permute copies are made.
// Per (batch, head): S = Q·Kᵀ, P = softmax(scale·S), O = P·V, each GEMM a one-thread BLAS call; (batch, head)
// pairs are split across cores. P is kept for the backward when `probs` is given.
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
    Parallel.forEachChunkIndexed(pairs, minChunk: 4, tasksPerThread: 4) { part, r in
      for pair in r {
        let b = pair / s.heads, h = pair % s.heads
        ahead.next(pair: pair, in: r)
        let qp = q.base + b * lq * q.ld + h * dh
        let kp = k.base + b * lk * k.ld + h * dh
        let vp = v.base + b * lk * v.ld + h * dh
        let op = o.base + b * lq * o.ld + h * dh
        let p = own ? pbase + pair * lq * lk : pbase + part * lq * lk
        BLAS.sgemmRaw(.none, .transpose, lq, lk, dh, alpha: 1, qp, lda: q.ld, kp, ldb: k.ld, beta: 0, p, ldc: lk)
        milan_softmax_fwd(p, p, lq, lk, s.scale)
        BLAS.sgemmRaw(.none, .none, lq, dh, lk, alpha: 1, p, lda: lk, vp, ldb: v.ld, beta: 0, op, ldc: o.ld)
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
    let betaQ: Float = overwrite.dq ? 0 : 1, betaK: Float = overwrite.dk ? 0 : 1, betaV: Float = overwrite.dv ? 0 : 1
    _ = BLAS.configure
    let pairs = s.batch * s.heads
    let lq = s.queries, lk = s.keys, dh = s.headDim
    let parts = Parallel.parts(pairs, minChunk: 4, tasksPerThread: 4)
    let scratch = Tensor(uninitialized: [parts, lq * lk])
    nonisolated(unsafe) let probs = probs, sp = scratch.data
    let written = [dq.map { ($0, lq) }, dk.map { ($0, lk) }, dv.map { ($0, lk) }].compactMap { $0 }
    let ahead = AttentionPrefetch(s, read: [(dOut, lq), (q, lq), (k, lk), (v, lk)], write: written,
                                  probs: (probs, false))
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
          BLAS.sgemmRaw(.transpose, .none, lk, dh, lq, alpha: 1, p, lda: lk, gop, ldb: dOut.ld, beta: betaV,
                        dv.base + b * lk * dv.ld + h * dh, ldc: dv.ld)
        }
        if dq == nil && dk == nil { continue }
        // dP = dO·Vᵀ, then dS = scale·P∘(dP − rowsum(dP∘P)) in place.
        BLAS.sgemmRaw(.none, .transpose, lq, lk, dh, alpha: 1, gop, lda: dOut.ld, vp, ldb: v.ld, beta: 0, ds, ldc: lk)
        milan_softmax_bwd(p, ds, ds, lq, lk, s.scale, 0)
        if let dq {  // dQ += dS·K
          BLAS.sgemmRaw(.none, .none, lq, dh, lk, alpha: 1, ds, lda: lk, kp, ldb: k.ld, beta: betaQ,
                        dq.base + b * lq * dq.ld + h * dh, ldc: dq.ld)
        }
        if let dk {  // dK += dSᵀ·Q
          BLAS.sgemmRaw(.transpose, .none, lk, dh, lq, alpha: 1, ds, lda: lk, qp, ldb: q.ld, beta: betaK,
                        dk.base + b * lk * dk.ld + h * dh, ldc: dk.ld)
        }
      }
    }
  }

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
}
