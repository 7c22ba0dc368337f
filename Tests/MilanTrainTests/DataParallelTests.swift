// Data parallelism under Open MPI's mpirun (as root: --allow-run-as-root; --oversubscribe for more ranks than
// cores): 2 ranks with a per-rank batch of B/2 against 1 process with batch B, same seed — losses, every weight and
// the AdamW moments after 5 steps, for pretraining (cached teacher targets on IDX data, and augmented crops on an
// image folder) and for finetuning; k-NN / linear-probe scores and embeddings from 2 ranks equal to one process's;
// a rank killed with SIGKILL ends the job within seconds naming the rank; SIGTERM to one rank gives one coordinated
// checkpoint and exit 0, from which both the same and another number of processes resume; the weight checksum
// stops ranks that drifted apart. scripts/install-deps.sh installs openmpi-bin and libopenmpi3.
import Foundation
import MilanIO
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

enum MPI {
  static var mpirun: String? {
    ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }
  }
  static var available: Bool { mpirun != nil }
  static let flags = ["--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
}

/// Runs `mpirun -np N milan args…`, or, with MILAN_TEST_MPIRUN set (scripts/multihost-netns.sh sets it to an
/// mpirun across two network-namespace hosts), that launcher instead of the local mpirun.
func mpiMilan(_ n: Int, _ args: [String], environment: [String: String] = [:]) throws -> CommandResult {
  let exe = try milanExecutable().path
  let quoted = (["-np", String(n), exe] + args).map { "'\($0)'" }.joined(separator: " ")
  let launcher = ProcessInfo.processInfo.environment["MILAN_TEST_MPIRUN"]
    ?? ([MPI.mpirun!] + MPI.flags).map { "'\($0)'" }.joined(separator: " ")
  let r = try milan([], environment: environment, shell: launcher + " " + quoted)
  if ProcessInfo.processInfo.environment["MILAN_TEST_MPIRUN"] != nil {
    let line = r.stdout.split(separator: "\n").first { $0.hasPrefix("data-parallel:") } ?? "no data-parallel line"
    print("ok  launched by MILAN_TEST_MPIRUN: \(line)")
  }
  return r
}

/// The PIDs of the ranks (processes whose command line is `EXE pretrain … -o OUT`) training into `out`, in
/// increasing order, read from /proc (procps's pgrep is not on every fresh Debian).
func rankPIDs(_ exe: String, _ out: URL) throws -> [Int32] {
  var pids: [Int32] = []
  for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc") {
    guard let pid = Int32(entry), let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
    let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    guard args.count > 2, args[0] == exe, args[1] == "pretrain",
          let o = args.firstIndex(of: "-o"), o + 1 < args.count, args[o + 1] == out.path else { continue }
    pids.append(pid)
  }
  return pids.sorted()
}

/// A 2-rank `milan` job started in the background (output to `log`), once its run folder's log.jsonl has grown
/// past `bytes` (training has begun). The launcher starts with SIGINT/SIGTERM/SIGUSR1 unblocked, as from a
/// terminal (the test runner's children inherit them blocked), and is mpirun itself (`exec`).
func backgroundJob(_ args: [String], run: URL, log: URL, bytes: Int = 2000) throws -> Process {
  let exe = try milanExecutable().path
  let line = ([MPI.mpirun!] + MPI.flags + ["-np", "2", exe] + args).map { "'\($0)'" }.joined(separator: " ")
  let p = Process()
  p.executableURL = URL(fileURLWithPath: "/bin/sh")
  p.arguments = ["-c", "exec perl -MPOSIX -e 'sigprocmask(SIG_UNBLOCK, POSIX::SigSet->new(SIGUSR1, SIGTERM, SIGINT)); "
    + "exec @ARGV' " + line + " > '\(log.path)' 2>&1"]
  try p.run()
  let logURL = run.appendingPathComponent("log.jsonl"), deadline = Date().addingTimeInterval(60)
  while Date() < deadline, ((try? Data(contentsOf: logURL))?.count ?? 0) < bytes { usleep(20_000) }
  return p
}

