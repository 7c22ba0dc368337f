// Token-axis operations: gather / scatter-add (masking and unshuffling), concatenation and slicing along axis 1,
// and the patch embedding.
import MilanTensor

/// y[b, k] = x[b, ids[b, k]]; x: [B, L, D], ids: [B, K] → [B, K, D]. An x of batch 1 ([1, L, D], a position table)
/// is shared by every batch element; its gradient is summed over the batch.
public func gatherTokens(_ x: Variable, ids: IndexTensor) -> Variable {
  precondition(x.shape.count == 3 && ids.shape.count == 2 && (ids.shape[0] == x.shape[0] || x.shape[0] == 1),
               "gatherTokens: x \(x.shape), ids \(ids.shape)")
  let b = ids.shape[0], l = x.shape[1], d = x.shape[2], k = ids.shape[1]
  let shared = x.shape[0] == 1 && b > 1
  let y = Tensor(uninitialized: [b, k, d])
  Kernels.gatherTokens(x: x.value.data, ids: ids.values, y: y.data, batch: b, tokens: l, picked: k, dim: d,
                       sharedSource: shared)
  return Autograd.result(y, [x]) { g in
    if shared {  // one image at a time: the batch elements' ids collide in the shared source
      for i in 0..<b {
        Kernels.scatterAddTokens(src: g.data + i * k * d, ids: Array(ids.values[(i * k)..<((i + 1) * k)]),
                                 out: x.gradBuffer().data, batch: 1, tokens: l, picked: k, dim: d)
      }
    } else {
      Kernels.scatterAddTokens(src: g.data, ids: ids.values, out: x.gradBuffer().data, batch: b, tokens: l, picked: k,
                               dim: d)
    }
  }
}

/// out[b, ids[b, k]] += src[b, k] into zeros [B, tokens, D].
public func scatterAddTokens(_ src: Variable, ids: IndexTensor, tokens: Int) -> Variable {
  precondition(src.shape.count == 3 && ids.shape == [src.shape[0], src.shape[1]],
               "scatterAddTokens: src \(src.shape), ids \(ids.shape)")
  let b = src.shape[0], k = src.shape[1], d = src.shape[2]
  let y = Tensor(zeros: [b, tokens, d])
  Kernels.scatterAddTokens(src: src.value.data, ids: ids.values, out: y.data, batch: b, tokens: tokens, picked: k,
                           dim: d)
  return Autograd.result(y, [src]) { g in
    let tmp = Tensor(uninitialized: [b, k, d])
    Kernels.gatherTokens(x: g.data, ids: ids.values, y: tmp.data, batch: b, tokens: tokens, picked: k, dim: d)
    src.accumulateGrad(tmp)
  }
}

/// Concatenates [B, Lᵢ, D] tensors along the token axis. A part with batch 1 is broadcast over the batch (a class
/// token [1, 1, D]); its gradient is summed over the batch.
public func concatTokens(_ parts: [Variable]) -> Variable {
  precondition(!parts.isEmpty && parts.allSatisfy { $0.shape.count == 3 }, "concatTokens: rank-3 inputs required")
  let batch = parts.map { $0.shape[0] }.max()!, d = parts[0].shape[2]
  for p in parts {
    precondition(p.shape[2] == d && (p.shape[0] == batch || p.shape[0] == 1),
                 "concatTokens: \(p.shape) does not fit batch \(batch), width \(d)")
  }
  let total = parts.reduce(0) { $0 + $1.shape[1] }
  let y = Tensor(uninitialized: [batch, total, d])
  var start = 0
  var starts: [Int] = []
  for p in parts {
    starts.append(start)
    let l = p.shape[1]
    for b in 0..<batch {
      let src = p.value.data + (p.shape[0] == 1 ? 0 : b * l * d)
      (y.data + (b * total + start) * d).update(from: src, count: l * d)
    }
    start += l
  }
  return Autograd.result(y, parts) { g in
    for (p, s) in zip(parts, starts) where p.requiresGrad {
      let l = p.shape[1], dst = p.gradBuffer()
      for b in 0..<batch {
        let o = dst.data + (p.shape[0] == 1 ? 0 : b * l * d)
        let src = g.data + (b * total + s) * d
        for i in 0..<(l * d) { o[i] += src[i] }
      }
    }
  }
}

