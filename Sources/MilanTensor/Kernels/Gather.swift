// Gather and scatter-add along the token axis: x [B, L, D], ids [B, K] → y [B, K, D] with y[b, k] = x[b, ids[b, k]].
// The backward of the gather is the scatter-add dx[b, ids[b, k]] += dy[b, k] (and vice versa).
import RealModule

extension Kernels {
  /// With `sharedSource` x is one sequence [1, L, D] that every batch element picks from.
  public static func gatherTokens(x: UnsafePointer<Float>, ids: [Int], y: UnsafeMutablePointer<Float>,
                                  batch: Int, tokens: Int, picked: Int, dim: Int, sharedSource: Bool = false) {
    precondition(ids.count == batch * picked, "gatherTokens: ids has \(ids.count) entries, expected \(batch * picked)")
    nonisolated(unsafe) let x = x, y = y
    ids.withUnsafeBufferPointer { idp in
      nonisolated(unsafe) let idp = idp
      Parallel.forEachChunk(batch, minChunk: max(1, (1 << 14) / max(1, picked * dim))) { r in
        for b in r {
          for k in 0..<picked {
            let t = idp[b * picked + k]
            precondition(t >= 0 && t < tokens, "gatherTokens: index \(t) out of range 0..<\(tokens)")
            (y + (b * picked + k) * dim).update(from: x + ((sharedSource ? 0 : b * tokens) + t) * dim, count: dim)
          }
        }
      }
    }
  }

  /// out[b, ids[b, k]] += src[b, k]; out: [B, L, D], src: [B, K, D]. Repeated ids accumulate.
  public static func scatterAddTokens(src: UnsafePointer<Float>, ids: [Int], out: UnsafeMutablePointer<Float>,
                                      batch: Int, tokens: Int, picked: Int, dim: Int) {
    precondition(ids.count == batch * picked, "scatterAddTokens: ids has \(ids.count) entries")
    nonisolated(unsafe) let src = src, out = out
    ids.withUnsafeBufferPointer { idp in
      nonisolated(unsafe) let idp = idp
      // Split over batches: rows of different batches never collide.
      Parallel.forEachChunk(batch, minChunk: max(1, (1 << 14) / max(1, picked * dim))) { r in
        for b in r {
          for k in 0..<picked {
            let t = idp[b * picked + k]
            precondition(t >= 0 && t < tokens, "scatterAddTokens: index \(t) out of range 0..<\(tokens)")
            let o = out + (b * tokens + t) * dim, s = src + (b * picked + k) * dim
            for j in 0..<dim { o[j] += s[j] }
          }
        }
      }
    }
  }
}

extension Naive {
  public static func gatherTokens<T: RealScalar>(_ x: [T], ids: [Int], batch: Int, tokens: Int, picked: Int, dim: Int) -> [T] {
    var y = [T](repeating: 0, count: batch * picked * dim)
    for b in 0..<batch {
      for k in 0..<picked {
        for j in 0..<dim { y[(b * picked + k) * dim + j] = x[(b * tokens + ids[b * picked + k]) * dim + j] }
      }
    }
    return y
  }
}
