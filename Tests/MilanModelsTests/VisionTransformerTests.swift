// timm VisionTransformer against timm itself: fixture Tests/Fixtures/models/vit_timm.safetensors written by
// tools/make_model_fixtures.py (random tiny config; every output token, the logits, the input gradient and every
// parameter gradient).
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import Testing

func loadPrefixed(_ f: SafeTensorsFile, prefix: String) throws -> [String: Tensor] {
  var out: [String: Tensor] = [:]
  for t in f.tensors where t.name.hasPrefix(prefix) { out[String(t.name.dropFirst(prefix.count))] = try f.tensor(t.name) }
  return out
}

@Suite struct VisionTransformerTests {
  static let config = ViTConfig(imageSize: 32, patchSize: 8, embedDim: 48, depth: 2, numHeads: 3, numClasses: 5,
                                fixedSinCosPosEmbed: false)

  func loaded() throws -> (VisionTransformer, SafeTensorsFile) {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/vit_timm.safetensors"))
    let vit = VisionTransformer(Self.config)
    try vit.load(try loadPrefixed(f, prefix: "model."))
    return (vit, f)
  }

  @Test func parameterKeysAreTimms() throws {
    let (vit, f) = try loaded()
    let fileKeys = f.tensors.map(\.name).filter { $0.hasPrefix("model.") }.map { String($0.dropFirst(6)) }.sorted()
    #expect(vit.namedParameters().map(\.0).sorted() == fileKeys)
    #expect(vit.namedParameters().first?.0 == "cls_token")
    #expect(vit.namedParameters().contains { $0.0 == "blocks.1.mlp.fc2.bias" })
  }

  @Test func featuresLogitsAndAllGradientsMatchTimm() throws {
    let (vit, f) = try loaded()
    var rng = SplitMix64(seed: 0)
    let input = Variable(try f.tensor("input"), requiresGrad: true)
    let features = vit.forwardFeatures(input, rng: &rng)
    #expect(compare(features.value, try f.tensor("features"), atol: 1e-5, rtol: 1e-4, "ViT features [2,17,48]").ok)
    let logits = Autograd.noGrad { vit(Variable(try! f.tensor("input")), rng: &rng) }
    #expect(compare(logits.value, try f.tensor("logits"), atol: 1e-5, rtol: 1e-4, "ViT logits").ok)

    features.backward(seed: try f.tensor("g_features"))
    #expect(compare(input.grad!, try f.tensor("d_input"), atol: 1e-5, rtol: 1e-4, "ViT d_input").ok)
    for (key, p) in vit.namedParameters() {
      let name = "grad.\(key)"
      // The head gets no gradient from the features: PyTorch stores zeros, the tape leaves it unset.
      let g = p.grad ?? Tensor(zeros: p.shape)
      #expect(compare(g, try f.tensor(name), atol: 2e-5, rtol: 1e-4, "ViT grad \(key)").ok)
    }
  }

  @Test func interpolatedPositionEmbeddingAtAnotherResolution() throws {
    let (vit, f) = try loaded()
    var rng = SplitMix64(seed: 0)
    let y = Autograd.noGrad { vit.forwardFeatures(Variable(try! f.tensor("input_48px")), rng: &rng) }
    #expect(compare(y.value, try f.tensor("features_48px"), atol: 1e-5, rtol: 1e-4, "ViT features at 48 px").ok)
  }

  @Test func strictLoadingListsEveryProblem() throws {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/vit_timm.safetensors"))
    var w = try loadPrefixed(f, prefix: "model.")
    w["blocks.0.norm1.weight"] = nil
    w["decoder_embed.weight"] = Tensor(zeros: [2, 2])
    w["head.bias"] = Tensor(zeros: [7])
    let vit = VisionTransformer(Self.config)
    do {
      try vit.load(w)
      Issue.record("load accepted bad weights")
    } catch let e as LoadError {
      #expect(e.missing == ["blocks.0.norm1.weight"])
      #expect(e.unexpected == ["decoder_embed.weight"])
      #expect(e.mismatched.count == 1 && e.mismatched[0].hasPrefix("head.bias"))
      #expect(e.description.contains("missing 1") && e.description.contains("wrong shape 1"))
    }
  }

  @Test func maeInitialisationAndSinCosTable() {
    let c = ViTConfig(imageSize: 32, patchSize: 8, embedDim: 16, depth: 1, numHeads: 2)
    let vit = VisionTransformer(c, seed: 3)
    #expect(!vit.posEmbed.requiresGrad)  // fixed sin-cos table, still saved under "pos_embed"
    #expect(vit.namedParameters().contains { $0.0 == "pos_embed" })
    let pe = vit.posEmbed.value
    // Class row is zero; token (i=1, j=2) has sin(2·ω0)=sin(2) first and cos(1·ω0)=cos(1) in the second half.
    #expect((0..<16).allSatisfy { pe[0, 0, $0] == 0 })
    let t = 1 + 1 * 4 + 2
    #expect(abs(pe[0, t, 0] - Float(sin(2.0))) < 1e-6 && abs(pe[0, t, 4] - Float(cos(2.0))) < 1e-6)
    #expect(abs(pe[0, t, 8] - Float(sin(1.0))) < 1e-6 && abs(pe[0, t, 12] - Float(cos(1.0))) < 1e-6)
    // xavier_uniform bound for qkv: sqrt(6 / (16 + 48)).
    let w = vit.blocks[0].attn.qkv.weight.value.toArray()
    let bound = Float((6.0 / 64.0).squareRoot())
    #expect(w.allSatisfy { abs($0) <= bound } && w.contains { abs($0) > bound * 0.9 })
    #expect(vit.blocks[0].attn.qkv.bias!.value.toArray().allSatisfy { $0 == 0 })
  }
}
