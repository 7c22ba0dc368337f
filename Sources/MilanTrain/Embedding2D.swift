// 2-D embeddings of feature sets for the report (the paper's Fig. 2): exact t-SNE (van der Maaten & Hinton 2008:
// Gaussian affinities calibrated to a perplexity by bisection, symmetrised; Student-t affinities in 2-D; gradient
// descent with momentum, per-coordinate gains and early exaggeration; sklearn's defaults: perplexity 30, early
// exaggeration 12 for 250 iterations, learning rate max(n / 48, 50), PCA initialisation scaled to std 1e-4), and
// PCA, which t-SNE starts from and which stands in when there are too few points for the perplexity. O(n²) per
// iteration: meant for a few hundred to a few thousand points. Deterministic (no random draws).
import Foundation
import MilanTensor

public enum PCA {
  /// The rows of x [n, d] projected on their first two principal axes (power iteration on the covariance, deflated;
  /// each axis signed so its largest coordinate is positive). [n, 2], centred.
  public static func project2D(_ x: Tensor) -> [[Double]] {
    let n = x.shape[0], d = x.shape[1]
    var mean = [Double](repeating: 0, count: d)
    for i in 0..<n { for j in 0..<d { mean[j] += Double(x.data[i * d + j]) } }
    for j in 0..<d { mean[j] /= Double(max(n, 1)) }
    var c = [Double](repeating: 0, count: n * d)
    for i in 0..<n { for j in 0..<d { c[i * d + j] = Double(x.data[i * d + j]) - mean[j] } }
    var cov = [Double](repeating: 0, count: d * d)
    for i in 0..<n {
      for a in 0..<d {
        let va = c[i * d + a]
        if va == 0 { continue }
        for b in a..<d { cov[a * d + b] += va * c[i * d + b] }
      }
    }
    for a in 0..<d { for b in 0..<a { cov[a * d + b] = cov[b * d + a] } }
    var axes: [[Double]] = []
    for k in 0..<min(2, d) {
      var v = (0..<d).map { Double(($0 * 7919 + k * 104_729) % 97 + 1) }
      for _ in 0..<500 {
        var w = [Double](repeating: 0, count: d)
        for a in 0..<d { for b in 0..<d { w[a] += cov[a * d + b] * v[b] } }
        for u in axes {
          let p = zip(w, u).reduce(0) { $0 + $1.0 * $1.1 }
          for a in 0..<d { w[a] -= p * u[a] }
        }
        let norm = w.reduce(0) { $0 + $1 * $1 }.squareRoot()
        guard norm > 0 else { break }
        v = w.map { $0 / norm }
      }
      if let m = v.indices.max(by: { abs(v[$0]) < abs(v[$1]) }), v[m] < 0 { v = v.map { -$0 } }
      axes.append(v)
    }
    while axes.count < 2 { axes.append([Double](repeating: 0, count: d)) }
    return (0..<n).map { i in axes.map { u in (0..<d).reduce(0) { $0 + c[i * d + $1] * u[$1] } } }
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
