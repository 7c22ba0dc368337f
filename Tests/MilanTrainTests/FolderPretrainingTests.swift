// Pretraining on an ImageNet-style folder with the reference's augmentation (RandomResizedCrop + flip, the teacher on
// the same crops every step): an unreadable image is skipped, warned about and counted in the log; too many stop the
// run with a clear message; an interrupted augmented run resumes bit for bit; the KD objective trains; configuration
// files may leave out optional fields. Teacher: the tiny CLIP fixture (fast, no downloads).
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

func clipFixtureTeacher() throws -> CLIPVisionTeacher {
  let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
  let t = CLIPVisionTeacher(CLIPVisionConfig(imageSize: 32, patchSize: 8, width: 48, layers: 2, heads: 3, outputDim: 24))
  try t.loadCLIP(try f.tensors().filter { $0.key.hasPrefix("visual.") })
  return t
}

func folderConfig(_ out: URL, epochs: Int = 1, decoder: MILANConfig.Decoder = .prompting) -> PretrainConfig {
  let enc = ViTConfig(imageSize: 32, patchSize: 8, embedDim: 32, depth: 2, numHeads: 2)
  var c = PretrainConfig(model: MILANConfig(encoder: enc, decoderDim: 16, decoderDepth: 1, decoderHeads: 2,
                                            decoder: decoder, predictionDim: 24),
                         imageSize: 32, teacherImageSize: 32, epochs: epochs, warmupEpochs: 0, batchSize: 2, blr: 1e-3,
                         dataDir: Fixtures.url("images/files/tiny_folder").path, teacherPath: "", outputDir: out.path)
  c.maxUnreadableFraction = 0.2  // 1 of the 7 files is corrupt
  return c
}

final class Lines: @unchecked Sendable {
  private let lock = NSLock()
  private var store: [String] = []
  func add(_ s: String) { lock.withLock { store.append(s) } }
  var all: [String] { lock.withLock { store } }
}

@Suite(.serialized) struct FolderPretrainingTests {
  @Test func corruptImageIsSkippedWarnedAndCounted() throws {
    let out = tempDir("folder")
    defer { try? FileManager.default.removeItem(at: out) }
    let lines = Lines()
    let t = try Pretrainer(folderConfig(out, epochs: 2), teacher: try clipFixtureTeacher(), log: { lines.add($0) })
    #expect(t.config.augment)
    let final = try t.run()
    #expect(final.epoch == 2 && final.step == 6)  // 7 images, batch 2 → 3 steps per epoch
    let warnings = lines.all.filter { $0.contains("unreadable") && $0.contains("corrupt.jpg") }
    #expect(warnings.count == 1, "\(lines.all)")
    let log = try String(contentsOf: out.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n")
    #expect(log.count == 6)
    let last = try JSONSerialization.jsonObject(with: Data(log.last!.utf8)) as! [String: Any]
    #expect(last["unreadable_images"] as? Int == 1, "\(last)")
    #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))
  }

  @Test func tooManyUnreadableImagesStopTheRun() throws {
    let out = tempDir("folder-strict")
    defer { try? FileManager.default.removeItem(at: out) }
    var c = folderConfig(out)
    c.maxUnreadableFraction = 0.1
    let t = try Pretrainer(c, teacher: try clipFixtureTeacher(), log: { _ in })
    do {
      try t.run()
      Issue.record("the run went on with more unreadable images than allowed")
    } catch let e as DataLoadError {
      #expect(String(describing: e).contains("1 of 7 images could not be read") && String(describing: e).contains("corrupt.jpg"),
              "\(e)")
    }
  }

  @Test func augmentedRunResumesBitForBit() throws {
    simdLevelLock.lock()
    defer { simdLevelLock.unlock() }
    let a = tempDir("aug-a"), b = tempDir("aug-b")
    defer { try? FileManager.default.removeItem(at: a); try? FileManager.default.removeItem(at: b) }
    let teacher = try clipFixtureTeacher()
    let full = try Pretrainer(folderConfig(a, epochs: 2), teacher: teacher, log: { _ in })
    let finalA = try full.run()
    let first = try Pretrainer(folderConfig(b, epochs: 2), teacher: teacher, log: { _ in })
    var calls = 0
    first.shouldStop = { calls += 1; return calls == 4 }
    _ = try first.run()
    #expect(first.interrupted)
    let second = try Pretrainer(folderConfig(b, epochs: 2), teacher: teacher, log: { _ in })
    second.shouldStop = { false }
    let finalB = try second.run(from: try Checkpoint.load(into: second.model, optimizer: second.optimizer, from: b))
    #expect(finalA.lastLoss == finalB.lastLoss && finalA.step == finalB.step)
    #expect(try Data(contentsOf: a.appendingPathComponent("model.safetensors"))
      == Data(contentsOf: b.appendingPathComponent("model.safetensors")))
  }

  @Test func knowledgeDistillationObjectiveTrains() throws {
    let out = tempDir("kd")
    defer { try? FileManager.default.removeItem(at: out) }
    var c = folderConfig(out, epochs: 4, decoder: .kd)
    c.augment = false
    c.blr = 1e-2
    c.gradClip = 1
    let t = try Pretrainer(c, teacher: try clipFixtureTeacher(), log: { _ in })
    _ = try t.run()
    let log = try String(contentsOf: out.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n")
      .map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    let losses = log.map { $0["loss"] as! Double }
    #expect(losses.suffix(3).reduce(0, +) < losses.prefix(3).reduce(0, +), "KD loss did not fall: \(losses)")
    #expect(log.allSatisfy { $0["grad_norm"] != nil })
    let keys = Set(try SafeTensorsFile(contentsOf: out.appendingPathComponent("model.safetensors")).tensors.map(\.name))
    #expect(keys.contains("kd_pred.weight") && !keys.contains("decoder_pred.weight") && !keys.contains("mask_token"))
  }

  @Test func configFilesMayOmitOptionalFields() throws {
    let json = """
      {"model": {"encoder": {"imageSize": 32, "patchSize": 4, "embedDim": 64, "depth": 2, "numHeads": 2},
                 "decoderDim": 32, "decoderDepth": 1, "decoderHeads": 2, "predictionDim": 384},
       "imageSize": 32, "epochs": 3, "batchSize": 16, "blr": 0.001, "augment": true}
      """
    let c = try JSONDecoder().decode(PretrainConfig.self, from: Data(json.utf8))
    #expect(c.teacherImageSize == 32 && c.maskRatio == 0.75 && c.masking == .semantic && c.augment && c.cropScale == [0.2, 1])
    #expect(c.gradClip == nil && c.accumulation == 1 && c.dataDir.isEmpty)
    var bad = c
    bad.cropScale = [0.5, 0.2]
    #expect(throws: PretrainError.self) { try bad.validate() }
    #expect(throws: DecodingError.self) {
      _ = try JSONDecoder().decode(PretrainConfig.self, from: Data(#"{"imageSize": 32}"#.utf8))
    }
  }
}
