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
                                            decoder: decoder),
                         dataDir: Fixtures.url("images/files/tiny_folder").path, teacherPath: "", outputDir: out.path)
  c.epochs = epochs
  c.warmupEpochs = 0
  c.batchSize = 2
  c.blr = 1e-3
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
    #expect(t.config.augment == true && t.config.teacherImageSize == 32 && t.config.model.predictionDim == 24)
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

  /// A configuration file may leave out any field: it gets the documented default (`PretrainConfig.defaults`, what
  /// the command line uses too), and the three "follow" fields stay open until a run resolves them.
  @Test func configFilesTakeTheDocumentedDefaults() throws {
    func decode(_ json: String) throws -> PretrainConfig { try JSONDecoder().decode(PretrainConfig.self, from: Data(json.utf8)) }
    #expect(try decode("{}") == PretrainConfig.defaults)
    let d = PretrainConfig.defaults
    #expect(d.augment == nil && d.teacherImageSize == nil && d.model.predictionDim == 0 && d.trainImages == nil)
    #expect(d.blr == 2e-3 && d.epochs == 15 && d.model.encoder == ViTConfig.named("vit_demo_patch4_32"))

    let c = try decode(#"{"epochs": 3, "model": {"encoder": "vit_small_patch16_224"}, "maskedLossOnly": true}"#)
    #expect(c.epochs == 3 && c.imageSize == 224 && c.model.encoder.embedDim == 384 && c.model.decoderDim == 512
      && c.model.decoderDepth == 8 && c.model.lossTokens == .masked && c.blr == d.blr && c.augment == nil)
    let sized = try decode(#"{"imageSize": 96, "model": {"encoder": {"patchSize": 16, "embedDim": 64, "depth": 2, "numHeads": 2}}}"#)
    #expect(sized.imageSize == 96 && sized.model.encoder.imageSize == 96)
    #expect(throws: DecodingError.self) { _ = try decode(#"{"imageSize": 32, "model": {"encoder": "vit_small_patch16_224"}}"#) }
    #expect(throws: DecodingError.self) { _ = try decode(#"{"model": {"encoder": "vit_enormous_patch16_224"}}"#) }

    // Written with the image size once; read back equal.
    let json = String(decoding: try PretrainConfig.jsonEncoder().encode(c), as: UTF8.self)
    #expect(json.components(separatedBy: "\"imageSize\"").count == 2, "\(json)")
    #expect(try decode(json) == c)

    var bad = c
    bad.cropScale = [0.5, 0.2]
    #expect(throws: PretrainError.self) { try bad.validate() }
    var kdMasked = c
    kdMasked.model.decoder = .kd
    #expect(throws: PretrainError.self) { try kdMasked.validate() }
  }

  /// What a run resolves: augmentation off for an IDX set, on for an image folder; no teacher is read for the pixel
  /// target with random masking (MAE), and the prediction size is the pixel patch.
  @Test func aRunResolvesAugmentationAndNeedsNoTeacherForPixels() throws {
    var c = folderConfig(tempDir("resolve"))
    c.model.target = .pixels
    c.model.lossTokens = .masked
    c.masking = .random
    c.teacherPath = "/nonexistent/teacher.onnx"
    let folder = try Pretrainer(c, log: { _ in })
    #expect(folder.teacher == nil && folder.config.augment == true && folder.config.teacher == nil)
    #expect(folder.config.model.predictionDim == 8 * 8 * 3)
    if FileManager.default.fileExists(atPath: Real.data) {
      c.dataDir = Real.data
      #expect(try Pretrainer(c, log: { _ in }).config.augment == false)
    }
    c.masking = .semantic  // semantic-aware masking needs the teacher's attention
    do {
      _ = try Pretrainer(c, log: { _ in })
      Issue.record("a missing teacher file was not reported")
    } catch let e as TeacherFileError {
      #expect(e.description.contains("/nonexistent/teacher.onnx") && e.description.contains("no such file"), "\(e)")
    }
  }
}
