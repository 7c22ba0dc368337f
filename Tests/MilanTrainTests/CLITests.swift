// The `milan` command as a user runs it, on tiny data (the 6 readable images of the tiny folder) with tiny teachers
// read from files: pretraining with CLIP (open_clip and Hugging Face names) and DINOv2 (timm names) teachers, every
// decoder / target / loss combination of the ablations, `milan step` on a MAE-decoder checkpoint with the recorded
// teacher and given AdamW moments, `milan eval` naming the real teacher, `milan embed` against timm's
// forward_features, `milan convert --image-size` against timm's resampled position table, and bad input refused
// before any work with a message naming the option or file.
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

struct CommandResult {
  var status: Int32
  var stdout: String
  var stderr: String
  var text: String { stdout + stderr }
}

/// Runs `milan args…` (the executable next to the test bundle), or, with `shell`, a shell command line in which
/// `milan` is found on PATH.
@discardableResult
func milan(_ args: [String], cwd: URL? = nil, environment: [String: String] = [:], shell: String? = nil) throws -> CommandResult {
  let exe = try milanExecutable()
  let p = Process()
  if let shell {
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", shell]
  } else {
    p.executableURL = exe
    p.arguments = args
  }
  var env = ProcessInfo.processInfo.environment
  env["PATH"] = exe.deletingLastPathComponent().path + ":" + (env["PATH"] ?? "/usr/bin:/bin")
  for (k, v) in environment { env[k] = v }
  p.environment = env
  if let cwd { p.currentDirectoryURL = cwd }
  let out = Pipe(), err = Pipe()
  p.standardOutput = out
  p.standardError = err
  try p.run()
  // Read both pipes while the process runs (a full pipe would block it). The stderr reader hands its data over
  // under a lock, so the hand-over is ordered for ThreadSanitizer too (polling `isFinished` alone is not).
  final class Box: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Data? = nil
    func put(_ d: Data) { lock.lock(); stored = d; lock.unlock() }
    func take() -> Data? { lock.lock(); defer { lock.unlock() }; return stored }
  }
  let errBox = Box()
  let reader = Thread { errBox.put(err.fileHandleForReading.readDataToEndOfFile()) }
  reader.start()
  let o = out.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  var e = errBox.take()
  while e == nil { usleep(1000); e = errBox.take() }
  return CommandResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                       stderr: String(decoding: e ?? Data(), as: UTF8.self))
}

/// A fresh folder holding `train/` and `val/` copies of the tiny folder's readable images (3 + 3 per split).
func tinyImageNet(_ root: URL) throws -> URL {
  let src = Fixtures.url("images/files/tiny_folder")
  for split in ["train", "val"] {
    for cls in ["n01440764", "n01443537"] {
      let dst = root.appendingPathComponent(split).appendingPathComponent(cls)
      try FileManager.default.createDirectory(at: dst, withIntermediateDirectories: true)
      for name in try FileManager.default.contentsOfDirectory(atPath: src.appendingPathComponent(cls).path)
      where !name.contains("corrupt") && !name.hasSuffix(".txt") {
        try FileManager.default.copyItem(at: src.appendingPathComponent(cls).appendingPathComponent(name),
                                         to: dst.appendingPathComponent(name))
      }
    }
  }
  return root
}

func scratchDir(_ name: String) throws -> URL {
  let u = FileManager.default.temporaryDirectory.appendingPathComponent("milan-cli-\(name)-\(UUID().uuidString)")
  try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
  return u
}

func jsonObject(_ url: URL) throws -> [String: Any] {
  try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
}

@Suite(.serialized) struct CLITests {
  /// A few iterations of `milan pretrain` on the tiny images (the demo student with patch 8 at 32 px: grid 4×4).
  func pretrain(_ out: URL, data: URL, teacher: String?, _ extra: [String] = []) throws -> CommandResult {
    var args = ["pretrain", "--data-dir", data.appendingPathComponent("train").path, "-o", out.path,
                "--model", "vit_demo_patch4_32", "--patch-size", "8", "--epochs", "2", "--batch-size", "2",
                "--warmup-epochs", "0"]
    if let teacher { args += ["--teacher", Fixtures.url(teacher).path] }
    return try milan(args + extra)
  }

