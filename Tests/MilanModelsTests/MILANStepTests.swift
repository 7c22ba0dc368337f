// One MILAN training step (teacher forward, masking from given noise, encoder, decoder, loss, backward) against the
// PyTorch reference of the official model (tools/milan_reference.py; fixtures from tools/make_milan_fixtures.py):
// masking indices, latent, predictions, loss and every parameter gradient. Variants: semantic-aware masking with the
// prompting decoder, random masking with the prompting decoder, and MAE's decoder with the normalised-pixel target.
import Foundation
import MilanAutograd
import MilanIO
import MilanModels
import MilanNN
import MilanTensor
import MilanTestSupport
import Testing

/// The three files of a variant, merged.
struct StepFixture {
  let files: [SafeTensorsFile]
  init(_ variant: String) throws {
    files = try ["", "_grad", "_adamw"].map {
      try SafeTensorsFile(contentsOf: Fixtures.url("milan/step_\(variant)\($0).safetensors"))
    }
  }
  func file(for name: String) throws -> SafeTensorsFile {
    for f in files where (try? f.info(name)) != nil { return f }
    throw SafeTensorsError.missingTensor(name: name)
  }
  func tensor(_ name: String) throws -> Tensor { try file(for: name).tensor(name) }
  func indices(_ name: String) throws -> IndexTensor { try file(for: name).indices(name) }
  func prefixed(_ prefix: String) throws -> [String: Tensor] {
    var out: [String: Tensor] = [:]
    for f in files { for t in f.tensors where t.name.hasPrefix(prefix) { out[String(t.name.dropFirst(prefix.count))] = try f.tensor(t.name) } }
    return out
  }
}

@Suite struct MILANStepTests {
  static func config(_ decoder: MILANConfig.Decoder) -> MILANConfig {
    MILANConfig(encoder: ViTConfig(imageSize: 32, patchSize: 8, embedDim: 48, depth: 2, numHeads: 3),
                decoderDim: 32, decoderDepth: 2, decoderHeads: 2, decoder: decoder,
                predictionDim: decoder == .prompting ? 24 : 192)
  }

  func checkIndices(_ m: MaskingResult, _ f: StepFixture) throws {
    #expect(m.idsShuffle == (try f.indices("ids_shuffle")))
    #expect(m.idsRestore == (try f.indices("ids_restore")))
    #expect(m.idsKeep == (try f.indices("ids_keep")))
    #expect(m.idsDump == (try f.indices("ids_dump")))
    #expect(m.mask == (try f.tensor("mask")).toArray())
  }

  func checkGradients(_ model: MILANModel, _ f: StepFixture, label: String) throws {
    let grads = try f.prefixed("grad.")
    let trainable = model.trainableParameters()
    #expect(Set(trainable.map(\.0)) == Set(grads.keys), "\(label): trainable parameters differ from the reference's")
    for (key, p) in trainable {
      let g = p.grad ?? Tensor(zeros: p.shape)
      let ref = grads[key]!
      // Gradients here are small (1e-9 … 1e-3): the absolute tolerance scales with each tensor's largest entry.
      let scale = Double(ref.toArray().map(abs).max() ?? 0)
      #expect(compare(g, ref, atol: max(1e-10, 1e-3 * scale), rtol: 1e-3, "\(label) grad \(key)").ok)
    }
  }

