// Mirrors zejiangh/MILAN models_milan.py: random_masking (MAE) and attention_masking (semantic-aware sampling).
// Randomness is an input: the caller passes the noise, so tests can feed the reference's draws.
//   random:          ids_shuffle = argsort(noise) ascending, noise ~ U(0, 1)
//   semantic-aware:  ids_shuffle = argsort_desc(p / E), E ~ Exp(1) — exactly torch.multinomial(p, L,
//                    replacement=False): sequential sampling without replacement proportional to p
// then ids_restore = argsort(ids_shuffle), ids_keep = ids_shuffle[:, :len_keep], ids_dump = the rest,
// mask [B, L] = 0 for kept and 1 for removed patches, in spatial order; len_keep = int(L·(1 − ratio)).
import MilanTensor

public struct MaskingResult: Sendable, Equatable {
  public var idsShuffle: IndexTensor  // [B, L]
  public var idsRestore: IndexTensor  // [B, L]
  public var idsKeep: IndexTensor     // [B, len_keep], in draw order
  public var idsDump: IndexTensor     // [B, L − len_keep]
  public var mask: [Float]            // [B, L], 1 = removed
  public var lenKeep: Int
}

/// Importance that cannot be sampled from (it comes from the teacher, so its weights are the usual cause).
public enum MaskingError: Error, CustomStringConvertible, Equatable {
  case badImportance(row: Int, patch: Int, value: Float)
  case zeroImportance(row: Int)

  public var description: String {
    switch self {
    case .badImportance(let r, let j, let v):
      return "semantic-aware masking: the teacher's class attention is \(v) for patch \(j) of image \(r) of the batch "
        + "(it must be finite and ≥ 0; are the teacher's weights damaged?)"
    case .zeroImportance(let r):
      return "semantic-aware masking: the teacher's class attention of image \(r) of the batch sums to 0"
    }
  }
}

public enum Masking {
  public static func lenKeep(patches l: Int, maskRatio: Double) -> Int { Int(Double(l) * (1 - maskRatio)) }

  /// Exp(1) draws [B, L] for semantic-aware sampling (the draws torch.multinomial makes), row i from the generator
  /// of (key, firstSample + i): the same for a sample wherever its batch is split.
  public static func expNoise(rows: Int, patches: Int, key: UInt64, firstSample: Int) -> Tensor {
    keyedRows(rows, patches, key: key, firstSample: firstSample) { g in -Float.log(max(1 - g.nextUniform(), 1e-12)) }
  }

  /// U(0, 1) draws [B, L] for random masking, keyed per sample as `expNoise(rows:…)`.
  public static func uniformNoise(rows: Int, patches: Int, key: UInt64, firstSample: Int) -> Tensor {
    keyedRows(rows, patches, key: key, firstSample: firstSample) { g in g.nextUniform() }
  }

  static func keyedRows(_ rows: Int, _ cols: Int, key: UInt64, firstSample: Int,
                        _ draw: (inout SplitMix64) -> Float) -> Tensor {
    let t = Tensor(uninitialized: [rows, cols])
    for r in 0..<rows {
      var g = SplitMix64.forSample(key: key, sample: firstSample + r)
      for c in 0..<cols { t.data[r * cols + c] = draw(&g) }
    }
    return t
  }

  /// MAE random masking from uniform noise [B, L].
  public static func random(noise: Tensor, maskRatio: Double) -> MaskingResult {
    precondition(noise.rank == 2, "random masking: noise must be [B, L], got \(noise.shape)")
    let b = noise.shape[0], l = noise.shape[1]
    var order: [Int] = []
    order.reserveCapacity(b * l)
    for i in 0..<b {
      let row = noise.data + i * l
      order += (0..<l).sorted { row[$0] < row[$1] || (row[$0] == row[$1] && $0 < $1) }
    }
    return finish(order, batch: b, patches: l, maskRatio: maskRatio)
  }

  /// Semantic-aware sampling: the whole permutation drawn without replacement in proportion to `importance`
  /// (the teacher's class attention, [B, L], non-negative) using Exp(1) draws `expNoise` [B, L].
  /// Throws `MaskingError` when a row of `importance` has a negative or non-finite value or sums to 0: it comes from
  /// the teacher's weights, so a damaged teacher file must end in a message, not a trap.
  public static func semanticAware(importance: Tensor, expNoise: Tensor, maskRatio: Double) throws -> MaskingResult {
    precondition(importance.rank == 2 && importance.shape == expNoise.shape,
                 "semantic-aware masking: importance \(importance.shape) and noise \(expNoise.shape) must be [B, L]")
    let b = importance.shape[0], l = importance.shape[1]
    var order: [Int] = []
    order.reserveCapacity(b * l)
    for i in 0..<b {
      let p = importance.data + i * l, e = expNoise.data + i * l
      var sum: Float = 0
      for j in 0..<l {
        guard p[j] >= 0 && p[j].isFinite else { throw MaskingError.badImportance(row: i, patch: j, value: p[j]) }
        sum += p[j]
      }
      guard sum > 0 else { throw MaskingError.zeroImportance(row: i) }
      let keys = (0..<l).map { p[$0] / e[$0] }
      order += (0..<l).sorted { keys[$0] > keys[$1] || (keys[$0] == keys[$1] && $0 < $1) }
    }
    return finish(order, batch: b, patches: l, maskRatio: maskRatio)
  }

  static func finish(_ shuffle: [Int], batch b: Int, patches l: Int, maskRatio: Double) -> MaskingResult {
    let keep = lenKeep(patches: l, maskRatio: maskRatio)
    precondition(keep >= 1 && keep <= l, "mask ratio \(maskRatio) keeps \(keep) of \(l) patches")
    var restore = [Int](repeating: 0, count: b * l)
    var keepIds: [Int] = [], dumpIds: [Int] = []
    var mask = [Float](repeating: 1, count: b * l)
    for i in 0..<b {
      for r in 0..<l {
        let patch = shuffle[i * l + r]
        restore[i * l + patch] = r
        if r < keep {
          keepIds.append(patch)
          mask[i * l + patch] = 0
        } else {
          dumpIds.append(patch)
        }
      }
    }
    return MaskingResult(idsShuffle: IndexTensor(shape: [b, l], values: shuffle),
                         idsRestore: IndexTensor(shape: [b, l], values: restore),
                         idsKeep: IndexTensor(shape: [b, keep], values: keepIds),
                         idsDump: IndexTensor(shape: [b, l - keep], values: dumpIds), mask: mask, lenKeep: keep)
  }

  /// Exp(1) draws for semantic-aware masking.
  public static func expNoise(_ shape: [Int], rng: inout SplitMix64) -> Tensor {
    let t = Tensor(uninitialized: shape)
    for i in 0..<t.count { t.data[i] = -Float.log(max(1 - rng.nextUniform(), 1e-12)) }
    return t
  }
}

import RealModule