/// Tokens [range] of x: [B, L, D] → [B, range.count, D] (copy).
public func sliceTokens(_ x: Variable, _ range: Range<Int>) -> Variable {
  precondition(x.shape.count == 3 && range.lowerBound >= 0 && range.upperBound <= x.shape[1],
               "sliceTokens: \(range) of \(x.shape)")
  let b = x.shape[0], l = x.shape[1], d = x.shape[2], n = range.count
  let y = Tensor(uninitialized: [b, n, d])
  for i in 0..<b { (y.data + i * n * d).update(from: x.value.data + (i * l + range.lowerBound) * d, count: n * d) }
  return Autograd.result(y, [x]) { g in
    let dst = x.gradBuffer()
    for i in 0..<b {
      let o = dst.data + (i * l + range.lowerBound) * d, s = g.data + i * n * d
      for j in 0..<(n * d) { o[j] += s[j] }
    }
  }
}

/// Conv2d with stride = kernel = patch, flattened: img [B, C, H, W], weight [E, C, P, P], bias [E] → [B, N, E].
/// With `keep` ([B, K] patch indices) only those patches are embedded: → [B, K, E], the same rows as
/// `gatherTokens(patchEmbed(img, …), ids: keep)` without the work of the other patches.
public func patchEmbed(_ img: Variable, weight: Variable, bias: Variable?, keep: IndexTensor? = nil) -> Variable {
  precondition(img.shape.count == 4 && weight.shape.count == 4 && weight.shape[1] == img.shape[1]
               && weight.shape[2] == weight.shape[3], "patchEmbed: img \(img.shape), weight \(weight.shape)")
  let e = weight.shape[0]
  let g = PatchGeometry(batch: img.shape[0], channels: img.shape[1], height: img.shape[2], width: img.shape[3],
                        patch: weight.shape[2])
  precondition(keep.map { $0.shape.count == 2 && $0.shape[0] == g.batch } ?? true,
               "patchEmbed: keep \(keep?.shape ?? []) for \(g.batch) images")
  let ids = keep?.values, perImage = keep?.shape[1] ?? g.patchesPerImage
  let cols = Tensor(uninitialized: [g.batch * perImage, g.patchDim])
  let y = Tensor(uninitialized: [g.batch, perImage, e])
  Kernels.patchEmbedForward(img: img.value.data, weight: weight.value.data, bias: bias?.value.data, cols: cols.data,
                            y: y.data, geometry: g, embedDim: e, ids: ids)
  let inputs = bias.map { [img, weight, $0] } ?? [img, weight]
  return Autograd.result(y, inputs) { gy in
    Kernels.patchEmbedBackward(dy: gy.data, cols: cols.data, weight: weight.value.data,
                               dImg: img.requiresGrad ? img.gradBuffer().data : nil,
                               dWeight: weight.requiresGrad ? weight.gradBuffer().data : nil,
                               dBias: (bias?.requiresGrad ?? false) ? bias!.gradBuffer().data : nil,
                               geometry: g, embedDim: e, ids: ids)
  }
}

/// Repeats a batch-1 tensor [1, ...] into [B, ...]; the gradient is summed over the batch.
public func expandBatch(_ x: Variable, to batch: Int) -> Variable {
  precondition(x.shape.first == 1, "expandBatch: expected a leading 1, got \(x.shape)")
  let inner = x.count
  let y = Tensor(uninitialized: [batch] + Array(x.shape.dropFirst()))
  for b in 0..<batch { (y.data + b * inner).update(from: x.value.data, count: inner) }
  return Autograd.result(y, [x]) { g in
    let d = x.gradBuffer()
    for b in 0..<batch { Kernels.axpy(1, x: g.data + b * inner, y: d.data, count: inner) }
  }
}

