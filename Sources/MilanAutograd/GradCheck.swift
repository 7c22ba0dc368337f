// Gradient checking against float64 central differences.
//
// The op under test runs in float32 through the autograd tape; the reference is the same function written in
// float64 (the naive kernels are generic). With a random upstream gradient g, the analytic gradient of L = Σ y·g
// is compared with (L(x + εeᵢ) − L(x − εeᵢ)) / 2ε evaluated in float64 for every input element.
import MilanTensor

public struct GradCheckReport: CustomStringConvertible, Sendable {
  public var label: String
  public var maxAbs: Double
  public var maxRel: Double
  public var worst: Int
  public var analytic: Double
  public var numeric: Double
  public var passed: Bool

  public var description: String {
    "\(passed ? "ok  " : "FAIL") \(label): max|Δ|=\(fmt(maxAbs)) max rel=\(fmt(maxRel)) worst [\(worst)] "
      + "analytic \(fmt(analytic)) vs float64 numeric \(fmt(numeric))"
  }
  private func fmt(_ x: Double) -> String { String(format: "%.4g", x) }
}

public enum GradCheck {
  /// - Parameters:
  ///   - inputs: float32 values of the op's inputs.
  ///   - differentiable: which inputs get gradients (default: all).
  ///   - op: builds the output from input variables (float32, through autograd).
  ///   - reference: the same function in float64 on flat arrays.
  /// - Returns: the forward comparison followed by one report per differentiable input.
  public static func run(
    _ label: String, inputs: [Tensor], differentiable: [Bool]? = nil, atol: Double = 1e-4, rtol: Double = 1e-3,
    eps: Double = 1e-6, seed: UInt64 = 7, op: ([Variable]) -> Variable, reference: ([[Double]]) -> [Double]
  ) -> [GradCheckReport] {
    let diff = differentiable ?? Array(repeating: true, count: inputs.count)
    let vars = zip(inputs, diff).map { Variable($0.0.copy(), requiresGrad: $0.1) }
    let y = op(vars)
    var rng = SplitMix64(seed: seed)
    let g = Tensor.randn(y.shape, rng: &rng)
    let x64 = inputs.map { $0.toArray().map(Double.init) }
    let y64 = reference(x64)
    var reports: [GradCheckReport] = []

    // Forward.
    let yv = y.value.toArray()
    reports.append(report("\(label) forward", yv.map(Double.init), y64, atol: atol, rtol: rtol))

    y.backward(seed: g)
    let gd = g.toArray().map(Double.init)
    func loss(_ xs: [[Double]]) -> Double {
      let out = reference(xs)
      var s = 0.0
      for i in 0..<out.count { s += out[i] * gd[i] }
      return s
    }
    for (i, v) in vars.enumerated() where diff[i] {
      let analytic = (v.grad?.toArray() ?? Array(repeating: 0, count: v.count)).map(Double.init)
      var numeric = [Double](repeating: 0, count: v.count)
      var xs = x64
      for j in 0..<v.count {
        let orig = xs[i][j]
        xs[i][j] = orig + eps
        let lp = loss(xs)
        xs[i][j] = orig - eps
        let lm = loss(xs)
        xs[i][j] = orig
        numeric[j] = (lp - lm) / (2 * eps)
      }
      reports.append(report("\(label) d/dinput\(i)", analytic, numeric, atol: atol, rtol: rtol))
    }
    for r in reports { print(r) }
    return reports
  }

  static func report(_ label: String, _ a: [Double], _ n: [Double], atol: Double, rtol: Double) -> GradCheckReport {
    var r = GradCheckReport(label: label, maxAbs: 0, maxRel: 0, worst: 0, analytic: a.first ?? 0,
                            numeric: n.first ?? 0, passed: a.count == n.count)
    guard a.count == n.count else { return r }
    // Scale the absolute tolerance by the gradient's magnitude so large and small gradients are judged alike.
    let scale = max(1, n.map(abs).max() ?? 1)
    var worstExcess = -Double.infinity
    for j in 0..<a.count {
      let d = abs(a[j] - n[j])
      if d.isNaN || a[j].isNaN { r.passed = false; r.worst = j; r.analytic = a[j]; r.numeric = n[j]; r.maxAbs = .nan; return r }
      r.maxAbs = max(r.maxAbs, d)
      r.maxRel = max(r.maxRel, d / max(abs(n[j]), 1e-12))
      let excess = d - (atol * scale + rtol * abs(n[j]))
      if excess > worstExcess {
        worstExcess = excess
        r.worst = j
        r.analytic = a[j]
        r.numeric = n[j]
      }
    }
    r.passed = worstExcess <= 0
    return r
  }
}
