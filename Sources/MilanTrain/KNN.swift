// Weighted k-NN evaluation of frozen features (DINO's protocol, as MILAN users run it): features L2-normalised,
// cosine similarity of every query to every bank sample (one GEMM), the k most similar vote with weight
// exp(similarity / T), top-1 accuracy.
import Foundation
import MilanAutograd
import MilanData
import MilanModels
import MilanTensor

public enum KNN {
  /// Top-1 accuracy of weighted k-NN. bank [N, D] with labels, queries [Q, D] with labels.
  public static func accuracy(bank: Tensor, bankLabels: [Int], queries: Tensor, queryLabels: [Int], classes: Int,
                              k: Int = 20, temperature: Float = 0.07) -> Double {
    let b = normalizedRows(bank), q = normalizedRows(queries)
    let n = b.shape[0], m = q.shape[0], d = b.shape[1]
    let sim = Tensor(uninitialized: [m, n])
    BLAS.sgemm(.none, .transpose, m, n, d, q.data, lda: d, b.data, ldb: d, sim.data, ldc: n)
    var correct = 0
    let kk = min(k, n)
    for i in 0..<m {
      let row = sim.data + i * n
      // Partial selection of the k largest similarities.
      var top: [(Float, Int)] = []
      top.reserveCapacity(kk + 1)
      for j in 0..<n {
        let s = row[j]
        if top.count < kk {
          top.append((s, j))
          if top.count == kk { top.sort { $0.0 > $1.0 } }
        } else if s > top[kk - 1].0 {
          var pos = kk - 1
          while pos > 0 && top[pos - 1].0 < s { pos -= 1 }
          top.insert((s, j), at: pos)
          top.removeLast()
        }
      }
      var votes = [Double](repeating: 0, count: classes)
      for (s, j) in top { votes[bankLabels[j]] += Double(Float.exp(s / temperature)) }
      if votes.indices.max(by: { votes[$0] < votes[$1] }) == queryLabels[i] { correct += 1 }
    }
    return Double(correct) / Double(max(m, 1))
  }

  static func normalizedRows(_ x: Tensor) -> Tensor {
    let d = x.lastDim, rows = x.rows
    let out = Tensor(uninitialized: x.shape)
    for r in 0..<rows {
      var s: Float = 0
      for j in 0..<d { s += x.data[r * d + j] * x.data[r * d + j] }
      let inv = 1 / max(s.squareRoot(), 1e-12)
      for j in 0..<d { out.data[r * d + j] = x.data[r * d + j] * inv }
    }
    return out
  }
}
