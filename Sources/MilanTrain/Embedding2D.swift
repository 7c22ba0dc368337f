// 2-D embeddings of feature sets for the report (the paper's Fig. 2): exact t-SNE (van der Maaten & Hinton 2008:
// Gaussian affinities calibrated to a perplexity by bisection, symmetrised; Student-t affinities in 2-D; gradient
// descent with momentum, per-coordinate gains and early exaggeration; sklearn's defaults: perplexity 30, early
// exaggeration 12 for 250 iterations, learning rate max(n / 48, 50), PCA initialisation scaled to std 1e-4), and
// PCA, which t-SNE starts from and which stands in when there are too few points for the perplexity. O(n²) per
// iteration: meant for a few hundred to a few thousand points. Deterministic (no random draws).
import Foundation
import MilanTensor

public enum PCA {
  /// The rows of x [n, d] projected on their first two principal axes: power iteration on the smaller of the
  /// covariance (d × d) and the Gram matrix of the centred rows (n × n), deflated; each coordinate signed so its
  /// largest value is positive. [n, 2], centred.
  public static func project2D(_ x: Tensor) -> [[Double]] {
    let n = x.shape[0], d = x.shape[1]
    var mean = [Double](repeating: 0, count: d)
    for i in 0..<n { for j in 0..<d { mean[j] += Double(x.data[i * d + j]) } }
    for j in 0..<d { mean[j] /= Double(max(n, 1)) }
    var c = [Double](repeating: 0, count: n * d)
    for i in 0..<n { for j in 0..<d { c[i * d + j] = Double(x.data[i * d + j]) - mean[j] } }
    // The Gram matrix G = C Cᵀ shares its non-zero eigenvalues with the covariance; its eigenvector u of eigenvalue
    // λ gives the scores √λ · u directly.
    let useGram = n <= d, m = useGram ? n : d
    var g = [Double](repeating: 0, count: m * m)
    for a in 0..<m {
      for b in a..<m {
        var s = 0.0
        if useGram { for k in 0..<d { s += c[a * d + k] * c[b * d + k] } } else { for i in 0..<n { s += c[i * d + a] * c[i * d + b] } }
        g[a * m + b] = s
        g[b * m + a] = s
      }
    }
    var vectors: [[Double]] = [], values: [Double] = []
    for k in 0..<min(2, m) {
      var v = (0..<m).map { Double(($0 * 7919 + k * 104_729) % 97 + 1) }
      var lambda = 0.0
      for _ in 0..<300 {
        var w = [Double](repeating: 0, count: m)
        for a in 0..<m { var s = 0.0; for b in 0..<m { s += g[a * m + b] * v[b] }; w[a] = s }
        for u in vectors {
          let p = zip(w, u).reduce(0) { $0 + $1.0 * $1.1 }
          for a in 0..<m { w[a] -= p * u[a] }
        }
        let norm = w.reduce(0) { $0 + $1 * $1 }.squareRoot()
        guard norm > 0 else { lambda = 0; break }
        let next = w.map { $0 / norm }
        let change = zip(next, v).reduce(0) { $0 + abs($1.0 - $1.1) }
        v = next
        lambda = norm
        if change < 1e-10 { break }
      }
      vectors.append(v)
      values.append(lambda)
    }
    var scores = [[Double]](repeating: [0, 0], count: n)
    for (k, v) in vectors.enumerated() {
      var col: [Double]
      if useGram {
        col = v.map { $0 * values[k].squareRoot() }
      } else {
        col = (0..<n).map { i in (0..<d).reduce(0) { $0 + c[i * d + $1] * v[$1] } }
      }
      if let top = col.indices.max(by: { abs(col[$0]) < abs(col[$1]) }), col[top] < 0 { col = col.map { -$0 } }
      for i in 0..<n { scores[i][k] = col[i] }
    }
    return scores
  }
}

public enum TSNE {
  public struct Options: Sendable {
    public var perplexity = 30.0
    public var iterations = 1000
    public var earlyExaggeration = 12.0
    public var exaggerationIterations = 250
    public init() {}
  }