  @Test(arguments: [("models/clip_openclip.safetensors", "open_clip", 24),
                    ("models/clip_hf.safetensors", "hf_clip", 24),
                    ("teachers/dinov2_timm.safetensors", "timm", 48),
                    ("models/dinov2_hf.safetensors", "dinov2_hf", 48)])
  func pretrainsWithATeacherFile(_ file: String, _ format: String, _ features: Int) throws {
    let dir = try scratchDir("teacher")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = try tinyImageNet(dir.appendingPathComponent("data")), run = dir.appendingPathComponent("run")
    let r = try pretrain(run, data: data, teacher: file)
    #expect(r.status == 0, "\(r.text)")
    #expect(r.stdout.contains("teacher: ") && r.stdout.contains("from \(Fixtures.url(file).path)"), "\(r.stdout)")
    let state = try TrainState.read(run)
    let spec = try #require(state.config.teacher)
    #expect(spec.format.rawValue == format && spec.featureDim == features && spec.inputSize == 32)
    #expect(spec.sha256 == (try FileDigest.sha256(Fixtures.url(file))))
    #expect(state.config.model.predictionDim == features && state.config.teacherImageSize == 32)
    #expect(state.epoch == 2 && state.step == 6 && state.config.augment == true)
    let model = try SafeTensorsFile(contentsOf: run.appendingPathComponent("model.safetensors"))
    #expect(try model.info("decoder_pred.weight").shape == [features, 96])
    #expect(try model.info("patch_embed.proj.weight").shape == [128, 3, 8, 8])

    // eval names the recorded teacher and scores it.
    let e = try milan(["eval", "--checkpoint", run.path, "--train-images", "6", "--test-images", "6", "--probe-epochs",
                       "2", "--probe-batch", "2", "--json", dir.appendingPathComponent("eval.json").path])
    #expect(e.status == 0, "\(e.text)")
    #expect(e.stdout.contains("| teacher \(spec.name) (32 px, class token) |"), "\(e.stdout)")
  }

