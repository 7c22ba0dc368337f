// Losses: cross-entropy with soft targets (and hard labels), MILAN's per-token cosine loss 2 − 2·cos.
import CMilanKernels
import RealModule

extension Kernels {
  /// loss = (1/R)·Σ_r Σ_c −t[r,c]·log_softmax(x)[r,c]. `logProbs` [R, C] receives log_softmax(x) for the backward.
  public static func softCrossEntropyForward(logits: UnsafePointer<Float>, targets: UnsafePointer<Float>,
                                             logProbs: UnsafeMutablePointer<Float>, rows: Int, classes: Int) -> Float {
    logSoftmaxForward(x: logits, y: logProbs, rows: rows, n: classes)
    var total: Double = 0
    for i in 0..<rows * classes { total -= Double(targets[i]) * Double(logProbs[i]) }
    return Float(total / Double(max(rows, 1)))
  }

  /// dlogits += (g/R)·(softmax(x)·Σ_c t − t).
  public static func softCrossEntropyBackward(logProbs: UnsafePointer<Float>, targets: UnsafePointer<Float>,
                                              dLogits: UnsafeMutablePointer<Float>, rows: Int, classes: Int,
                                              gradOutput g: Float) {
    let s = g / Float(max(rows, 1))
    for r in 0..<rows {
      let lp = logProbs + r * classes, t = targets + r * classes, d = dLogits + r * classes
      var tsum: Float = 0
      for c in 0..<classes { tsum += t[c] }
      for c in 0..<classes { d[c] += s * (Float.exp(lp[c]) * tsum - t[c]) }
    }
  }

  /// Hard-label cross-entropy, mean over rows. labels in 0..<classes.
  public static func crossEntropyForward(logits: UnsafePointer<Float>, labels: [Int],
                                         logProbs: UnsafeMutablePointer<Float>, rows: Int, classes: Int) -> Float {
    precondition(labels.count == rows, "crossEntropy: \(labels.count) labels for \(rows) rows")
    logSoftmaxForward(x: logits, y: logProbs, rows: rows, n: classes)
    var total: Double = 0
    for r in 0..<rows {
      precondition(labels[r] >= 0 && labels[r] < classes, "crossEntropy: label \(labels[r]) not in 0..<\(classes)")
      total -= Double(logProbs[r * classes + labels[r]])
    }
    return Float(total / Double(max(rows, 1)))
  }

  public static func crossEntropyBackward(logProbs: UnsafePointer<Float>, labels: [Int],
                                          dLogits: UnsafeMutablePointer<Float>, rows: Int, classes: Int,
                                          gradOutput g: Float) {
    let s = g / Float(max(rows, 1))
    for r in 0..<rows {
      let lp = logProbs + r * classes, d = dLogits + r * classes
      for c in 0..<classes { d[c] += s * Float.exp(lp[c]) }
      d[labels[r]] -= s
    }
  }

  /// MILAN feature loss: per row (token) l = 2 − 2·⟨p/‖p‖, t/‖t‖⟩ (no epsilon, as the reference), averaged with
  /// optional per-row weights (loss = Σ w·l / Σ w; nil = plain mean). `saved` [R, 3] receives (cos, ‖p‖, ‖t‖).
  public static func cosineLossForward(pred: UnsafePointer<Float>, target: UnsafePointer<Float>,
                                       weights: UnsafePointer<Float>?, saved: UnsafeMutablePointer<Float>,
                                       rows: Int, dim: Int) -> Float {
    nonisolated(unsafe) let pred = pred, target = target, saved = saved
    Parallel.forEachChunk(rows, minChunk: rowChunk(dim)) { r in
      for i in r {
        let p = pred + i * dim, t = target + i * dim
        var pp: Float = 0, tt: Float = 0, pt: Float = 0
        for j in 0..<dim {
          pp += p[j] * p[j]
          tt += t[j] * t[j]
          pt += p[j] * t[j]
        }
        let np = pp.squareRoot(), nt = tt.squareRoot()
        saved[i * 3] = pt / (np * nt)
        saved[i * 3 + 1] = np
        saved[i * 3 + 2] = nt
      }
    }
    var total: Double = 0, wsum: Double = 0
    for i in 0..<rows {
      let w = Double(weights?[i] ?? 1)
      total += w * (2 - 2 * Double(saved[i * 3]))
      wsum += w
    }
    return Float(total / wsum)
  }

  /// dpred += g·(w_r/Σw)·(−2)·(t/(‖p‖‖t‖) − cos·p/‖p‖²).
  public static func cosineLossBackward(pred: UnsafePointer<Float>, target: UnsafePointer<Float>,
                                        weights: UnsafePointer<Float>?, saved: UnsafePointer<Float>,
                                        dPred: UnsafeMutablePointer<Float>, rows: Int, dim: Int, gradOutput g: Float) {
    var wsum: Float = 0
    for i in 0..<rows { wsum += weights?[i] ?? 1 }
    let scale = g / wsum
    nonisolated(unsafe) let pred = pred, target = target, weights = weights, saved = saved, dPred = dPred
    Parallel.forEachChunk(rows, minChunk: rowChunk(dim)) { r in
      for i in r {
        let w = (weights?[i] ?? 1) * scale
        if w == 0 { continue }
        let c = saved[i * 3], np = saved[i * 3 + 1], nt = saved[i * 3 + 2]
        let a = -2 * w / (np * nt), b = 2 * w * c / (np * np)
        let p = pred + i * dim, t = target + i * dim, d = dPred + i * dim
        for j in 0..<dim { d[j] += a * t[j] + b * p[j] }
      }
    }
  }
}

extension Naive {
  public static func softCrossEntropy<T: RealScalar>(_ x: [T], _ t: [T], rows: Int, classes: Int) -> T {
    let lp = logSoftmax(x, rows: rows, n: classes)
    var s: T = 0
    for i in 0..<rows * classes { s -= t[i] * lp[i] }
    return s / T(rows)
  }

  public static func cosineLoss<T: RealScalar>(_ p: [T], _ t: [T], weights: [T]? = nil, rows: Int, dim: Int) -> T {
    var total: T = 0, wsum: T = 0
    for i in 0..<rows {
      var pp: T = 0, tt: T = 0, pt: T = 0
      for j in 0..<dim {
        pp += p[i * dim + j] * p[i * dim + j]
        tt += t[i * dim + j] * t[i * dim + j]
        pt += p[i * dim + j] * t[i * dim + j]
      }
      let w = weights?[i] ?? 1
      total += w * (2 - 2 * pt / (T.sqrt(pp) * T.sqrt(tt)))
      wsum += w
    }
    return total / wsum
  }
}