  /// x [n, d] → n points in 2-D; PCA when n ≤ 3 × perplexity (too few neighbours for the perplexity).
  public static func embed(_ x: Tensor, options o: Options = Options()) -> (points: [[Double]], method: String) {
    let n = x.shape[0], d = x.shape[1]
    let pca = PCA.project2D(x)
    guard Double(n) > 3 * o.perplexity else { return (pca, "PCA (too few points for t-SNE)") }
    // Squared distances.
    var dist = [Double](repeating: 0, count: n * n)
    for i in 0..<n {
      for j in (i + 1)..<n {
        var s = 0.0
        for k in 0..<d {
          let t = Double(x.data[i * d + k]) - Double(x.data[j * d + k])
          s += t * t
        }
        dist[i * n + j] = s
        dist[j * n + i] = s
      }
    }
    // Conditional affinities at the target perplexity (bisection on the precision beta).
    var p = [Double](repeating: 0, count: n * n)
    let target = log(o.perplexity)
    for i in 0..<n {
      var lo = 0.0, hi = Double.infinity, beta = 1.0
      var row = [Double](repeating: 0, count: n)
      for _ in 0..<100 {
        var sum = 0.0, weighted = 0.0
        for j in 0..<n where j != i {
          row[j] = exp(-dist[i * n + j] * beta)
          sum += row[j]
          weighted += dist[i * n + j] * row[j]
        }
        guard sum > 0 else { beta /= 2; continue }
        let entropy = log(sum) + beta * weighted / sum
        let diff = entropy - target
        if abs(diff) < 1e-5 { break }
        if diff > 0 { lo = beta; beta = hi.isInfinite ? beta * 2 : (beta + hi) / 2 }
        else { hi = beta; beta = (beta + lo) / 2 }
      }
      let sum = row.enumerated().reduce(0) { $1.offset == i ? $0 : $0 + $1.element }
      for j in 0..<n where j != i { p[i * n + j] = row[j] / max(sum, 1e-300) }
    }
    for i in 0..<n {
      for j in (i + 1)..<n {
        let s = max((p[i * n + j] + p[j * n + i]) / (2 * Double(n)), 1e-12)
        p[i * n + j] = s
        p[j * n + i] = s
      }
    }
    // PCA start scaled to std 1e-4 on the first axis.
    let std0 = (pca.reduce(0) { $0 + $1[0] * $1[0] } / Double(n)).squareRoot()
    var y = pca.flatMap { $0.map { $0 / max(std0, 1e-12) * 1e-4 } }
    var update = [Double](repeating: 0, count: 2 * n), gains = [Double](repeating: 1, count: 2 * n)
    let lr = max(Double(n) / o.earlyExaggeration / 4, 50)
    var q = [Double](repeating: 0, count: n * n)
    for it in 0..<o.iterations {
      let exaggeration = it < o.exaggerationIterations ? o.earlyExaggeration : 1
      let momentum = it < o.exaggerationIterations ? 0.5 : 0.8
      var qsum = 0.0
      for i in 0..<n {
        for j in (i + 1)..<n {
          let dx = y[2 * i] - y[2 * j], dy = y[2 * i + 1] - y[2 * j + 1]
          let w = 1 / (1 + dx * dx + dy * dy)
          q[i * n + j] = w
          q[j * n + i] = w
          qsum += 2 * w
        }
      }
      for i in 0..<n {
        var gx = 0.0, gy = 0.0
        for j in 0..<n where j != i {
          let w = q[i * n + j]
          let m = (exaggeration * p[i * n + j] - w / qsum) * w
          gx += m * (y[2 * i] - y[2 * j])
          gy += m * (y[2 * i + 1] - y[2 * j + 1])
        }
        for (k, g) in [(2 * i, 4 * gx), (2 * i + 1, 4 * gy)] {
          gains[k] = (g > 0) != (update[k] > 0) ? gains[k] + 0.2 : max(gains[k] * 0.8, 0.01)
          update[k] = momentum * update[k] - lr * gains[k] * g
        }
      }
      for k in 0..<(2 * n) { y[k] += update[k] }
    }
    guard y.allSatisfy({ $0.isFinite }) else { return (pca, "PCA (t-SNE did not converge)") }
    return ((0..<n).map { [y[2 * $0], y[2 * $0 + 1]] }, "t-SNE (perplexity \(Int(o.perplexity)))")
  }
}
