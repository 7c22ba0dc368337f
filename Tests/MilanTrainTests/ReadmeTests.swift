// Every command of the README's Commands section runs as written, in order, so an example cannot go stale: HOME is a
// scratch folder whose ~/imagenette holds the tiny folder's readable images (train/ and val/), the teacher files the
// commands name are the project's tiny test teachers under those names, and each command gets a budget appended
// (one epoch of one step, a few images): the README's own flags stay as they are; the budget's come last and win.
import Foundation
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

@Suite(.serialized) struct ReadmeTests {
  /// The command lines of the first ```sh block after "## Commands" (continuations joined, comments dropped).
  static func commands() throws -> [String] {
    let readme = try String(contentsOf: Fixtures.root.appendingPathComponent("README.md"), encoding: .utf8)
    guard let section = readme.range(of: "\n## Commands\n"),
          let open = readme.range(of: "```sh\n", range: section.upperBound..<readme.endIndex),
          let close = readme.range(of: "```", range: open.upperBound..<readme.endIndex) else { return [] }
    var lines: [String] = []
    var pending = ""
    for raw in readme[open.upperBound..<close.lowerBound].split(separator: "\n") {
      var line = String(raw)
      if let hash = line.range(of: "   #") ?? line.range(of: "  #") { line = String(line[..<hash.lowerBound]) }
      line = line.trimmingCharacters(in: .whitespaces)
      if line.hasSuffix("\\") {
        pending += line.dropLast() + " "
        continue
      }
      lines.append(pending + line)
      pending = ""
    }
    return lines.filter { !$0.isEmpty }
  }

  /// What a command gets appended so that it finishes in seconds on six images.
  static func budget(_ command: String) -> String {
    var words = command.split(separator: " ").map(String.init)
    let processes = words.first == "mpirun" ? Int(words[words.firstIndex(of: "-np")! + 1])! : 1
    if let m = words.firstIndex(of: "milan") { words = Array(words[m...]) }
    guard words.count > 1, words[0] == "milan" else { return "" }
    switch words[1] {
    case "pretrain":
      if words.contains("--print-config") { return "" }
      if words.contains("--resume") { return "--epochs 1" }
      if processes > 1 { return "--epochs 1 --train-images \(2 * processes) --batch-size 1 --warmup-epochs 0" }
      return "--epochs 1 --train-images 2 --batch-size 2 --warmup-epochs 0"
    case "finetune": return "--epochs 1 --train-images 2 --test-images 2 --batch-size 2 --warmup-epochs 0"
    case "eval":
      if words.contains("--classifier") { return "--test-images 2" }
      return "--train-images 6 --test-images 4 --probe-epochs 1 --probe-batch 2"
    case "embed": return "--images 2"
    case "ablate":
      return "--rows mae,milan --seeds 0 --epochs 1 --train-images 128 --batch-size 64 --eval-train-images 100 "
        + "--eval-test-images 50 --probe-epochs 2"
    case "report": return "--images 2 --embed-images 3"
    default: return ""
    }
  }

  @Test func everyCommandOfTheReadmeRunsAsWritten() throws {
    let commands = try Self.commands()
    try #require(commands.count >= 10 && commands.allSatisfy { $0.hasPrefix("milan ") || $0.hasPrefix("mpirun ") },
                 "\(commands)")
    let root = try scratchDir("readme")
    defer { try? FileManager.default.removeItem(at: root) }
    let home = root.appendingPathComponent("home"), work = root.appendingPathComponent("work")
    _ = try tinyImageNet(home.appendingPathComponent("imagenette"))
    try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    // ~/.cache/milan: the real cache (the DINOv2 ONNX of scripts/fetch-teacher.sh) when there is one.
    let cache = URL(fileURLWithPath: PretrainConfig.defaultTeacherPath).deletingLastPathComponent().deletingLastPathComponent()
    try FileManager.default.createDirectory(at: home.appendingPathComponent(".cache"), withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(at: home.appendingPathComponent(".cache/milan"), withDestinationURL: cache)
    for (name, fixture) in [("clip_visual.safetensors", "models/clip_openclip.safetensors"),
                            ("clip_hf.safetensors", "models/clip_hf.safetensors"),
                            ("dinov2.safetensors", "teachers/dinov2_timm.safetensors")] {
      try FileManager.default.copyItem(at: Fixtures.url(fixture), to: work.appendingPathComponent(name))
    }
    // The batch of `milan step` for runs/mine's student (vit_base_patch16_224: 224 px, 14 × 14 patches).
    var rng = SplitMix64(seed: 11)
    var b = SafeTensorsWriter()
    try b.add(name: "images", tensor: Tensor.randn([2, 3, 224, 224], rng: &rng))
    try b.add(name: "exp_noise", tensor: Masking.expNoise([2, 196], rng: &rng))
    try b.write(to: work.appendingPathComponent("batch.safetensors"))

    for command in commands {
      if command.hasPrefix("mpirun ") && !MPI.available && !Real.required {
        print("skipped (no mpirun here): \(command)")
        continue
      }
      let line = command + " " + Self.budget(command)
      let t0 = Date()
      // Open MPI refuses root unless told; these two variables say it once for every mpirun line.
      let r = try milan([], cwd: work, environment: ["HOME": home.path, "OMPI_ALLOW_RUN_AS_ROOT": "1",
                                                     "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"], shell: line)
      #expect(r.status == 0, "README command failed: \(command)\n\(r.text)")
      print(String(format: "ok  README (%.1f s): %@", Date().timeIntervalSince(t0), command))
      if r.status != 0 { return }
    }
    // What the commands were for.
    let mine = try TrainState.read(work.appendingPathComponent("runs/mine"))
    #expect(mine.config.model.encoder == ViTConfig.named("vit_base_patch16_224") && mine.config.teacher?.inputSize == 112)
    #expect(try TrainState.read(work.appendingPathComponent("runs/mae")).config.teacher == nil)
    #expect(try TrainState.read(work.appendingPathComponent("runs/kd")).config.model.decoder == .kd)
    #expect(try TrainState.read(work.appendingPathComponent("runs/small")).config.teacher?.format == .timm)
    if MPI.available || Real.required {
      let two = try TrainState.read(work.appendingPathComponent("runs/small-2x")).config
      #expect(two.processes == 2 && two.effectiveBatch == 2)
    }
    let encoder = try SafeTensorsFile(contentsOf: work.appendingPathComponent("encoder.safetensors"))
    #expect(try encoder.info("pos_embed").shape == [1, 1 + 24 * 24, 768])
    let features = try SafeTensorsFile(contentsOf: work.appendingPathComponent("features.safetensors"))
    #expect(try features.info("features").shape == [2, 768])
    for file in ["step.safetensors", "eval.json", "teacher-features.safetensors", "runs/mine-ft/classifier.safetensors",
                 "clip_visual_from_hf.safetensors", "runs/mine/report.html", "runs/ablate/ablation.md",
                 "runs/ablate/report.html"] {
      #expect(FileManager.default.fileExists(atPath: work.appendingPathComponent(file).path), "\(file) missing")
    }
  }
}