/// Largest |a − b| over every float tensor of two safetensors files, relative to each tensor's largest |a|.
struct FileComparison {
  var maxRelative = 0.0
  var worst = ""
  init(_ a: URL, _ b: URL, only: (String) -> Bool = { _ in true }) throws {
    let fa = try SafeTensorsFile(contentsOf: a), fb = try SafeTensorsFile(contentsOf: b)
    #expect(Set(fa.tensors.map(\.name)) == Set(fb.tensors.map(\.name)))
    for t in fa.tensors where only(t.name) && t.dtype == .F32 {
      let x = try fa.tensor(t.name).toArray(), y = try fb.tensor(t.name).toArray()
      let scale = Double(x.map(abs).max() ?? 0)
      guard scale > 0 else { continue }
      let d = zip(x, y).map { Double(abs($0 - $1)) }.max() ?? 0
      if d / scale > maxRelative { (maxRelative, worst) = (d / scale, t.name) }
    }
  }
}

/// Weights of two runs: entries with a real gradient (√v of AdamW ≥ 1 % of the tensor's largest) within `tolerance`
/// of the tensor's scale; entries whose gradient is rounding noise (e.g. the key biases, whose exact gradient is 0)
/// may each move by Adam's step lr per update in either run, so they are held to 2 · Σ lr.
func compareWeights(_ a: URL, _ b: URL, moments: URL, lrSum: Double, tolerance: Double, _ label: String) throws {
  let fa = try SafeTensorsFile(contentsOf: a), fb = try SafeTensorsFile(contentsOf: b)
  let fm = try SafeTensorsFile(contentsOf: moments)
  var worst = 0.0, worstNoise = 0.0, strict = 0, noise = 0
  for t in fa.tensors where (try? fm.info(t.name + ".exp_avg_sq")) != nil {
    let x = try fa.tensor(t.name).toArray(), y = try fb.tensor(t.name).toArray()
    let v = try fm.tensor(t.name + ".exp_avg_sq").toArray().map { $0.squareRoot() }
    let scale = Double(x.map(abs).max() ?? 0), vmax = v.max() ?? 0
    for i in 0..<x.count {
      let d = Double(abs(x[i] - y[i]))
      if v[i] >= 0.01 * vmax {
        strict += 1
        worst = max(worst, d / max(scale, 1e-30))
      } else {
        noise += 1
        worstNoise = max(worstNoise, d)
      }
    }
  }
  print(String(format: "ok  %@: %d weights with real gradients differ by ≤ %.2e of their tensor's scale (tolerance %.0e); "
    + "%d noise-gradient weights by ≤ %.2e (bound 2·Σlr = %.2e)", label, strict, worst, tolerance, noise, worstNoise,
    2 * lrSum))
  #expect(worst <= tolerance, "\(label): weights differ by \(worst) of their scale")
  #expect(worstNoise <= 2 * lrSum * 1.001, "\(label): noise-gradient weights moved \(worstNoise)")
}

