// `milan step` (SingleStep): one step of a checkpoint on a batch file, written to a safetensors file, against the
// PyTorch reference's step fixtures (tools/make_milan_fixtures.py): loss, predictions, every gradient and the AdamW
// update, for MILAN (semantic-aware + prompting decoder), random masking and the KD ablation.
import Foundation
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

@Suite struct SingleStepTests {
  func fixture(_ variant: String) throws -> [String: Tensor] {
    var all: [String: Tensor] = [:]
    for suffix in ["", "_grad", "_adamw"] {
      let f = try SafeTensorsFile(contentsOf: Fixtures.url("milan/step_\(variant)\(suffix).safetensors"))
      for t in f.tensors where t.dtype == .F32 { all[t.name] = try f.tensor(t.name) }
    }
    return all
  }

  /// `milan step` on a checkpoint written as `milan pretrain` writes it (weights + milan.config metadata) and a batch
  /// file. With `teacherFile`, the batch holds only images and noise and the teacher is read from that file
  /// (TeacherFile, as the command does) and run inside the step; its target and class attention are compared too.
  /// Without it, the teacher's outputs are in the batch (step_milan's: kd and mae_feature share its images).
  func run(_ variant: String, decoder: MILANConfig.Decoder, target: MILANConfig.Target = .features, noiseKey: String,
           teacherFile: String? = nil) throws {
    let fx = try fixture(variant)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("milan-step-\(variant)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let cfg = MILANConfig(encoder: ViTConfig(imageSize: 32, patchSize: 8, embedDim: 48, depth: 2, numHeads: 3),
                          decoderDim: 32, decoderDepth: 2, decoderHeads: 2, decoder: decoder, target: target,
                          predictionDim: target == .pixels ? 192 : 24)
    let milan = try fixture("milan")
    let configJSON = String(decoding: try JSONEncoder().encode(cfg), as: UTF8.self)
    var w = SafeTensorsWriter(metadata: ["format": "pt", "milan.config": configJSON])
    for (k, t) in fx where k.hasPrefix("model.") { try w.add(name: String(k.dropFirst(6)), tensor: t) }
    try w.write(to: dir.appendingPathComponent("model.safetensors"))
    var b = SafeTensorsWriter()
    try b.add(name: "images", tensor: fx["images"]!)
    try b.add(name: noiseKey, tensor: fx[noiseKey]!)
    if teacherFile == nil && target == .features {
      try b.add(name: "target", tensor: milan["target"]!)
      try b.add(name: "importance", tensor: milan["importance"]!)
    }
    try b.write(to: dir.appendingPathComponent("batch.safetensors"))

    let weights = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors"))
    let model = MILANModel(try SingleStep.config(of: weights))
    try model.load(try weights.tensors())
    var o = SingleStepOptions()
    o.adamwLR = 1e-3
    let teacher = try teacherFile.map { try TeacherFile.load(Fixtures.url($0).path).teacher }
    let result = try SingleStep.run(model: model, batch: try SafeTensorsFile(contentsOf: dir.appendingPathComponent("batch.safetensors")),
                                    teacher: teacher, options: o)
    try result.write(to: dir.appendingPathComponent("out.safetensors"))

    // Read back what was written, as a user of the command would.
    let out = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("out.safetensors"))
    if let teacherFile {
      #expect(compare(try out.tensor("target"), milan["target"]!, atol: 1e-5, rtol: 1e-4, "\(teacherFile) target").ok)
      #expect(compare(try out.tensor("importance"), milan["importance"]!, atol: 1e-6, rtol: 1e-4,
                      "\(teacherFile) class attention").ok)
    }
    #expect(compare(try out.tensor("loss"), fx["loss"]!, atol: 1e-6, rtol: 1e-5, "\(variant) step loss").ok)
    #expect(compare(try out.tensor("pred"), fx["pred"]!, atol: 1e-5, rtol: 1e-4, "\(variant) step pred").ok)
    #expect(try out.indices("ids_keep").values == (try SafeTensorsFile(contentsOf: Fixtures.url("milan/step_\(variant).safetensors"))
      .indices("ids_keep")).values)
    var grads = 0, strict = 0
    for (k, ref) in fx where k.hasPrefix("grad.") {
      grads += 1
      let scale = Double(ref.toArray().map(abs).max() ?? 0)
      // 1e-5 of each tensor's scale, as MILANStepTests (measured: ≤ 2.4e-6).
      #expect(compare(try out.tensor(k), ref, atol: max(1e-12, 1e-5 * scale), rtol: 0, "\(variant) \(k)").ok)
      // AdamW: entries with a real gradient move exactly as PyTorch's (noise-level gradients move by up to ±lr).
      let key = "updated." + k.dropFirst(5)
      let ours = try out.tensor(key).toArray(), theirs = fx[key]!.toArray(), g = ref.toArray()
      let gmax = g.map(abs).max() ?? 0
      for i in 0..<ours.count {
        let d = abs(ours[i] - theirs[i])
        if abs(g[i]) >= max(1e-3 * gmax, 1e-6) {
          strict += 1
          #expect(d <= 1e-6 + 1e-5 * abs(theirs[i]), "\(variant) \(key)[\(i)] differs by \(d)")
        } else {
          #expect(d <= 2.05e-3, "\(variant) \(key)[\(i)] moved \(d) > 2·lr")
        }
      }
    }
    #expect(grads == model.trainableParameters().count)
    print("ok  milan step \(variant): loss, pred, \(grads) gradients and \(strict) AdamW entries match the reference")
  }

  @Test func milanStep() throws { try run("milan", decoder: .prompting, noiseKey: "exp_noise") }
  @Test func randomMaskStep() throws { try run("random_mask", decoder: .prompting, noiseKey: "uniform_noise") }
  @Test func kdStep() throws { try run("kd", decoder: .kd, noiseKey: "exp_noise") }
  @Test func maeFeatureStep() throws { try run("mae_feature", decoder: .mae, noiseKey: "exp_noise") }
  @Test func maePixelStepNeedsNoTeacher() throws {
    try run("mae_pixel", decoder: .mae, target: .pixels, noiseKey: "uniform_noise")
  }

  /// The CLIP teacher run inside the step, read from an OpenAI / open_clip-named file (written with open_clip by
  /// tools/make_model_fixtures.py) and from the same weights under Hugging Face CLIPVisionModelWithProjection
  /// names: target, class attention, loss, every gradient and the AdamW update equal the reference's.
  @Test(arguments: ["models/clip_openclip.safetensors", "models/clip_hf.safetensors"])
  func milanStepWithTheCLIPTeacherInside(_ file: String) throws {
    try run("milan", decoder: .prompting, noiseKey: "exp_noise", teacherFile: file)
    try run("mae_feature", decoder: .mae, noiseKey: "exp_noise", teacherFile: file)
  }

  @Test func missingNoiseIsNamed() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("milan-step-bad-\(getpid()).safetensors")
    defer { try? FileManager.default.removeItem(at: dir) }
    var b = SafeTensorsWriter()
    try b.add(name: "images", tensor: Tensor(zeros: [1, 3, 32, 32]))
    try b.write(to: dir)
    let cfg = MILANConfig(encoder: ViTConfig(imageSize: 32, patchSize: 8, embedDim: 48, depth: 2, numHeads: 3),
                          decoderDim: 32, decoderDepth: 1, decoderHeads: 2, predictionDim: 24)
    #expect(throws: SingleStepError.self) {
      _ = try SingleStep.run(model: MILANModel(cfg), batch: try SafeTensorsFile(contentsOf: dir), teacher: nil)
    }
    do {
      _ = try SingleStep.run(model: MILANModel(cfg), batch: try SafeTensorsFile(contentsOf: dir), teacher: nil)
    } catch {
      #expect(String(describing: error).contains("target"), "\(error)")
    }
  }
}
