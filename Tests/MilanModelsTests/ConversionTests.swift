// Key and layout conversions to timm names (tools/check_convert.py loads the results in timm with strict=True).
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import Testing

@Suite struct ConversionTests {
  @Test func dinov2ToTimmFusesQKVAndRenames() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/dinov2_hf.safetensors"))
    let hf = try allTensors(f, except: ["input", "features", "attn_cls", "input_48px", "features_48px",
                                        "attn_cls_48px", "pos_embed_bicubic_6x6", "pos_embed_grid_4x4"])
    #expect(CheckpointKind.detect(hf.keys) == .huggingFaceDINOv2)
    let t = try Conversions.toTimm(hf, from: .huggingFaceDINOv2)
    var expected = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                    "norm.bias"]
    for i in 0..<2 {
      for k in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                "mlp.fc2.bias", "ls2.gamma"] { expected.append("blocks.\(i).\(k)") }
    }
    #expect(Set(t.keys) == Set(expected))
    let qkv = try #require(t["blocks.1.attn.qkv.weight"])
    #expect(qkv.shape == [144, 48])
    let k = try #require(hf["encoder.layer.1.attention.attention.key.weight"])
    #expect(Array(qkv.toArray()[(48 * 48)..<(96 * 48)]) == k.toArray())  // rows q | k | v
  }

  @Test func clipHuggingFaceAndOpenCLIPGiveTheSameTimmTensors() throws {
    let hfFile = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_hf.safetensors"))
    let ocFile = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
    let hf = try allTensors(hfFile, except: ["input", "tokens", "attn_cls"])
    let oc = try loadPrefixed(ocFile, prefix: "").filter { $0.key.hasPrefix("visual.") }
    #expect(CheckpointKind.detect(hf.keys) == .huggingFaceCLIP && CheckpointKind.detect(oc.keys) == .openCLIP)
    let a = try Conversions.toTimm(hf, from: .huggingFaceCLIP)
    let b = try Conversions.toTimm(oc, from: .openCLIP)
    #expect(Set(a.keys) == Set(b.keys))
    for key in b.keys.sorted() { #expect(a[key]!.shape == b[key]!.shape && a[key]!.toArray() == b[key]!.toArray(), "\(key)") }
    #expect(b["cls_token"]!.shape == [1, 1, 48] && b["pos_embed"]!.shape == [1, 17, 48])
    #expect(b["head.weight"]!.shape == [24, 48] && b["norm_pre.weight"] != nil)
  }

  @Test func milanCheckpointKeepsTheEncoderOnly() {
    let t: [String: Tensor] = [
      "cls_token": Tensor(zeros: [1, 1, 4]), "blocks.0.attn.qkv.weight": Tensor(zeros: [12, 4]),
      "mask_token": Tensor(zeros: [1, 1, 2]), "decoder_embed.weight": Tensor(zeros: [2, 4]),
      "decoder_blocks.0.attn.kv.weight": Tensor(zeros: [4, 2]), "norm.weight": Tensor(zeros: [4]),
    ]
    #expect(CheckpointKind.detect(t.keys) == .milan)
    #expect(Set(Conversions.milanEncoder(t).keys) == ["cls_token", "blocks.0.attn.qkv.weight", "norm.weight"])
  }
}

@Suite struct DINOv2TimmRoundTripTests {
  @Test func timmNamedDINOv2LoadsAndMatches() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/dinov2_hf.safetensors"))
    let hf = try allTensors(f, except: ["input", "features", "attn_cls", "input_48px", "features_48px",
                                        "attn_cls_48px", "pos_embed_bicubic_6x6", "pos_embed_grid_4x4"])
    let back = Conversions.timmToDINOv2HF(try Conversions.toTimm(hf, from: .huggingFaceDINOv2))
    let teacher = DINOv2Teacher(DINOv2Config(imageSize: 32, patchSize: 8, hiddenSize: 48, layers: 2, heads: 3))
    try teacher.load(back)  // strict: the round trip must give back every key
    let out = teacher.encode(try f.tensor("input"))
    #expect(compare(out.features, try f.tensor("features"), atol: 1e-5, rtol: 1e-4, "DINOv2 via timm names").ok)
  }
}
