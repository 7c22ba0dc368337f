// Linear probing as MAE/MILAN's main_linprobe.py (reference-milan.md §6a) on frozen features: head =
// BatchNorm1d(D, affine=False, eps 1e-6) → Linear(D, K) with trunc-normal(0.01) weights and zero bias; LARS
// (momentum 0.9, trust 0.001, no weight decay); lr = blr × batch / 256 with per-iteration warmup then half-cosine;
// cross-entropy; drop_last batches. Features are extracted once (no augmentation — the reference's RandomResizedCrop
// during probing is not reproduced; the issue allows cached features without augmentation). Reports top-1 / top-5.
import Foundation
import MilanAutograd
import MilanNN
import MilanTensor

public struct LinearProbeConfig: Codable, Sendable, Equatable {
  public var epochs = 90
  public var warmupEpochs: Double = 10
  public var batchSize = 256
  public var blr = 0.1
  public var minLR = 0.0
  public var momentum: Float = 0.9
  public var weightDecay: Float = 0
  public var seed: UInt64 = 0
  public var lr: Double { blr * Double(batchSize) / 256 }

  /// Checks the numbers (the batch against the data is checked when training); the message names the flag.
  public func validate() throws {
    func bad(_ m: String) -> InvalidSetting { InvalidSetting("linear probe: \(m)") }
    guard epochs > 0 else { throw bad("--probe-epochs must be positive (got \(epochs))") }
    guard warmupEpochs.isFinite, warmupEpochs >= 0, warmupEpochs <= Double(epochs) else {
      throw bad("--probe-warmup must be in [0, --probe-epochs] (got \(warmupEpochs) with \(epochs) epochs)")
    }
    guard batchSize > 1 else { throw bad("--probe-batch must be at least 2 (got \(batchSize))") }
    guard blr.isFinite, blr > 0 else { throw bad("--probe-blr must be positive (got \(blr))") }
    guard minLR.isFinite, minLR >= 0 else { throw bad("minLR must be finite and ≥ 0 (got \(minLR))") }
    guard momentum.isFinite, momentum >= 0, momentum < 1 else { throw bad("momentum must be in [0, 1) (got \(momentum))") }
    guard weightDecay.isFinite, weightDecay >= 0 else { throw bad("weightDecay must be finite and ≥ 0 (got \(weightDecay))") }
  }
  public init() {}
}

public struct ClassificationScore: Codable, Sendable, Equatable {
  public var top1: Double
  public var top5: Double
  public var loss: Double
  public var count: Int
}

public final class LinearProbeHead: Module {
  public let bn: BatchNorm1d
  public let linear: Linear

  public init(features: Int, classes: Int, seed: UInt64 = 0) {
    bn = BatchNorm1d(features, eps: 1e-6)
    linear = Linear(features, classes)
    var rng = SplitMix64(seed: seed)
    Init.truncatedNormal(linear.weight.value, std: 0.01, rng: &rng)
  }

  /// Keys as MAE's `head = Sequential(BatchNorm1d, Linear)`: head.0 holds only buffers, head.1.{weight, bias}.
  public var children: [(String, any Module)] { [("1", linear)] }

  // x: [N, D] → logits [N, K]
  public func callAsFunction(_ x: Variable, training: Bool) -> Variable {
    bn.training = training
    return linear(bn(x))
  }
}

public enum LinearProbe {
  /// Trains a probe on `train` features and scores it on `test` after every epoch; returns the last epoch's score
  /// (no epoch is picked by its test score) and the trained head.
  public static func run(train: Tensor, trainLabels: [Int], test: Tensor, testLabels: [Int], classes: Int,
                         config c: LinearProbeConfig, log: (String) -> Void = { _ in }) throws
    -> (final: ClassificationScore, head: LinearProbeHead) {
    let n = train.shape[0], d = train.shape[1]
    try c.validate()
    guard c.batchSize > 1 && n >= c.batchSize else {
      throw InvalidSetting("linear probe: the batch size \(c.batchSize) must be at least 2 and at most the "
        + "\(n) training features (--probe-batch, --train-images)")
    }
    let head = LinearProbeHead(features: d, classes: classes, seed: c.seed)
    let opt = LARS(parameters: head.namedParameters(), lr: Float(c.lr), momentum: c.momentum, weightDecay: c.weightDecay)
    var rng = SplitMix64(seed: c.seed ^ 0x1111)
    let steps = n / c.batchSize
    var score = ClassificationScore(top1: 0, top5: 0, loss: 0, count: 0)
    for epoch in 0..<c.epochs {
      var order = Array(0..<n)
      order.shuffle(using: &rng)
      var lossSum = 0.0
      for it in 0..<steps {
        opt.lr = Float(maeLearningRate(epoch: Double(epoch) + Double(it) / Double(steps), baseLR: c.lr, minLR: c.minLR,
                                       warmupEpochs: c.warmupEpochs, epochs: Double(c.epochs)))
        let ids = Array(order[(it * c.batchSize)..<((it + 1) * c.batchSize)])
        let x = rows(train, ids)
        let loss = crossEntropy(head(Variable(x), training: true), labels: ids.map { trainLabels[$0] })
        lossSum += Double(loss.value.data[0])
        loss.backward()
        opt.step()
        opt.zeroGrad()
      }
      score = evaluate(head, test, testLabels)
      if epoch % 10 == 9 || epoch == c.epochs - 1 {
        log(String(format: "linear probe epoch %d/%d: train loss %.4f, test top-1 %.2f %%, top-5 %.2f %%", epoch + 1,
                   c.epochs, lossSum / Double(steps), score.top1 * 100, score.top5 * 100))
      }
    }
    return (score, head)
  }

  public static func evaluate(_ head: LinearProbeHead, _ x: Tensor, _ labels: [Int]) -> ClassificationScore {
    let logits = Autograd.noGrad { head(Variable(x), training: false) }.value
    return score(logits: logits, labels: labels)
  }

  /// Top-1, top-5 and mean cross-entropy of logits [N, K].
  public static func score(logits: Tensor, labels: [Int]) -> ClassificationScore {
    let n = logits.shape[0], k = logits.shape[1]
    var top1 = 0, top5 = 0, loss = 0.0
    for i in 0..<n {
      let row = logits.data + i * k
      let y = row[labels[i]]
      var higher = 0, mx = -Float.infinity
      for j in 0..<k {
        if row[j] > y || (row[j] == y && j < labels[i]) { higher += 1 }
        mx = max(mx, row[j])
      }
      if higher == 0 { top1 += 1 }
      if higher < 5 { top5 += 1 }
      var s = 0.0
      for j in 0..<k { s += exp(Double(row[j] - mx)) }
      loss += log(s) + Double(mx - y)
    }
    return ClassificationScore(top1: Double(top1) / Double(n), top5: Double(top5) / Double(n), loss: loss / Double(n),
                               count: n)
  }

  static func rows(_ x: Tensor, _ ids: [Int]) -> Tensor {
    let d = x.shape[1]
    let out = Tensor(uninitialized: [ids.count, d])
    for (r, i) in ids.enumerated() { (out.data + r * d).update(from: x.data + i * d, count: d) }
    return out
  }
}
