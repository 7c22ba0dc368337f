// Teachers read from files by content (TeacherFile), as every command reads them: the format is recognised, the
// architecture comes from the tensors (heads and activation from the metadata or a config file beside it), and the
// network's tokens and class attention equal the reference libraries' (open_clip, Hugging Face, timm, onnxruntime).
// Files that cannot be a teacher are refused with the file and the reason.
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import Testing

@Suite struct TeacherFileTests {
  func scratch(_ name: String) throws -> URL {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("milan-tf-\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
  }

  /// The teacher's tokens and class attention on the fixture's input against its reference outputs.
  func expectOutputs(_ t: LoadedTeacher, _ f: SafeTensorsFile, tokens: String, attention: String, _ label: String) throws {
    let out = t.teacher.encode(try f.tensor("input"))
    #expect(compare(out.features, try f.tensor(tokens), atol: 1e-5, rtol: 1e-4, "\(label) tokens").ok)
    #expect(compare(out.clsAttention, try f.tensor(attention), atol: 1e-6, rtol: 1e-4, "\(label) class attention").ok)
  }

  static let tinyCLIP = TeacherArchitecture(family: .clip, width: 48, depth: 2, heads: 3, patchSize: 8, featureDim: 24,
                                            mlpHidden: 192, nativeImageSize: 32, activation: .quickGelu,
                                            layerScale: false, layerNormEps: 1e-5)

  @Test func openCLIPNames() throws {
    let url = Fixtures.url("models/clip_openclip.safetensors")
    let t = try TeacherFile.load(url.path)
    #expect(t.spec.format == .openCLIP && t.spec.architecture == Self.tinyCLIP)
    #expect(t.spec.sha256 == (try FileDigest.sha256(url)) && t.spec.sha256.count == 64)
    #expect(t.spec.name == "CLIP ViT-48w2d/8")
    try expectOutputs(t, try SafeTensorsFile(contentsOf: url), tokens: "tokens", attention: "attn_cls", "open_clip")
  }

  @Test func huggingFaceCLIPNames() throws {
    let url = Fixtures.url("models/clip_hf.safetensors")
    let t = try TeacherFile.load(url.path)
    #expect(t.spec.format == .hfCLIP && t.spec.architecture == Self.tinyCLIP)
    try expectOutputs(t, try SafeTensorsFile(contentsOf: url), tokens: "tokens", attention: "attn_cls", "HF CLIP")
  }

  /// A visual tower saved on its own (no `visual.` prefix, no metadata), its head count and activation in a Hugging
  /// Face config.json beside it; without that file the head count cannot be told and the error says so.
  @Test func openCLIPTowerWithoutPrefixAndAConfigBesideIt() throws {
    let dir = try scratch("noprefix")
    defer { try? FileManager.default.removeItem(at: dir) }
    let src = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
    var w = SafeTensorsWriter()
    for t in src.tensors where t.name.hasPrefix("visual.") { try w.add(name: String(t.name.dropFirst(7)), tensor: try src.tensor(t.name)) }
    let file = dir.appendingPathComponent("visual.safetensors")
    try w.write(to: file)
    do {
      _ = try TeacherFile.load(file.path)
      Issue.record("a 48-wide tower without a head count loaded")
    } catch let e as TeacherFileError {
      #expect(e.description.contains(file.path) && e.description.contains("head count is not recorded"), "\(e)")
    }
    try Data(#"{"num_attention_heads": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05}"#.utf8)
      .write(to: dir.appendingPathComponent("config.json"))
    let t = try TeacherFile.load(file.path)
    #expect(t.spec.format == .openCLIP && t.spec.architecture == Self.tinyCLIP)
    try expectOutputs(t, src, tokens: "tokens", attention: "attn_cls", "open_clip without visual.")
    // GELU named beside the file is honoured (LAION's open_clip towers): other outputs.
    try Data(#"{"model_cfg": {"quick_gelu": false, "vision_cfg": {"width": 48, "head_width": 16}}}"#.utf8)
      .write(to: dir.appendingPathComponent("open_clip_config.json"))
    let g = try TeacherFile.load(file.path)
    #expect(g.spec.architecture.activation == .gelu && g.spec.architecture.heads == 3)
    let diff = zip(g.teacher.encode(try src.tensor("input")).features.toArray(), (try src.tensor("tokens")).toArray())
      .map { abs($0 - $1) }.max()!
    #expect(diff > 1e-3, "GELU and QuickGELU gave the same tokens")
  }

  @Test func dinov2HuggingFaceNames() throws {
    let url = Fixtures.url("models/dinov2_hf.safetensors")
    let t = try TeacherFile.load(url.path)
    #expect(t.spec.format == .dinov2HF && t.spec.architecture.family == .dinov2 && t.spec.architecture.heads == 3
      && t.spec.architecture.layerScale && t.spec.architecture.featureDim == 48 && t.spec.architecture.activation == .gelu)
    try expectOutputs(t, try SafeTensorsFile(contentsOf: url), tokens: "features", attention: "attn_cls", "HF DINOv2")
  }

  /// timm / facebookresearch DINOv2 names (written by tools/make_teacher_fixtures.py from timm's VisionTransformer
  /// with LayerScale): the same network as the Hugging Face file.
  @Test func dinov2TimmNames() throws {
    let url = Fixtures.url("teachers/dinov2_timm.safetensors")
    let t = try TeacherFile.load(url.path)
    #expect(t.spec.format == .timm && t.spec.name == "DINOv2-48w2d/8" && t.spec.architecture.layerScale)
    try expectOutputs(t, try SafeTensorsFile(contentsOf: url), tokens: "features", attention: "attn_cls", "timm DINOv2")
  }

  @Test(.enabled(if: RealDINOv2.present || RealDINOv2.required, "needs scripts/fetch-teacher.sh"))
  func imgFocusONNX() throws {
    let t = try TeacherFile.load(RealDINOv2.url.path)
    #expect(t.spec.format == .dinov2ONNX && t.spec.name == "DINOv2-S/14")
    #expect(t.spec.architecture == TeacherArchitecture(family: .dinov2, width: 384, depth: 12, heads: 6, patchSize: 14,
                                                       featureDim: 384, mlpHidden: 1536, nativeImageSize: 518,
                                                       activation: .gelu, layerScale: true, layerNormEps: 1e-6))
  }

