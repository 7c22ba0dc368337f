// Bad flags, files and data through the real CLI, as a user would meet them: every one ends with exit status 1 and
// a message that names the option or file and the problem — never a trap (a release-build `precondition` dies with
// SIGILL or SIGTRAP and prints nothing), never a silent success.
import Foundation
import MilanIO
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
    // A teacher whose weights hold a NaN (it would make the class attention semantic-aware sampling draws from NaN).
    let clip = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: f.teacher))
    var nan = SafeTensorsWriter(metadata: clip.metadata)
    for t in clip.tensors {
      let v = try clip.tensor(t.name)
      if t.name == "visual.transformer.resblocks.0.attn.in_proj_weight" { v.data[0] = .nan }
      try nan.add(name: t.name, tensor: v)
    }
    try nan.write(to: garbage)
    try check(Case(name: "teacher with a NaN weight", args: Self.pretrainArgs(["--teacher", garbage.path]),
                   says: [garbage.path, "in_proj_weight", "non-finite"]))

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

  /// Configuration files whose model sizes make no network, or whose values do not fit their fields: each was a
  /// trap (division by zero, a precondition in the model's init, Int(nan)) before it was checked when read.
  static let configCases: [(name: String, json: String, says: [String])] = [
    ("no heads", #"{"numHeads": 0}"#, ["model.encoder", "numHeads 0"]),
    ("no blocks", #"{"depth": 0}"#, ["model.encoder", "depth"]),
    ("negative width", #"{"embedDim": -48}"#, ["model.encoder", "embedDim -48"]),
    ("width not divisible by 4", #"{"embedDim": 6, "numHeads": 3}"#, ["model.encoder", "divisible by 4"]),
    ("one input channel", #"{"inChannels": 1}"#, ["model.encoder.inChannels", "RGB"]),
    ("negative MLP ratio", #"{"mlpRatio": -1}"#, ["model.encoder", "mlpRatio"]),
    ("a classification head", #"{"numClasses": 5}"#, ["model.encoder", "numClasses"]),
    ("mean pooling", #"{"globalPool": "avg"}"#, ["model.encoder", "globalPool"]),
    ("drop path 2", #"{"dropPathRate": 2}"#, ["model.encoder", "dropPathRate"]),
    ("decoder width 6", #"{"decoderDim": 6, "decoderHeads": 3}"#, ["model.decoderDim", "divisible by 4"]),
    ("negative decoder MLP ratio", #"{"decoderMlpRatio": -1}"#, ["model.decoderMlpRatio"]),
    ("negative weight decay", #"{"weightDecay": -1}"#, ["weightDecay"]),
    ("negative seed", #"{"seed": -1}"#, ["does not fit its field"]),
  ]

  @Test func badConfigurationFilesEndWithAMessage() throws {
    let dir = Self.fixture.dir.appendingPathComponent("configs-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    for (i, c) in Self.configCases.enumerated() {
      // The case's keys go into model.encoder, model or the top level, wherever the field lives.
      let given = try JSONSerialization.jsonObject(with: Data(c.json.utf8)) as! [String: Any]
      var encoder: [String: Any] = ["patchSize": 8, "embedDim": 48, "depth": 2, "numHeads": 3]
      var model: [String: Any] = [:], top: [String: Any] = [:]
      for (k, v) in given {
        if k.hasPrefix("decoder") { model[k] = v } else if ["weightDecay", "seed"].contains(k) { top[k] = v } else { encoder[k] = v }
      }
      model["encoder"] = encoder
      top["model"] = model
      let file = dir.appendingPathComponent("config-\(i).json")
      try JSONSerialization.data(withJSONObject: top).write(to: file)
      // No --model (it would replace the file's model) and no --patch-size.
      let args = ["pretrain", "--data-dir", Self.fixture.data, "-o", dir.appendingPathComponent("run").path, "--config",
                  file.path, "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--teacher", Self.fixture.teacher,
                  "--no-report"]
      try check(Case(name: "config: \(c.name)", args: args, says: [file.path] + c.says))
    }
  }

  /// Flags of the commands that read a finished run, and a run whose state.json was edited into a model that
  /// cannot be built.
  @Test func badFlagsOfTheOtherCommandsEndWithAMessage() throws {
    let f = Self.fixture
    let dir = f.dir.appendingPathComponent("others-\(UUID().uuidString)")
    let run = dir.appendingPathComponent("run").path
    #expect(try milan(Self.pretrainArgs([], output: run)).status == 0)
    let data = URL(fileURLWithPath: f.data).deletingLastPathComponent().path
    let finetune = ["finetune", "--checkpoint", run, "--data-dir", data, "-o", dir.appendingPathComponent("ft").path,
                    "--epochs", "1", "--batch-size", "2"]
    let cases: [Case] = [
      Case(name: "finetune epochs 0", args: finetune + ["--epochs", "0"], says: ["--epochs", "0"]),
      Case(name: "finetune batch 0", args: finetune + ["--batch-size", "0"], says: ["--batch-size", "0"]),
      Case(name: "finetune layer decay 0", args: finetune + ["--layer-decay", "0"], says: ["--layer-decay"]),
      Case(name: "finetune drop path 2", args: finetune + ["--drop-path", "2"], says: ["--drop-path", "2"]),
      Case(name: "finetune warmup longer than the run", args: finetune + ["--warmup-epochs", "50"], says: ["--warmup-epochs"]),
      Case(name: "finetune more train images than there are", args: finetune + ["--train-images", "99"],
           says: ["--train-images", "99", data]),
      Case(name: "finetune no test images", args: finetune + ["--test-images", "0"], says: ["--test-images"]),
      Case(name: "eval k 0", args: ["eval", "--checkpoint", run, "--k", "0"], says: ["--k", "0"]),
      Case(name: "eval temperature 0", args: ["eval", "--checkpoint", run, "--temperature", "0"], says: ["--temperature"]),
      Case(name: "eval probe epochs 0", args: ["eval", "--checkpoint", run, "--probe-epochs", "0"], says: ["--probe-epochs"]),
      Case(name: "eval probe warmup longer than the probe", args: ["eval", "--checkpoint", run, "--probe-warmup", "100"],
           says: ["--probe-warmup"]),
      Case(name: "eval max unreadable 3", args: ["eval", "--checkpoint", run, "--max-unreadable", "3"],
           says: ["--max-unreadable"]),
      Case(name: "embed image size not a multiple of the patch",
           args: ["embed", "--checkpoint", run, "-o", dir.appendingPathComponent("e.safetensors").path, "--image-size", "7"],
           says: ["--image-size", "7", "patch"]),
    ]
    for c in cases { try check(c) }
    // state.json edited by hand into a model with no heads: every command that reads the run refuses it by name.
    let state = URL(fileURLWithPath: run).appendingPathComponent("state.json")
    var json = try JSONSerialization.jsonObject(with: Data(contentsOf: state)) as! [String: Any]
    var config = json["config"] as! [String: Any], model = config["model"] as! [String: Any]
    var encoder = model["encoder"] as! [String: Any]
    encoder["numHeads"] = 0
    model["encoder"] = encoder
    config["model"] = model
    json["config"] = config
    try JSONSerialization.data(withJSONObject: json).write(to: state)
    for args in [["eval", "--checkpoint", run], finetune, ["report", run, "-o", dir.appendingPathComponent("r.html").path]] {
      try check(Case(name: "\(args[0]) of an edited state.json", args: args, says: [state.path, "numHeads 0"]))
    }
  }
}
