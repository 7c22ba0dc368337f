// milan-fuzz: the reproducible mutation fuzzer over every reader of outside bytes (MilanFuzz). The recorded run of
// docs/reliability.md is `milan-fuzz --inputs 100000`; CI runs a short fixed-seed pass (FuzzSmokeTests).
//   milan-fuzz [--reader NAME] [--inputs N] [--seed S] [--json out.json]
//   milan-fuzz --replay READER:INDEX [--seed S] --write input.bin     (make a reported input again)
//   milan-fuzz --reader READER --file input.bin                       (run one input, e.g. a libFuzzer finding)
import ArgumentParser
import Foundation
import MilanFuzz

@main
struct MilanFuzzCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "milan-fuzz", abstract: "Seeded mutation fuzzing of every reader of outside bytes.")

  @Option(help: "Only this reader (safetensors, onnx, jpeg, png, idx, gzip, config.json, state.json).")
  var reader: String?
  @Option(help: "Mutated inputs per reader.") var inputs = 100_000
  @Option(help: "Seed of the mutations.") var seed: UInt64 = 1
  @Option(help: "An input slower than this many seconds counts as a hang.") var hangLimit = 1.0
  @Option(help: "Folder of the valid pictures used as seeds.") var images = "Tests/Fixtures/images/files"
  @Option(help: "Write the reports as JSON here.") var json: String?
  @Option(help: "READER:INDEX: write that input (see --write) instead of fuzzing.") var replay: String?
  @Option(help: "With --replay: the file to write.") var write: String?
  @Option(help: "With --reader: run the reader on this file once and print the outcome and the time.") var file: String?

  func run() throws {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("milan-fuzz-\(getpid())")
    defer { try? FileManager.default.removeItem(at: scratch) }
    let targets = try FuzzTargets.all(images: URL(fileURLWithPath: images), scratch: scratch)
      .filter { reader == nil || $0.name == reader }
    guard !targets.isEmpty else { throw ValidationError("--reader \(reader ?? ""): no such reader") }
    if let replay {
      let parts = replay.split(separator: ":")
      guard parts.count == 2, let t = targets.first(where: { $0.name == parts[0] }), let i = Int(parts[1]) else {
        throw ValidationError("--replay \(replay): expected READER:INDEX")
      }
      let bytes = FuzzRunner.input(t, seed: seed, index: i)
      guard let write else { throw ValidationError("--replay needs --write FILE") }
      try Data(bytes).write(to: URL(fileURLWithPath: write))
      print("wrote \(bytes.count) bytes to \(write)")
      return
    }
    if let file {
      guard reader != nil, let t = targets.first else { throw ValidationError("--file needs --reader") }
      let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
      let t0 = DispatchTime.now().uptimeNanoseconds
      var outcome = "accepted"
      do { try t.run(bytes) } catch { outcome = "refused: \(error)" }
      let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
      print(String(format: "%@: %d bytes, %.1f ms, max RSS %.0f MB, %@", t.name, bytes.count, ms, FuzzRunner.maxRSSMB(),
                   outcome))
      return
    }
    let marker = scratch.appendingPathComponent("current-input")
    var reports: [FuzzReport] = []
    for t in targets {
      let r = FuzzRunner.run(t, seed: seed, inputs: inputs, hangLimit: hangLimit, marker: marker) { i in
        FileHandle.standardError.write("  \(t.name): \(i)/\(inputs)\n".data(using: .utf8)!)
      }
      reports.append(r)
      print(String(format: "%-12@ %7d inputs in %6.1f s: %7d refused, %6d accepted, 0 crashes, %d hangs (> %.1f s); "
                   + "slowest %.1f ms (input %d); max RSS %.0f MB", t.name as NSString, r.inputs, r.seconds, r.refused,
                   r.accepted, r.hangs.count, r.hangLimitSeconds, r.slowestMs, r.slowestInput, r.maxRSSMB))
      for (k, v) in r.topRefusals.sorted(by: { $0.value > $1.value }).prefix(3) { print("    \(v)× \(k)") }
    }
    if let json {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      try enc.encode(reports).write(to: URL(fileURLWithPath: json), options: .atomic)
    }
  }
}
