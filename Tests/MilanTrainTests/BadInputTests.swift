// Bad flags, files and data through the real CLI, as a user would meet them: every one ends with exit status 1 and
// a message that names the option or file and the problem — never a trap (a release-build `precondition` dies with
// SIGILL or SIGTRAP and prints nothing), never a silent success.
import Foundation
import MilanTestSupport
import Testing

@Suite(.serialized) struct BadInputTests {
  struct Case: CustomStringConvertible, Sendable {
    var name: String
    var args: [String]
    /// Every one of these must appear in stderr.
    var says: [String]
    var description: String { name }
  }

  /// The tiny image folder and a tiny run on it (CLIP fixture teacher, demo student with patch 8 at 32 px).
  static let fixture: (dir: URL, data: String, run: String, teacher: String) = {
    let dir = try! scratchDir("bad-input")
    let data = try! tinyImageNet(dir.appendingPathComponent("data")).appendingPathComponent("train").path
    let run = dir.appendingPathComponent("run").path
    let teacher = Fixtures.url("models/clip_openclip.safetensors").path
    return (dir, data, run, teacher)
  }()

  static func pretrainArgs(_ extra: [String], output: String? = nil) -> [String] {
    ["pretrain", "--data-dir", fixture.data, "-o", output ?? fixture.dir.appendingPathComponent("bad-run").path,
     "--model", "vit_demo_patch4_32", "--patch-size", "8", "--epochs", "1", "--batch-size", "2", "--teacher",
     fixture.teacher, "--no-report"] + extra
  }

  static let flagCases: [Case] = [
    Case(name: "mask ratio 1.0", args: pretrainArgs(["--mask-ratio", "1.0"]), says: ["--mask-ratio", "1.0"]),
    Case(name: "mask ratio -0.1", args: pretrainArgs(["--mask-ratio=-0.1"]), says: ["--mask-ratio", "-0.1"]),
    Case(name: "mask ratio -0.1 without =", args: pretrainArgs(["--mask-ratio", "-0.1"]), says: ["--mask-ratio"]),
    Case(name: "mask ratio nan", args: pretrainArgs(["--mask-ratio", "nan"]), says: ["--mask-ratio"]),
    Case(name: "batch larger than the data", args: pretrainArgs(["--batch-size", "1000"]), says: ["batch", "1000"]),
    Case(name: "batch 0", args: pretrainArgs(["--batch-size", "0"]), says: ["--batch-size", "0"]),
    Case(name: "unknown decoder", args: pretrainArgs(["--decoder", "transformer"]), says: ["--decoder", "transformer"]),
    Case(name: "unknown masking", args: pretrainArgs(["--masking", "block"]), says: ["--masking", "block"]),
    Case(name: "teacher grid", args: pretrainArgs(["--teacher-image-size", "36"]), says: ["36", "teacher"]),
    Case(name: "image size not a multiple of the patch", args: pretrainArgs(["--image-size", "36"]),
         says: ["36", "patch"]),
    Case(name: "negative epochs", args: pretrainArgs(["--epochs=-1"]), says: ["--epochs", "-1"]),
    Case(name: "warmup longer than the run", args: pretrainArgs(["--warmup-epochs", "5"]), says: ["--warmup-epochs", "5"]),
    Case(name: "unknown flag", args: pretrainArgs(["--mask-ration", "0.5"]), says: ["--mask-ration"]),
    Case(name: "value of the wrong type", args: pretrainArgs(["--batch-size", "many"]), says: ["--batch-size", "many"]),
    Case(name: "unknown model", args: pretrainArgs(["--model", "vit_gigantic"]), says: ["vit_gigantic"]),
    Case(name: "missing data folder", args: ["pretrain", "--data-dir", "/nonexistent/data", "--teacher",
                                             Fixtures.url("models/clip_openclip.safetensors").path],
         says: ["/nonexistent/data"]),
    Case(name: "eval of a missing run", args: ["eval", "--checkpoint", "/nonexistent/run"], says: ["/nonexistent/run"]),
  ]

  @Test(arguments: flagCases)
  func badFlagsEndWithAMessage(_ c: Case) throws {
    try check(c)
  }

  func check(_ c: Case) throws {
    let r = try milan(c.args)
    let firstLines = r.stderr.split(separator: "\n").prefix(3).joined(separator: " | ")
    print("\(c.name): status \(r.status): \(firstLines)")
    #expect(r.status == 1, "\(c.name): exit status \(r.status) (1 expected; a trap gives 132 or 133)\n\(r.stderr)")
    for s in c.says {
      #expect(r.stderr.contains(s), "\(c.name): the message does not say \"\(s)\":\n\(r.stderr)")
    }
  }

  @Test func badFilesEndWithAMessage() throws {
    let f = Self.fixture
    let dir = f.dir.appendingPathComponent("files-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    // A config field of the wrong type.
    let config = dir.appendingPathComponent("config.json")
    try Data(#"{"epochs": "ten"}"#.utf8).write(to: config)
    try check(Case(name: "config field of the wrong type", args: Self.pretrainArgs(["--config", config.path]),
                   says: [config.path, "epochs"]))
    // A config that is not JSON.
    try Data("epochs = 10\n".utf8).write(to: config)
    try check(Case(name: "config not JSON", args: Self.pretrainArgs(["--config", config.path]), says: [config.path]))
    // A teacher file of garbage, and a safetensors teacher cut in half.
    let garbage = dir.appendingPathComponent("teacher.safetensors")
    try Data(repeating: 0x41, count: 1000).write(to: garbage)
    try check(Case(name: "garbage teacher", args: Self.pretrainArgs(["--teacher", garbage.path]), says: [garbage.path]))
    let bytes = try Data(contentsOf: URL(fileURLWithPath: f.teacher))
    try bytes.prefix(bytes.count / 2).write(to: garbage)
    try check(Case(name: "truncated teacher", args: Self.pretrainArgs(["--teacher", garbage.path]), says: [garbage.path]))

    // A checkpoint of another model size: the run's model.safetensors replaced by a patch-4 run's.
    let a = dir.appendingPathComponent("a").path, b = dir.appendingPathComponent("b").path
    #expect(try milan(Self.pretrainArgs([], output: a)).status == 0)
    #expect(try milan(Self.pretrainArgs(["--patch-size", "4"], output: b)).status == 0)
    let model = URL(fileURLWithPath: a).appendingPathComponent("model.safetensors")
    try FileManager.default.removeItem(at: model)
    try FileManager.default.copyItem(at: URL(fileURLWithPath: b).appendingPathComponent("model.safetensors"), to: model)
    try check(Case(name: "eval of a checkpoint of another size", args: ["eval", "--checkpoint", a],
                   says: ["model.safetensors", "shape"]))
    try check(Case(name: "resume from a checkpoint of another size",
                   args: ["pretrain", "--resume", "-o", a, "--epochs", "2", "--teacher", f.teacher, "--no-report"],
                   says: ["model.safetensors", "shape"]))
  }

  @Test(.enabled(if: Real.available || Real.required, "needs scripts/fetch-teacher.sh (scripts/test.sh runs it)"))
  func aTruncatedONNXTeacherEndsWithAMessage() throws {
    let dir = try scratchDir("onnx")
    defer { try? FileManager.default.removeItem(at: dir) }
    let onnx = dir.appendingPathComponent("teacher.onnx")
    let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: Real.teacher))
    let head = try h.read(upToCount: 3_000_000) ?? Data()
    try h.close()
    try head.write(to: onnx)
    try check(Case(name: "truncated ONNX", args: Self.pretrainArgs(["--teacher", onnx.path]), says: [onnx.path]))
  }
}
