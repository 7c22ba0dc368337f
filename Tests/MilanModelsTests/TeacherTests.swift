// CLIP (open_clip and Hugging Face names) and DINOv2 (Hugging Face names) teachers against the reference
// implementations on random tiny configs: every output token and the class-token attention, at the native and at
// an interpolated resolution. Fixtures from tools/make_model_fixtures.py.
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import Testing

func allTensors(_ f: SafeTensorsFile, except: Set<String>) throws -> [String: Tensor] {
  var out: [String: Tensor] = [:]
  for t in f.tensors where !except.contains(t.name) && t.dtype != .I64 && t.dtype != .U8 { out[t.name] = try f.tensor(t.name) }
  return out
}

@Suite struct TeacherTests {
  static let clip = CLIPVisionConfig(imageSize: 32, patchSize: 8, width: 48, layers: 2, heads: 3, outputDim: 24)

  @Test func clipOpenCLIPNames() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
    let teacher = CLIPVisionTeacher(Self.clip)
    try teacher.loadCLIP(try loadPrefixed(f, prefix: "").filter { $0.key.hasPrefix("visual.") })
    let out = teacher.encode(try f.tensor("input"))
    #expect(compare(out.features, try f.tensor("tokens"), atol: 1e-5, rtol: 1e-4, "CLIP tokens [2,17,24]").ok)
    #expect(compare(out.clsAttention, try f.tensor("attn_cls"), atol: 1e-6, rtol: 1e-4, "CLIP cls attention").ok)
    let big = teacher.encode(try f.tensor("input_48px"))
    #expect(compare(big.features, try f.tensor("tokens_48px"), atol: 1e-5, rtol: 1e-4, "CLIP tokens at 48 px").ok)
    #expect(compare(big.clsAttention, try f.tensor("attn_cls_48px"), atol: 1e-6, rtol: 1e-4, "CLIP attention 48 px").ok)
  }

  @Test func clipHuggingFaceNames() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_hf.safetensors"))
    let teacher = CLIPVisionTeacher(Self.clip)
    try teacher.loadCLIP(try allTensors(f, except: ["input", "tokens", "attn_cls"]))
    let out = teacher.encode(try f.tensor("input"))
    #expect(compare(out.features, try f.tensor("tokens"), atol: 1e-5, rtol: 1e-4, "HF CLIP tokens").ok)
    #expect(compare(out.clsAttention, try f.tensor("attn_cls"), atol: 1e-6, rtol: 1e-4, "HF CLIP cls attention").ok)
  }

  @Test func dinov2HuggingFace() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/dinov2_hf.safetensors"))
    let c = DINOv2Config(imageSize: 32, patchSize: 8, hiddenSize: 48, layers: 2, heads: 3)
    let teacher = DINOv2Teacher(c)
    let outputs: Set<String> = ["input", "features", "attn_cls", "input_48px", "features_48px", "attn_cls_48px",
                                "pos_embed_bicubic_6x6", "pos_embed_grid_4x4"]
    try teacher.load(try allTensors(f, except: outputs))
    let out = teacher.encode(try f.tensor("input"))
    #expect(compare(out.features, try f.tensor("features"), atol: 1e-5, rtol: 1e-4, "DINOv2 features").ok)
    #expect(compare(out.clsAttention, try f.tensor("attn_cls"), atol: 1e-6, rtol: 1e-4, "DINOv2 cls attention").ok)
    let table = teacher.positionTable(gridH: 6, gridW: 6)
    let grid = Tensor(uninitialized: [36, 48])
    grid.data.update(from: table.data + 48, count: 36 * 48)
    // The fixture stores F.interpolate's output as [1, D, 6, 6]; compare in token-major order.
    let ref = try f.tensor("pos_embed_bicubic_6x6").reshaped([48, 36]).transposed(0, 1)
    #expect(compare(grid, ref, atol: 1e-6, rtol: 1e-5, "bicubic 4x4 → 6x6").ok)
    let big = teacher.encode(try f.tensor("input_48px"))
    #expect(compare(big.features, try f.tensor("features_48px"), atol: 1e-5, rtol: 1e-4, "DINOv2 features at 48 px").ok)
    #expect(compare(big.clsAttention, try f.tensor("attn_cls_48px"), atol: 1e-6, rtol: 1e-4, "DINOv2 attention 48 px").ok)
  }
}