  /// Every decoder / target / loss-token combination of the ablations trains from the command line, and
  /// `milan step` runs the checkpoint's own objective (the recorded teacher read again, AdamW moments given).
  @Test(arguments: [
    ["--decoder", "mae"],                                              // teacher features, MAE decoder (all 1 + L)
    ["--decoder", "mae", "--masking", "random"],
    ["--decoder", "mae", "--loss-tokens", "masked"],
    ["--decoder", "mae", "--target", "pixels", "--masking", "random"],  // MAE itself: no teacher read
    ["--decoder", "prompting", "--loss-tokens", "patches"],
    ["--masked-loss-only"],
    ["--decoder", "prompting", "--target", "pixels", "--loss-tokens", "patches"],
    ["--decoder", "kd", "--grad-clip", "1"],
    ["--decoder", "kd", "--loss-tokens", "patches", "--masking", "random"],
  ])
  func ablationPathsTrainAndStep(_ flags: [String]) throws {
    let dir = try scratchDir("ablation")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = try tinyImageNet(dir.appendingPathComponent("data")), run = dir.appendingPathComponent("run")
    let pixelsRandom = flags.contains("pixels") && flags.contains("random")
    let r = try pretrain(run, data: data, teacher: pixelsRandom ? nil : "models/clip_openclip.safetensors",
                         flags + (pixelsRandom ? ["--teacher", "/nonexistent/never-read.onnx"] : []))
    #expect(r.status == 0, "\(flags): \(r.text)")
    let state = try TrainState.read(run)
    #expect(state.step == 6 && state.lastLoss.map { $0.isFinite } == true, "\(flags)")
    #expect((state.config.teacher == nil) == pixelsRandom)
    let log = try String(contentsOf: run.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n")
    #expect(log.count == 6)

    // One step of the checkpoint on a batch, as the command runs it; moments from the checkpoint's optimizer file.
    let c = state.config
    var rng = SplitMix64(seed: 5)
    var b = SafeTensorsWriter()
    try b.add(name: "images", tensor: Tensor.randn([2, 3, 32, 32], rng: &rng))
    try b.add(name: c.masking == .semantic ? "exp_noise" : "uniform_noise",
              tensor: c.masking == .semantic ? Masking.expNoise([2, 16], rng: &rng) : Tensor.uniform([2, 16], rng: &rng))
    let batch = dir.appendingPathComponent("batch.safetensors"), out = dir.appendingPathComponent("out.safetensors")
    try b.write(to: batch)
    let optimizer = run.appendingPathComponent("optimizer.safetensors")
    let s = try milan(["step", "--checkpoint", run.path, "--batch", batch.path, "-o", out.path, "--adamw-lr", "1e-3",
                       "--optimizer", optimizer.path])
    #expect(s.status == 0, "\(flags): \(s.text)")
    let o = try SafeTensorsFile(contentsOf: out), moments = try SafeTensorsFile(contentsOf: optimizer)
    #expect((try o.tensor("loss")).data[0].isFinite)
    // The given first moments were continued: exp_avg' = 0.9·exp_avg + 0.1·grad (β1 = 0.9), not 0.1·grad.
    let key = "blocks.0.attn.qkv.weight"
    let m0 = try moments.tensor(key + ".exp_avg").toArray(), g = try o.tensor("grad." + key).toArray()
    let m1 = try o.tensor("exp_avg." + key).toArray()
    var scale = 0.0, err = 0.0, fresh = 0.0
    for i in 0..<m1.count {
      let got = Double(m1[i]), want = 0.9 * Double(m0[i]) + 0.1 * Double(g[i])
      scale = max(scale, abs(got))
      err = max(err, abs(got - want))
      fresh = max(fresh, abs(got - 0.1 * Double(g[i])))
    }
    (err, fresh) = (err / scale, fresh / scale)
    #expect(err < 1e-6 && fresh > 1e-2, "\(flags): continued moments off by \(err) of their scale; from zero: \(fresh)")
  }

  @Test func embedMatchesTimmForwardFeatures() throws {
    let dir = try scratchDir("embed")
    defer { try? FileManager.default.removeItem(at: dir) }
    // The fixture ViT under plain timm names, its head count in the metadata as timm's config would give it.
    let src = try SafeTensorsFile(contentsOf: Fixtures.url("models/vit_timm.safetensors"))
    var w = SafeTensorsWriter(metadata: ["config": #"{"num_heads": 3}"#])
    for t in src.tensors where t.name.hasPrefix("model.") { try w.add(name: String(t.name.dropFirst(6)), tensor: try src.tensor(t.name)) }
    let encoder = dir.appendingPathComponent("vit.safetensors")
    try w.write(to: encoder)
    let ref = try SafeTensorsFile(contentsOf: Fixtures.url("embed/vit_timm_embed.safetensors"))
    let folder = Fixtures.url("embed/folder").path
    let out = dir.appendingPathComponent("all.safetensors")
    let r = try milan(["embed", "--encoder", encoder.path, "--data-dir", folder, "--tokens", "all", "--attention",
                       "-o", out.path])
    #expect(r.status == 0, "\(r.text)")
    let f = try SafeTensorsFile(contentsOf: out)
    #expect(compare(try f.tensor("features"), try ref.tensor("features"), atol: 1e-5, rtol: 1e-4, "embed vs timm forward_features").ok)
    #expect(compare(try f.tensor("cls_attention"), try ref.tensor("cls_attention"), atol: 1e-6, rtol: 1e-4, "embed class attention").ok)
    #expect(try f.indices("labels").values == ref.indices("labels").values)
    func list(_ s: String?) -> [String] { (try? JSONDecoder().decode([String].self, from: Data((s ?? "").utf8))) ?? [] }
    #expect(list(f.metadata["files"]) == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"])
    #expect(list(f.metadata["files"]) == list(ref.metadata["files"]) && list(f.metadata["classes"]) == ["cat", "dog"])
    // Class token and mean are the same numbers, pooled.
    let all = try f.tensor("features")
    for (tokens, row) in [("cls", 0), ("mean", -1)] {
      let o = dir.appendingPathComponent("\(tokens).safetensors")
      #expect(try milan(["embed", "--encoder", encoder.path, "--data-dir", folder, "--tokens", tokens, "-o", o.path]).status == 0)
      let p = try SafeTensorsFile(contentsOf: o).tensor("features")
      #expect(p.shape == [4, 48])
      for i in 0..<4 {
        for j in [0, 17, 47] {
          let want = row == 0 ? all.data[(i * 17) * 48 + j] : (1..<17).map { all.data[(i * 17 + $0) * 48 + j] }.reduce(0, +) / 16
          #expect(abs(p.data[i * 48 + j] - want) < 1e-5, "\(tokens) [\(i), \(j)]")
        }
      }
    }
    // A teacher file embeds too (its class token and attention).
    let t = dir.appendingPathComponent("teacher.safetensors")
    let tr = try milan(["embed", "--teacher", Fixtures.url("models/clip_openclip.safetensors").path, "--data-dir", folder,
                        "--attention", "-o", t.path])
    #expect(tr.status == 0, "\(tr.text)")
    let tf = try SafeTensorsFile(contentsOf: t)
    #expect(try tf.info("features").shape == [4, 24] && (try tf.info("cls_attention").shape) == [4, 16])
    #expect(tf.metadata["source"]?.contains("CLIP") == true)
  }

  /// `milan ablate` on tiny data: the requested rows × seeds train in their own folders with pretrain's engine, are
  /// scored with eval's (probe lr chosen on held-out training images), the baselines once, a table and JSON; run
  /// again, it skips everything finished.
  @Test func ablateTrainsRowsWithSeedsAndSkipsFinishedRuns() throws {
    let dir = try scratchDir("ablate")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = try tinyImageNet(dir.appendingPathComponent("data")).path, out = dir.appendingPathComponent("abl")
    let args = ["ablate", "-o", out.path, "--data-dir", data, "--teacher", Fixtures.url("models/clip_openclip.safetensors").path,
                "--epochs", "1", "--batch-size", "2", "--train-images", "6", "--rows", "mae,milan", "--seeds", "0,1", "--eval-train-images", "6",
                "--eval-test-images", "6", "--probe-epochs", "2"]
    let r = try milan(args)
    #expect(r.status == 0, "\(r.text)")
    let result = try JSONDecoder().decode(AblationResult.self, from: Data(contentsOf: out.appendingPathComponent("ablation.json")))
    #expect(result.rows.map(\.row.name) == ["mae", "milan"] && result.rows.allSatisfy { $0.runs.count == 2 })
    #expect(result.baselines.count == 3 && result.baselines.allSatisfy { $0.knnTop1 != nil })
    for row in result.rows {
      for run in row.runs {
        let state = try TrainState.read(URL(fileURLWithPath: run.folder))
        #expect(state.epoch == 1 && state.config.seed == run.seed && state.config.dataSeed == 0)
        #expect(state.config.model.decoder == row.row.decoder && state.config.masking == row.row.masking)
        #expect(run.knnTop1 != nil && run.probeTop1 != nil && [1, 4, 16, 64].contains(run.probeBlr ?? -1))
      }
    }
    #expect((try TrainState.read(URL(fileURLWithPath: result.rows[0].runs[0].folder))).config.teacher == nil)  // MAE
    let table = try String(contentsOf: out.appendingPathComponent("ablation.md"), encoding: .utf8)
    #expect(table.contains("(1) MAE") && table.contains("(2) MILAN") && table.contains("baseline: raw pixels"))
    // Again: nothing retrains or re-scores.
    let logBefore = try Data(contentsOf: URL(fileURLWithPath: result.rows[1].runs[1].folder).appendingPathComponent("log.jsonl"))
    let again = try milan(args)
    #expect(again.status == 0 && !again.stdout.contains("ablate: "), "\(again.stdout)")
    #expect(try Data(contentsOf: URL(fileURLWithPath: result.rows[1].runs[1].folder).appendingPathComponent("log.jsonl")) == logBefore)
  }

  /// IDX sets embed too: names `t10k[i]`, the set's labels.
  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func embedsAnIDXSplit() throws {
    let dir = try scratchDir("embed-idx")
    defer { try? FileManager.default.removeItem(at: dir) }
    let out = dir.appendingPathComponent("f.safetensors")
    let r = try milan(["embed", "--teacher", Fixtures.url("teachers/dinov2_timm.safetensors").path, "--data-dir", Real.data,
                       "--split", "test", "--images", "5", "--image-size", "32", "-o", out.path])
    #expect(r.status == 0, "\(r.text)")
    let f = try SafeTensorsFile(contentsOf: out)
    let idx = try DatasetLoader.open(Real.data, split: "test")
    #expect(try f.info("features").shape == [5, 48])
    #expect(try f.indices("labels").values == (0..<5).map { idx.label($0) })
    #expect(f.metadata["files"] == #"["t10k[0]","t10k[1]","t10k[2]","t10k[3]","t10k[4]"]"#)
  }

  @Test func convertResizesThePositionTableAsTimm() throws {
    let dir = try scratchDir("convert")
    defer { try? FileManager.default.removeItem(at: dir) }
    let src = try SafeTensorsFile(contentsOf: Fixtures.url("models/vit_timm.safetensors"))
    var w = SafeTensorsWriter()
    for t in src.tensors where t.name.hasPrefix("model.") { try w.add(name: String(t.name.dropFirst(6)), tensor: try src.tensor(t.name)) }
    let input = dir.appendingPathComponent("vit.safetensors"), out = dir.appendingPathComponent("vit48.safetensors")
    try w.write(to: input)
    let r = try milan(["convert", input.path, "-o", out.path, "--image-size", "48"])
    #expect(r.status == 0, "\(r.text)")
    // timm.create_model(..., img_size=48) resamples pos_embed to [1, 37, 48] with resample_abs_pos_embed.
    #expect(compare(try SafeTensorsFile(contentsOf: out).tensor("pos_embed"), try src.tensor("pos_embed_48px"),
                    atol: 1e-6, rtol: 1e-5, "pos_embed at 48 px vs timm").ok)
    let bad = try milan(["convert", input.path, "-o", out.path, "--image-size", "50"])
    #expect(bad.status != 0 && bad.stderr.contains("--image-size 50") && bad.stderr.contains("multiple of the patch size 8"),
            "\(bad.text)")
  }