  func run(_ variant: String, semantic: Bool) throws {
    let f = try StepFixture(variant)
    let model = MILANModel(Self.config(.prompting))
    try model.load(try f.prefixed("model."))
    let images = try f.tensor("images")

    // Teacher on the same images.
    let clipFile = try SafeTensorsFile(contentsOf: Fixtures.url("models/clip_openclip.safetensors"))
    let teacher = CLIPVisionTeacher(CLIPVisionConfig(imageSize: 32, patchSize: 8, width: 48, layers: 2, heads: 3,
                                                     outputDim: 24))
    try teacher.loadCLIP(try loadPrefixed(clipFile, prefix: "").filter { $0.key.hasPrefix("visual.") })
    let t = teacher.encode(images)
    #expect(compare(t.features, try f.tensor("target"), atol: 1e-5, rtol: 1e-4, "\(variant) teacher target").ok)
    #expect(compare(t.clsAttention, try f.tensor("importance"), atol: 1e-6, rtol: 1e-4, "\(variant) importance").ok)

    let m = semantic
      ? Masking.semanticAware(importance: try f.tensor("importance"), expNoise: try f.tensor("exp_noise"), maskRatio: 0.75)
      : Masking.random(noise: try f.tensor("uniform_noise"), maskRatio: 0.75)
    try checkIndices(m, f)

    var rng = SplitMix64(seed: 0)
    let latent = model.forwardEncoder(Variable(images), masking: m, rng: &rng)
    #expect(compare(latent.value, try f.tensor("latent"), atol: 1e-5, rtol: 1e-4, "\(variant) latent").ok)
    let pred = model.forwardDecoder(latent, masking: m, rng: &rng)
    #expect(compare(pred.value, try f.tensor("pred"), atol: 1e-5, rtol: 1e-4, "\(variant) pred [4,17,24]").ok)
    let target = try f.tensor("target")
    let loss = cosineLoss(pred, target: target)
    #expect(compare(loss.value, try f.tensor("loss"), atol: 1e-6, rtol: 1e-5, "\(variant) loss").ok)
    // Masked-only option: class token and visible patches weigh 0.
    let weights = Tensor(shape: [4 * 17], values: (0..<4).flatMap { b in [0] + m.mask[(b * 16)..<(b * 16 + 16)] })
    let masked = Autograd.noGrad { cosineLoss(Variable(pred.value), target: target, weights: weights) }
    #expect(compare(masked.value, try f.tensor("loss_masked"), atol: 1e-6, rtol: 1e-5, "\(variant) masked-only loss").ok)

    loss.backward()
    try checkGradients(model, f, label: variant)
  }

  @Test func semanticAwareMaskingWithPromptingDecoder() throws { try run("milan", semantic: true) }
  @Test func randomMaskingWithPromptingDecoder() throws { try run("random_mask", semantic: false) }

  @Test func maeDecoderWithNormalisedPixelTarget() throws {
    let f = try StepFixture("mae_pixel")
    let model = MILANModel(Self.config(.mae))
    try model.load(try f.prefixed("model."))
    let images = try f.tensor("images")
    let m = Masking.random(noise: try f.tensor("uniform_noise"), maskRatio: 0.75)
    try checkIndices(m, f)
    var rng = SplitMix64(seed: 0)
    let latent = model.forwardEncoder(Variable(images), masking: m, rng: &rng)
    #expect(compare(latent.value, try f.tensor("latent"), atol: 1e-5, rtol: 1e-4, "mae latent").ok)
    let pred = model.forwardDecoder(latent, masking: m, rng: &rng)
    #expect(compare(pred.value, try f.tensor("pred"), atol: 1e-5, rtol: 1e-4, "mae pred [4,16,192]").ok)
    let target = normalizedPixelTarget(patchify(images, patch: 8))
    #expect(compare(target, try f.tensor("target"), atol: 1e-5, rtol: 1e-4, "norm-pix target").ok)
    let loss = maskedPixelLoss(pred, target: target, mask: m.mask)
    #expect(compare(loss.value, try f.tensor("loss"), atol: 1e-6, rtol: 1e-5, "mae pixel loss").ok)
    loss.backward()
    try checkGradients(model, f, label: "mae")
  }

  @Test func keysAreTheReferenceMILANNames() throws {
    let f = try StepFixture("milan")
    let model = MILANModel(Self.config(.prompting))
    #expect(Set(model.namedParameters().map(\.0)) == Set(try f.prefixed("model.").keys))
    #expect(!model.decoderPosEmbed.requiresGrad && !model.encoder.posEmbed.requiresGrad)
  }
}
