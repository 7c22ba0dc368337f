// The machine's FP32 limit, measured rather than looked up: clock, turbo and a neighbour's load on a shared host all
// move it, so benchmarks measure it in the same run as the work they compare against it.
import CMilanKernels
import Dispatch
import Foundation

public struct FMAPeak: Sendable, Codable {
  /// Vector width (floats) of the fastest FMA loop on this CPU.
  public var width: Int
  /// GFLOP/s of one core running alone (best of the trials).
  public var perCoreGFLOPS: Double
  /// GFLOP/s of `threads` cores running at once (sum over the threads, best of the trials).
  public var allCoresGFLOPS: Double
  public var threads: Int

  /// FMA widths this CPU has (4 NEON, 8 AVX2, 16 AVX-512F).
  public static var widths: [Int] {
    let mask = Int(milan_fma_peak_widths())
    return [4, 8, 16].filter { mask & $0 != 0 }
  }

  /// GFLOP/s of one run of `iterations` × 24 FMAs at `width` on the calling thread, 0 when the width is missing.
  static func once(width: Int, iterations: Int) -> Double {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let flops = milan_fma_peak_run(Int32(width), iterations)
    let dt = Double(DispatchTime.now().uptimeNanoseconds - t0)
    return flops / max(dt, 1)
  }

  /// Measures each width on one core, then the best width on `threads` cores at once. Every trial runs about
  /// `seconds` (after a warm-up that lets the clock settle); the best of `trials` is kept for each.
  /// Returns nil where the CPU has no FMA loop here (the caller reports the peak as unknown).
  public static func measure(threads: Int = Parallel.threads, seconds: Double = 0.05, trials: Int = 10) -> FMAPeak? {
    var best: (width: Int, gf: Double, iterations: Int)?
    for w in widths {
      // Calibrate the iteration count to about `seconds`.
      var it = 100_000
      var gf = once(width: w, iterations: it)
      guard gf > 0 else { continue }
      it = max(1000, Int(seconds * gf * 1e9 / Double(48 * w)))
      gf = 0
      for _ in 0..<trials { gf = max(gf, once(width: w, iterations: it)) }
      if best == nil || gf > best!.gf * 1.02 { best = (w, gf, it) }  // wider only when it is really faster
    }
    guard let b = best else { return nil }
    let n = max(1, threads)
    var all = 0.0
    DispatchQueue.concurrentPerform(iterations: n) { _ in _ = milan_fma_peak_run(Int32(b.width), b.iterations / 4) }
    for _ in 0..<trials {
      let t0 = DispatchTime.now().uptimeNanoseconds
      DispatchQueue.concurrentPerform(iterations: n) { _ in _ = milan_fma_peak_run(Int32(b.width), b.iterations) }
      let dt = Double(DispatchTime.now().uptimeNanoseconds - t0)
      all = max(all, Double(n) * Double(48 * b.width) * Double(b.iterations) / dt)
    }
    return FMAPeak(width: b.width, perCoreGFLOPS: b.gf, allCoresGFLOPS: all, threads: n)
  }

  /// The higher of two measurements (a benchmark measures before and after its rows: a neighbour's burst during
  /// one measurement would otherwise lower the peak and inflate every % of peak).
  public static func best(_ a: FMAPeak?, _ b: FMAPeak?) -> FMAPeak? {
    guard let a else { return b }
    guard let b else { return a }
    return FMAPeak(width: a.allCoresGFLOPS >= b.allCoresGFLOPS ? a.width : b.width,
                   perCoreGFLOPS: max(a.perCoreGFLOPS, b.perCoreGFLOPS),
                   allCoresGFLOPS: max(a.allCoresGFLOPS, b.allCoresGFLOPS), threads: a.threads)
  }
}
