// CI's fuzz pass: a fixed seed and a few thousand mutated inputs per reader (the recorded run of docs/reliability.md
// tries 100,000 each with `milan-fuzz`). Every seed must be accepted, no input may take over a second, the process
// must stay within a bounded memory, and every input kept under Tests/Fixtures/fuzz (found by an earlier run) must
// be refused with an error or read, never trap.
import Foundation
import MilanFuzz
import MilanTestSupport
import Testing

@Suite(.serialized) struct FuzzSmokeTests {
  static let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("milan-fuzz-test-\(getpid())")

  static func targets() throws -> [FuzzTarget] {
    try FuzzTargets.all(images: Fixtures.url("images/files"), scratch: scratch)
  }

  @Test func everyReaderSurvivesAFixedSeedPass() throws {
    defer { try? FileManager.default.removeItem(at: Self.scratch) }
    for t in try Self.targets() {
      let r = FuzzRunner.run(t, seed: 20261130, inputs: 3000, hangLimit: 1)
      print(String(format: "%@: %d inputs in %.1f s, %d refused, %d accepted, slowest %.1f ms, max RSS %.0f MB",
                   t.name, r.inputs, r.seconds, r.refused, r.accepted, r.slowestMs, r.maxRSSMB))
      #expect(!r.topRefusals.keys.contains { $0.hasPrefix("SEED REFUSED") }, "\(t.name): a valid seed was refused: \(r.topRefusals)")
      #expect(r.hangs.isEmpty, "\(t.name): inputs over 1 s: \(r.hangs)")
      #expect(r.refused > 0 && r.accepted + r.refused == r.inputs)
      #expect(r.maxRSSMB < 2048, "\(t.name): the process grew to \(r.maxRSSMB) MB")
    }
  }

  @Test func theKeptInputsAreRefusedOrReadNeverTrap() throws {
    defer { try? FileManager.default.removeItem(at: Self.scratch) }
    let root = Fixtures.url("fuzz")
    let targets = try Self.targets()
    var count = 0
    for reader in (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [] {
      let t = try #require(targets.first { $0.name == reader }, "Tests/Fixtures/fuzz/\(reader): no such reader")
      for file in try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(reader).path) {
        let bytes = [UInt8](try Data(contentsOf: root.appendingPathComponent(reader).appendingPathComponent(file)))
        do { try t.run(bytes) } catch {}  // an error is fine; a trap would end the test process
        count += 1
      }
    }
    print("kept fuzz inputs replayed: \(count)")
  }
}