  /// A `milan pretrain` checkpoint (timm names without LayerScale, heads in milan.config) teaches as its encoder.
  @Test func aMILANCheckpointTeachesAsItsEncoder() throws {
    let dir = try scratch("milan")
    defer { try? FileManager.default.removeItem(at: dir) }
    let cfg = MILANConfig(encoder: ViTConfig(imageSize: 32, patchSize: 8, embedDim: 48, depth: 2, numHeads: 3),
                          decoderDim: 32, decoderDepth: 1, decoderHeads: 2, predictionDim: 24)
    let model = MILANModel(cfg, seed: 3)
    var w = SafeTensorsWriter(metadata: ["milan.config": String(decoding: try JSONEncoder().encode(cfg), as: UTF8.self)])
    for (k, p) in model.namedParameters() { try w.add(name: k, tensor: p.value) }
    let file = dir.appendingPathComponent("model.safetensors")
    try w.write(to: file)
    let t = try TeacherFile.load(file.path)
    #expect(t.spec.format == .timm && t.spec.architecture.family == .vit && !t.spec.architecture.layerScale
      && t.spec.architecture.heads == 3 && t.spec.architecture.featureDim == 48)
    var rng = SplitMix64(seed: 9)
    let x = Tensor.randn([2, 3, 32, 32], rng: &rng)
    var r = SplitMix64(seed: 0)
    let want = model.encoder.forwardFeatures(Variable(x), rng: &r).value
    #expect(compare(t.teacher.encode(x).features, want, atol: 1e-6, rtol: 1e-5, "MILAN encoder as teacher").ok)
  }

  @Test func filesThatCannotTeachAreRefusedByName() throws {
    let dir = try scratch("bad")
    defer { try? FileManager.default.removeItem(at: dir) }
    func refused(_ path: String, _ words: String...) {
      do {
        _ = try TeacherFile.load(path)
        Issue.record("\(path) loaded as a teacher")
      } catch {
        let m = String(describing: error)
        #expect(m.contains(path) && words.allSatisfy { m.contains($0) }, "\(m)")
      }
    }
    refused(dir.appendingPathComponent("missing.onnx").path, "no such file")
    refused(dir.path, "is a folder")
    let garbage = dir.appendingPathComponent("garbage.bin")
    try Data((0..<300).map { UInt8(($0 * 37) % 251) }).write(to: garbage)
    refused(garbage.path, "neither a safetensors file nor an ONNX model")
    let zip = dir.appendingPathComponent("ViT-B-16.pt")
    try Data([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0, count: 60)).write(to: zip)
    refused(zip.path, "zip archive", "safetensors")
    var w = SafeTensorsWriter()
    try w.add(name: "weight", tensor: Tensor(zeros: [2, 2]))
    let other = dir.appendingPathComponent("other.safetensors")
    try w.write(to: other)
    refused(other.path, "not a teacher this version reads", "weight")
    var hf = SafeTensorsWriter()  // a CLIPVisionModel without the projection
    let src = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_hf.safetensors"))
    for t in src.tensors where t.name.hasPrefix("vision_model.") { try hf.add(name: t.name, tensor: try src.tensor(t.name)) }
    let noProj = dir.appendingPathComponent("clip_vision_model.safetensors")
    try hf.write(to: noProj)
    refused(noProj.path, "visual_projection.weight")
    // Damaged weights: NaN and ∞ in one tensor. Loaded, they would make every target and the class attention NaN.
    let clip = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
    var nanW = SafeTensorsWriter(metadata: clip.metadata)
    for t in clip.tensors {
      let v = try clip.tensor(t.name)
      if t.name == "visual.conv1.weight" { v.data[3] = .nan; v.data[7] = .infinity }
      try nanW.add(name: t.name, tensor: v)
    }
    let nanFile = dir.appendingPathComponent("nan.safetensors")
    try nanW.write(to: nanFile)
    refused(nanFile.path, "visual.conv1.weight", "2 non-finite")
  }

  /// A run's recorded teacher: the same bytes load; another network, or changed bytes, are refused (unless allowed).
  @Test func aRecordedTeacherMustBeTheSameFile() throws {
    let dir = try scratch("recorded")
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = Fixtures.url("models/clip_openclip.safetensors")
    let recorded = try TeacherFile.load(url.path).spec
    let copy = dir.appendingPathComponent("moved.safetensors")
    try FileManager.default.copyItem(at: url, to: copy)
    #expect(try TeacherFile.load(recorded: recorded, override: copy.path).spec.sha256 == recorded.sha256)
    // Same architecture, other weights: a changed file.
    let src = try SafeTensorsFile(contentsOf: url)
    var w = SafeTensorsWriter(metadata: src.metadata)
    for t in src.tensors {
      let v = try src.tensor(t.name)
      if t.name == "visual.proj" { v.data[0] += 1 }
      try w.add(name: t.name, tensor: v)
    }
    try w.write(to: copy)
    #expect(throws: TeacherFileError.self) { _ = try TeacherFile.load(recorded: recorded, override: copy.path) }
    #expect(try TeacherFile.load(recorded: recorded, override: copy.path, allowChanged: true).spec.sha256 != recorded.sha256)
    do {
      _ = try TeacherFile.load(recorded: recorded, override: Fixtures.url("models/dinov2_hf.safetensors").path)
      Issue.record("another network was accepted as the recorded teacher")
    } catch let e as TeacherFileError {
      #expect(e.description.contains("DINOv2") && e.description.contains("CLIP"), "\(e)")
    }
  }
}