/// MILAN's full token sequence in one step: [cls, unshuffle(visible ++ masked)] —
/// out[b, 0] = cls[b] (cls may have batch 1), out[b, 1 + i] = (visible ++ masked)[b, idsRestore[b, i]].
/// The same as concatTokens([cls, gatherTokens(concatTokens([visible, masked]), ids: idsRestore)]) without the two
/// intermediate sequences. cls [B|1, 1, D], visible [B, K, D], masked [B, M, D], idsRestore [B, K + M] → [B, 1+K+M, D].
public func assembleTokens(cls: Variable, visible: Variable, masked: Variable, idsRestore: IndexTensor) -> Variable {
  let b = visible.shape[0], k = visible.shape[1], m = masked.shape[1], d = visible.shape[2], l = k + m
  precondition(cls.shape.count == 3 && cls.shape[1] == 1 && cls.shape[2] == d && (cls.shape[0] == b || cls.shape[0] == 1)
               && masked.shape == [b, m, d] && idsRestore.shape == [b, l],
               "assembleTokens: cls \(cls.shape), visible \(visible.shape), masked \(masked.shape), ids \(idsRestore.shape)")
  let ids = idsRestore.values
  var seen = [Bool](repeating: false, count: l)
  for n in 0..<b {  // each image's restore order is a permutation: every visible and masked row is used once
    if n > 0 { for j in 0..<l { seen[j] = false } }
    for i in 0..<l {
      let j = ids[n * l + i]
      precondition(j >= 0 && j < l && !seen[j], "assembleTokens: idsRestore row \(n) is not a permutation of 0..<\(l)")
      seen[j] = true
    }
  }
  let y = Tensor(uninitialized: [b, 1 + l, d])
  let clsStride = cls.shape[0] == 1 ? 0 : d
  nonisolated(unsafe) let yp = y.data, cp = cls.value.data, vp = visible.value.data, mp = masked.value.data
  Parallel.forEachChunk(b) { images in  // row copies, images split across the cores
    for n in images {
      (yp + n * (1 + l) * d).update(from: cp + n * clsStride, count: d)
      for i in 0..<l {
        let j = ids[n * l + i]
        let src = j < k ? vp + (n * k + j) * d : mp + (n * m + j - k) * d
        (yp + (n * (1 + l) + 1 + i) * d).update(from: src, count: d)
      }
    }
  }
  return Autograd.result(y, [cls, visible, masked]) { g in
    // Each row of visible and masked receives exactly one row of g: a fresh gradient is written (no zero fill),
    // an existing one added to. The class token's rows go last, one thread (a shared [1, 1, d] token sums b rows).
    let gv = visible.requiresGrad ? visible.gradForWrite() : nil
    let gm = masked.requiresGrad ? masked.gradForWrite() : nil
    nonisolated(unsafe) let gp = g.data, gvp = gv?.tensor.data, gmp = gm?.tensor.data
    let addV = gv?.accumulate ?? false, addM = gm?.accumulate ?? false
    Parallel.forEachChunk(b) { images in
      for n in images {
        for i in 0..<l {
          let j = ids[n * l + i]
          let row = gp + (n * (1 + l) + 1 + i) * d
          let dst = j < k ? gvp.map { $0 + (n * k + j) * d } : gmp.map { $0 + (n * m + j - k) * d }
          guard let dst else { continue }
          if j < k ? addV : addM {
            Kernels.axpy(1, x: row, y: dst, count: d)
          } else {
            dst.update(from: row, count: d)
          }
        }
      }
    }
    if cls.requiresGrad {
      let gc = cls.gradBuffer().data
      for n in 0..<b { Kernels.axpy(1, x: gp + n * (1 + l) * d, y: gc + n * clsStride, count: d) }
    }
  }
}