func logLosses(_ run: URL) throws -> [Double] {
  try String(contentsOf: run.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n")
    .map { (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["loss"] as! Double }
}

func logLRs(_ run: URL) throws -> [Double] {
  try String(contentsOf: run.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n")
    .map { (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["lr"] as! Double }
}

@Suite(.serialized, .enabled(if: MPI.available || Real.required, "needs Open MPI (scripts/install-deps.sh installs it)"))
struct DataParallelTests {
  static let clip = Fixtures.url("models/clip_openclip.safetensors").path

  /// 5 steps on 10 Fashion-MNIST images (IDX: teacher targets cached, computed in shares and gathered).
  func idxPretrain(_ out: URL, batch: Int, _ extra: [String] = []) -> [String] {
    ["pretrain", "--data-dir", Real.data, "--train-images", "10", "--model", "vit_demo_patch4_32", "--patch-size", "8",
     "--epochs", "1", "--warmup-epochs", "0.4", "--batch-size", String(batch), "--teacher", Self.clip, "--blr", "0.05",
     "-o", out.path] + extra
  }

  func expectEquivalent(_ one: URL, _ two: URL, _ label: String, modelFile: String = "model.safetensors",
                        optimizerFile: String = "optimizer.safetensors") throws {
    let l1 = try logLosses(one), l2 = try logLosses(two)
    #expect(l1.count == l2.count && l1.count >= 5)
    let lossDiff = zip(l1, l2).map { abs($0 - $1) / max(abs($0), 1e-12) }.max()!
    print(String(format: "ok  %@ losses over %d steps: max relative difference %.2e (tolerance 1e-6)", label, l1.count, lossDiff))
    #expect(lossDiff <= 1e-6, "\(label) losses \(l1) vs \(l2)")
    let m = try FileComparison(one.appendingPathComponent(optimizerFile), two.appendingPathComponent(optimizerFile)) {
      $0.hasSuffix(".exp_avg") || $0.hasSuffix(".exp_avg_sq")
    }
    print(String(format: "ok  %@ AdamW moments: max |Δ| / scale %.2e (%@; tolerance 1e-5)", label, m.maxRelative, m.worst))
    #expect(m.maxRelative <= 1e-5)
    try compareWeights(one.appendingPathComponent(modelFile), two.appendingPathComponent(modelFile),
                       moments: one.appendingPathComponent(optimizerFile), lrSum: try logLRs(one).reduce(0, +),
                       tolerance: 1e-4, "\(label) weights")
  }

  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func pretrainingOnTwoRanksEqualsOneProcess() throws {
    let dir = try scratchDir("dp-pre")
    defer { try? FileManager.default.removeItem(at: dir) }
    let one = dir.appendingPathComponent("one"), two = dir.appendingPathComponent("two")
    let r1 = try milan(idxPretrain(one, batch: 2))
    #expect(r1.status == 0, "\(r1.text)")
    let r2 = try mpiMilan(2, idxPretrain(two, batch: 1))
    #expect(r2.status == 0, "\(r2.text)")
    #expect(r2.stdout.contains("data-parallel: 2 processes"), "\(r2.stdout)")
    let state = try TrainState.read(two)
    #expect(state.config.processes == 2 && state.config.batchSize == 1 && state.step == 5)
    try expectEquivalent(one, two, "pretraining (IDX, cached targets)")
  }

  /// Augmented crops on an image folder: each image's crop is keyed by its place in the global batch.
  @Test func augmentedPretrainingOnTwoRanksEqualsOneProcess() throws {
    let dir = try scratchDir("dp-aug")
    defer { try? FileManager.default.removeItem(at: dir) }
    let data = try tinyImageNet(dir.appendingPathComponent("data")).appendingPathComponent("train").path
    func args(_ out: URL, _ batch: Int) -> [String] {
      ["pretrain", "--data-dir", data, "--model", "vit_demo_patch4_32", "--patch-size", "8", "--epochs", "2",
       "--warmup-epochs", "0.5", "--batch-size", String(batch), "--teacher", Self.clip, "--masking", "random",
       "-o", out.path]
    }
    let one = dir.appendingPathComponent("one"), two = dir.appendingPathComponent("two")
    #expect(try milan(args(one, 2)).status == 0)
    let r = try mpiMilan(2, args(two, 1))
    #expect(r.status == 0, "\(r.text)")
    try expectEquivalent(one, two, "pretraining (augmented folder)")
  }

  /// Finetuning (drop path, RandAugment, random erasing keyed per sample; Mixup off: timm's Mixup pairs images
  /// within each process's batch, so with it a split run is a different run), and its test scores.
  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func finetuningOnTwoRanksEqualsOneProcess() throws {
    let dir = try scratchDir("dp-ft")
    defer { try? FileManager.default.removeItem(at: dir) }
    let pre = dir.appendingPathComponent("pre")
    #expect(try milan(idxPretrain(pre, batch: 2)).status == 0)
    func args(_ out: URL, _ batch: Int) -> [String] {
      ["finetune", "--checkpoint", pre.path, "-o", out.path, "--epochs", "1", "--warmup-epochs", "0.4",
       "--train-images", "10", "--test-images", "16", "--batch-size", String(batch), "--no-mixup", "--drop-path", "0.2"]
    }
    let one = dir.appendingPathComponent("one"), two = dir.appendingPathComponent("two")
    #expect(try milan(args(one, 2)).status == 0)
    let r = try mpiMilan(2, args(two, 1))
    #expect(r.status == 0, "\(r.text)")
    try expectEquivalent(one, two, "finetuning", modelFile: "classifier.safetensors",
                         optimizerFile: "finetune-optimizer.safetensors")
    let s1 = try jsonObject(one.appendingPathComponent("finetune.json")), s2 = try jsonObject(two.appendingPathComponent("finetune.json"))
    #expect((s1["test"] as! [String: Any])["top1"] as? Double == (s2["test"] as! [String: Any])["top1"] as? Double)
  }

  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func evaluationAndEmbeddingOnTwoRanksEqualOneProcess() throws {
    let dir = try scratchDir("dp-eval")
    defer { try? FileManager.default.removeItem(at: dir) }
    let pre = dir.appendingPathComponent("pre")
    #expect(try milan(idxPretrain(pre, batch: 2)).status == 0)
    let args = ["eval", "--checkpoint", pre.path, "--train-images", "60", "--test-images", "30", "--probe-epochs", "3",
                "--probe-batch", "16"]
    let j1 = dir.appendingPathComponent("one.json"), j2 = dir.appendingPathComponent("two.json")
    #expect(try milan(args + ["--json", j1.path]).status == 0)
    let r = try mpiMilan(2, args + ["--json", j2.path])
    #expect(r.status == 0, "\(r.text)")
    let a = try JSONDecoder().decode(EvaluationReport.self, from: Data(contentsOf: j1))
    let b = try JSONDecoder().decode(EvaluationReport.self, from: Data(contentsOf: j2))
    #expect(a.rows.count == 4 && a.rows.map(\.name) == b.rows.map(\.name))
    for (x, y) in zip(a.rows, b.rows) {
      #expect(x.knnTop1 == y.knnTop1 && x.probeTop1 == y.probeTop1 && x.probeTop5 == y.probeTop5, "\(x) vs \(y)")
    }
    let e1 = dir.appendingPathComponent("e1.safetensors"), e2 = dir.appendingPathComponent("e2.safetensors")
    let embed = ["embed", "--checkpoint", pre.path, "--split", "test", "--images", "9", "--tokens", "all", "--attention"]
    #expect(try milan(embed + ["-o", e1.path]).status == 0)
    #expect(try mpiMilan(2, embed + ["-o", e2.path]).status == 0)
    let c = try FileComparison(e1, e2)
    #expect(c.maxRelative == 0, "embeddings differ: \(c.maxRelative) in \(c.worst)")
    #expect(try SafeTensorsFile(contentsOf: e2).indices("indices").values == Array(0..<9))
  }

  /// SIGTERM to one rank, or SIGUSR1 to mpirun: every rank stops at the same step, rank 0 writes one checkpoint, the
  /// job exits 0; resuming on 2 ranks gives the uninterrupted 2-rank run bit for bit, and 1 process can resume it
  /// too (same global batch).
  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func aSignalToOneRankCheckpointsEveryRankAndResumes() throws {
    let dir = try scratchDir("dp-stop")
    defer { try? FileManager.default.removeItem(at: dir) }
    func args(_ out: URL) -> [String] {
      ["pretrain", "--data-dir", Real.data, "--train-images", "2400", "--model", "vit_demo_patch4_32", "--patch-size",
       "8", "--epochs", "2", "--batch-size", "8", "--teacher", Self.clip, "-o", out.path]
    }
    let whole = dir.appendingPathComponent("whole"), cut = dir.appendingPathComponent("cut")
    let w = try mpiMilan(2, args(whole))
    #expect(w.status == 0, "\(w.text)")

    // The interrupted run, in the background; SIGTERM to rank 1 once training has begun.
    let exe = try milanExecutable().path
    let p = try backgroundJob(args(cut), run: cut, log: dir.appendingPathComponent("cut.out"))
    let pids = try rankPIDs(exe, cut)
    try #require(pids.count >= 2, "ranks not found: \(pids)")
    kill(pids.last!, SIGTERM)
    p.waitUntilExit()
    let out = try String(contentsOf: dir.appendingPathComponent("cut.out"), encoding: .utf8)
    #expect(p.terminationStatus == 0 && out.contains("interrupted: checkpoint written"), "\(out)")
    let state = try TrainState.read(cut)
    #expect(state.iteration > 0 && state.epoch < 2, "stopped at epoch \(state.epoch) iteration \(state.iteration)")

    // SIGUSR1 to mpirun (the way to stop a job from its terminal: mpirun forwards it to every rank) does the same.
    let viaLauncher = dir.appendingPathComponent("usr1")
    let q = try backgroundJob(args(viaLauncher), run: viaLauncher, log: dir.appendingPathComponent("usr1.out"))
    kill(q.processIdentifier, SIGUSR1)
    q.waitUntilExit()
    let out2 = try String(contentsOf: dir.appendingPathComponent("usr1.out"), encoding: .utf8)
    #expect(q.terminationStatus == 0 && out2.contains("interrupted: checkpoint written"), "\(out2)")
    #expect(try TrainState.read(viaLauncher).iteration > 0)

    // Resume on another number of processes in a copy, on the same number in place.
    let other = dir.appendingPathComponent("other")
    try FileManager.default.copyItem(at: cut, to: other)
    let r2 = try mpiMilan(2, ["pretrain", "-o", cut.path, "--resume"])
    #expect(r2.status == 0, "\(r2.text)")
    #expect(try Data(contentsOf: whole.appendingPathComponent("model.safetensors"))
      == Data(contentsOf: cut.appendingPathComponent("model.safetensors")), "2-rank resume differs from the whole run")
    let r1 = try milan(["pretrain", "-o", other.path, "--resume"])
    #expect(r1.status == 0 && r1.stdout.contains("resuming on 1 process(es) instead of 2: 16 images each"), "\(r1.text)")
    let c = try FileComparison(whole.appendingPathComponent("optimizer.safetensors"),
                               other.appendingPathComponent("optimizer.safetensors")) { $0.hasSuffix(".exp_avg") }
    print(String(format: "ok  resumed on 1 process after 2: AdamW first moments within %.2e of scale", c.maxRelative))
    #expect(c.maxRelative <= 1e-3)
  }

  /// A rank killed with SIGKILL: the job ends within seconds, non-zero, and the message names the rank.
  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func aKilledRankEndsTheJobNamingIt() throws {
    let dir = try scratchDir("dp-kill")
    defer { try? FileManager.default.removeItem(at: dir) }
    let run = dir.appendingPathComponent("run")
    let exe = try milanExecutable().path
    let args = ["pretrain", "--data-dir", Real.data, "--train-images", "4000", "--model", "vit_demo_patch4_32",
                "--patch-size", "8", "--epochs", "50", "--batch-size", "8", "--teacher", Self.clip, "-o", run.path]
    let p = try backgroundJob(args, run: run, log: dir.appendingPathComponent("out"))
    let pids = try rankPIDs(exe, run)
    try #require(pids.count >= 2)
    let t0 = Date()
    kill(pids.last!, SIGKILL)
    p.waitUntilExit()
    let took = Date().timeIntervalSince(t0)
    let out = try String(contentsOf: dir.appendingPathComponent("out"), encoding: .utf8)
    print(String(format: "ok  killed rank: job ended %.1f s later with status %d", took, p.terminationStatus))
    #expect(p.terminationStatus != 0 && took < 15)
    #expect(out.contains("rank 1") && out.contains("signal 9"), "\(out)")
  }

  /// Ranks whose weights differ (one weight nudged on rank 1, by the test hook) are stopped by the checksum.
  @Test(.enabled(if: FileManager.default.fileExists(atPath: Real.data), "needs dataset-fashion-mnist"))
  func ranksThatDriftApartAreStopped() throws {
    let dir = try scratchDir("dp-drift")
    defer { try? FileManager.default.removeItem(at: dir) }
    let run = dir.appendingPathComponent("run")
    let r = try mpiMilan(2, idxPretrain(run, batch: 1, ["--epochs", "3"]),
                         environment: ["MILAN_INJECT_DRIFT": "1:2", "MILAN_DRIFT_CHECK_EVERY": "3"])
    #expect(r.status != 0 && r.text.contains("drifted apart at step 3"), "\(r.text)")
  }
}