  /// Bad input is refused before any work, with the option or file named.
  @Test func badInputIsRefusedWithTheOptionNamed() throws {
    let dir = try scratchDir("bad")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = try tinyImageNet(dir.appendingPathComponent("data")), run = dir.appendingPathComponent("run")
    let clip = "models/clip_openclip.safetensors"
    func refused(_ r: CommandResult, _ words: String..., file: String = #fileID, line: Int = #line) {
      #expect(r.status != 0 && words.allSatisfy { r.stderr.contains($0) },
              "status \(r.status): \(r.text)", sourceLocation: SourceLocation(fileID: file, filePath: #filePath, line: line, column: 1))
      #expect(!FileManager.default.fileExists(atPath: run.appendingPathComponent("log.jsonl").path))
    }
    refused(try pretrain(run, data: data, teacher: clip, ["--teacher-image-size", "40"]),
            "student's token grid (4×4)", "teacher's (5×5")
    refused(try pretrain(run, data: data, teacher: clip, ["--decoder", "kd", "--target", "pixels"]), "kd", "pixel")
    refused(try pretrain(run, data: data, teacher: clip, ["--loss-tokens", "everything"]), "--loss-tokens", "patches")
    refused(try pretrain(run, data: data, teacher: clip, ["--model", "vit_gigantic_patch16_224"]), "--model", "vit_gigantic")
    refused(try pretrain(run, data: data, teacher: "embed/folder/cat/a.png"), "a.png", "neither a safetensors file")
    let cfg = dir.appendingPathComponent("c.json")
    try Data(#"{"epochs": "many"}"#.utf8).write(to: cfg)
    refused(try pretrain(run, data: data, teacher: clip, ["--config", cfg.path]), "--config", "epochs")
    // A finished run resumes with its own configuration only.
    #expect(try pretrain(run, data: data, teacher: clip).status == 0)
    let r = try milan(["pretrain", "-o", run.path, "--resume", "--batch-size", "4"])
    #expect(r.status != 0 && r.stderr.contains("--batch-size cannot change it"), "\(r.text)")
    // Resuming with another teacher (48-d features where the run has 24-d ones) is refused before any step.
    let log = try Data(contentsOf: run.appendingPathComponent("log.jsonl"))
    let other = try milan(["pretrain", "-o", run.path, "--resume", "--epochs", "3", "--teacher",
                           Fixtures.url("teachers/dinov2_timm.safetensors").path])
    #expect(other.status != 0 && other.stderr.contains("the run was trained with a CLIP"), "\(other.text)")
    #expect(try Data(contentsOf: run.appendingPathComponent("log.jsonl")) == log)
    let e = try milan(["eval", "--classifier", "x.safetensors", "--data-dir", data.path, "--pool", "mean", "--k", "5"])
    #expect(e.status != 0 && e.stderr.contains("--pool, --k do not apply"), "\(e.text)")
  }
}
