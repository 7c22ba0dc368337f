// Test support: elementwise comparisons that report the max differences and the first failing index, and the
// location of the committed fixtures. Used by the test targets (never by the library).
import Foundation
import MilanTensor

public struct Comparison: CustomStringConvertible {
  public var label: String
  public var count: Int
  public var maxAbs: Double
  public var maxRel: Double
  public var firstBad: Int?
  public var firstBadValues: (Double, Double)?
  public var atol: Double, rtol: Double
  public var shapeMismatch: String?

  public var ok: Bool { shapeMismatch == nil && firstBad == nil }

  public var description: String {
    if let s = shapeMismatch { return "\(label): \(s)" }
    var d = "\(label): n=\(count) max|Δ|=\(String(format: "%.3g", maxAbs)) max rel=\(String(format: "%.3g", maxRel))"
      + " (atol \(atol), rtol \(rtol))"
    if let i = firstBad, let (a, b) = firstBadValues {
      d += " FAIL at [\(i)]: got \(a), expected \(b)"
    }
    return d
  }
}

/// |a − b| ≤ atol + rtol·|b| elementwise (b is the reference). NaN anywhere fails.
public func compare<A: BinaryFloatingPoint, B: BinaryFloatingPoint>(
  _ a: [A], _ b: [B], atol: Double = 1e-5, rtol: Double = 1e-4, _ label: String = ""
) -> Comparison {
  var c = Comparison(label: label, count: a.count, maxAbs: 0, maxRel: 0, firstBad: nil, firstBadValues: nil,
                     atol: atol, rtol: rtol, shapeMismatch: nil)
  guard a.count == b.count else {
    c.shapeMismatch = "count \(a.count) vs expected \(b.count)"
    return c
  }
  for i in 0..<a.count {
    let x = Double(a[i]), y = Double(b[i])
    let d = abs(x - y)
    if d.isNaN || x.isNaN || y.isNaN {
      if c.firstBad == nil { c.firstBad = i; c.firstBadValues = (x, y) }
      c.maxAbs = .nan
      continue
    }
    c.maxAbs = max(c.maxAbs, d)
    if abs(y) > atol { c.maxRel = max(c.maxRel, d / abs(y)) }  // relative error only where it means something
    if d > atol + rtol * abs(y), c.firstBad == nil {
      c.firstBad = i
      c.firstBadValues = (x, y)
    }
  }
  if let i = c.firstBad { print("MISMATCH \(c) (index \(i))") } else { print("ok  \(c)") }
  return c
}

public func compare(_ a: Tensor, _ b: Tensor, atol: Double = 1e-5, rtol: Double = 1e-4, _ label: String = "")
  -> Comparison
{
  var c = compare(a.toArray(), b.toArray(), atol: atol, rtol: rtol, label)
  if a.shape != b.shape, c.shapeMismatch == nil { c.shapeMismatch = "shape \(a.shape) vs expected \(b.shape)" }
  return c
}

public enum Fixtures {
  /// Repository root, found from this source file's location (Sources/MilanTestSupport/Comparison.swift).
  public static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

  public static func url(_ relative: String) -> URL {
    root.appendingPathComponent("Tests/Fixtures").appendingPathComponent(relative)
  }
}

/// Held by tests that switch the process-wide SIMD code path (`milan_set_simd_level`) and by tests that compare two
/// runs bit for bit, so that the two never overlap when test suites run in parallel.
public let simdLevelLock = NSLock()
