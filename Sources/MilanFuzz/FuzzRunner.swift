// Runs a fuzz target over seeded mutations and reports what happened: inputs tried, refused (a thrown error, the
// expected outcome), accepted, the slowest input, inputs over the hang limit, and the process's maximum RSS (the
// allocation bound: a reader that believed a header claiming 2^40 elements would take it all, or die trying).
// A crash ends the process: before each input its number is written to `marker`, so the input can be made again
// (Mutator is deterministic) and kept as a regression test.
import Foundation
import MilanTensor

public struct FuzzReport: Codable, Sendable {
  public var reader: String
  public var seed: UInt64
  public var inputs: Int
  public var refused: Int
  public var accepted: Int
  public var slowestMs: Double
  public var slowestInput: Int
  /// Inputs that took longer than the hang limit.
  public var hangs: [Int]
  public var hangLimitSeconds: Double
  public var seconds: Double
  public var maxRSSMB: Double
  /// The most frequent refusals (first 60 characters of the message) and their counts.
  public var topRefusals: [String: Int]
}

public enum FuzzRunner {
  /// A stable stream number per reader name (FNV-1a), so adding a reader does not change another's inputs.
  public static func stream(_ name: String) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
    return h
  }

  public static func input(_ t: FuzzTarget, seed: UInt64, index: Int) -> [UInt8] {
    let b = Mutator.input(seeds: t.seeds, seed: seed, stream: stream(t.name), index: index).bytes
    if let fix = t.fixup, index % 2 == 0 { return fix(b) }
    return b
  }

  public static func run(_ t: FuzzTarget, seed: UInt64, inputs: Int, hangLimit: Double = 1, marker: URL? = nil,
                         progress: ((Int) -> Void)? = nil) -> FuzzReport {
    var refused = 0, accepted = 0, hangs: [Int] = []
    var slowest = 0.0, slowestIndex = -1
    var refusals: [String: Int] = [:]
    let markerHandle: FileHandle? = marker.flatMap {
      FileManager.default.createFile(atPath: $0.path, contents: nil)
      return try? FileHandle(forWritingTo: $0)
    }
    defer { try? markerHandle?.close() }
    let t0 = DispatchTime.now().uptimeNanoseconds
    // The seeds themselves first (they must be accepted), then the mutations.
    for i in -t.seeds.count..<inputs {
      let bytes = i < 0 ? t.seeds[t.seeds.count + i] : input(t, seed: seed, index: i)
      if let h = markerHandle {
        try? h.seek(toOffset: 0)
        try? h.write(contentsOf: Data("\(t.name) \(seed) \(i)          ".utf8))
      }
      let s0 = DispatchTime.now().uptimeNanoseconds
      do {
        try t.run(bytes)
        if i >= 0 { accepted += 1 }
      } catch {
        if i < 0 { refusals["SEED REFUSED: \(String(describing: error).prefix(60))", default: 0] += 1 }
        if i >= 0 { refused += 1 }
        refusals[String(String(describing: error).prefix(60)), default: 0] += 1
      }
      let dt = Double(DispatchTime.now().uptimeNanoseconds - s0) / 1e9
      if dt > slowest { (slowest, slowestIndex) = (dt, i) }
      if dt > hangLimit { hangs.append(i) }
      if i >= 0, i % 10_000 == 0 { progress?(i) }
    }
    let top = refusals.sorted { $0.value > $1.value }.prefix(8)
    return FuzzReport(reader: t.name, seed: seed, inputs: inputs, refused: refused, accepted: accepted,
                      slowestMs: slowest * 1e3, slowestInput: slowestIndex, hangs: hangs, hangLimitSeconds: hangLimit,
                      seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, maxRSSMB: maxRSSMB(),
                      topRefusals: Dictionary(uniqueKeysWithValues: top.map { ($0.key, $0.value) }))
  }

  public static func maxRSSMB() -> Double {
    var u = rusage()
    #if os(Linux)
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024  // KiB
    #else
    getrusage(RUSAGE_SELF, &u)
    return Double(u.ru_maxrss) / 1_048_576  // bytes
    #endif
  }
}
