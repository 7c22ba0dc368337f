// The work of the models in FLOPs, from their configuration: 2 FLOPs per multiply-add of every matrix product
// (linear layers, the patch embedding and attention's two batched products). LayerNorm, activations, softmax, the
// loss and the optimizer are not counted: they are a few FLOPs per element, memory-bound, and their time shows up
// as the gap between achieved and peak. docs/benchmarks.md holds the same formulas; FLOPsTests checks them against
// the GEMM work the library actually issues.
import MilanTensor

public enum FLOPs {
  /// One pre-norm transformer block over `n` tokens of width d, MLP hidden h:
  /// qkv 6·n·d², attention scores and weighted sum 4·n²·d, output projection 2·n·d², MLP 4·n·d·h.
  public static func block(tokens n: Int, width d: Int, mlpHidden h: Int) -> Double {
    let (n, d, h) = (Double(n), Double(d), Double(h))
    return 6 * n * d * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * h
  }

  /// The patch embedding of `patches` patches: 2·P·(C·p²)·D.
  public static func patchEmbed(patches: Int, patchSize p: Int, channels c: Int = 3, width d: Int) -> Double {
    2 * Double(patches) * Double(c * p * p) * Double(d)
  }

  /// A linear layer on `rows` rows: 2·rows·in·out.
  public static func linear(rows: Int, _ inFeatures: Int, _ outFeatures: Int) -> Double {
    2 * Double(rows) * Double(inFeatures) * Double(outFeatures)
  }

  /// A teacher's forward on one image of `imageSize` pixels: patch embedding, `depth` blocks over 1 + P tokens and,
  /// for CLIP, the projection of every token to the feature width.
  public static func teacherForward(_ a: TeacherArchitecture, imageSize: Int) -> Double {
    let p = (imageSize / a.patchSize) * (imageSize / a.patchSize)
    var f = patchEmbed(patches: p, patchSize: a.patchSize, width: a.width)
    f += Double(a.depth) * block(tokens: 1 + p, width: a.width, mlpHidden: a.mlpHidden)
    if a.family == .clip { f += linear(rows: 1 + p, a.width, a.featureDim) }
    return f
  }

  /// The work of one MILAN training step, per batch.
  public struct Step: Codable, Sendable, Equatable {
    /// The teacher's forward (0 when its outputs are cached).
    public var teacher: Double
    /// Student encoder forward: patch embedding of the visible patches, blocks over the class token and them.
    public var encoderForward: Double
    /// Decoder (or KD head) forward.
    public var decoderForward: Double
    /// Backward: twice the forward of every product, except the patch embedding, whose input (the image) needs no
    /// gradient (once).
    public var backward: Double
    public var training: Double { encoderForward + decoderForward + backward }
    public var total: Double { teacher + training }
  }

  /// One training step of `config` at `batch` images: teacher forward (when `teacher` is given), encoder, decoder,
  /// backward. The optimizer and the loss are not counted.
  public static func milanStep(_ c: MILANConfig, maskRatio: Double, batch: Int, teacher: TeacherArchitecture?,
                               teacherImageSize: Int) -> Step {
    let e = c.encoder
    let p = e.numPatches
    let k = Masking.lenKeep(patches: p, maskRatio: maskRatio)
    // Only the K visible patches are embedded (`PatchEmbed(_:keep:)`); the reference embeds all P and then gathers.
    let embed = patchEmbed(patches: k, patchSize: e.patchSize, channels: e.inChannels, width: e.embedDim)
    let enc = embed + Double(e.depth) * block(tokens: 1 + k, width: e.embedDim, mlpHidden: e.mlpHidden)
    let d = c.decoderDim, h = Int(Double(d) * c.decoderMlpRatio)
    let out = c.predictionDim  // the pixel size or the teacher's feature width (MILANConfig.resolved)
    var dec: Double
    switch c.decoder {
    case .kd:
      dec = linear(rows: 1 + k, e.embedDim, c.predictionDim)
    case .mae:
      dec = linear(rows: 1 + k, e.embedDim, d) + Double(c.decoderDepth) * block(tokens: 1 + p, width: d, mlpHidden: h)
        + linear(rows: 1 + p, d, out)
    case .prompting:
      // Queries: the P − K mask tokens. Keys and values: every position (class prompt, visible prompts, mask tokens),
      // projected by each block's own kv layer.
      let (m, n, dd) = (Double(p - k), Double(1 + p), Double(d))
      let perBlock = 2 * m * dd * dd + 4 * n * dd * dd + 4 * m * n * dd + 2 * m * dd * dd + 4 * m * dd * Double(h)
      dec = linear(rows: 1 + k, e.embedDim, d) + Double(c.decoderDepth) * perBlock + linear(rows: 1 + p, d, out)
    }
    let b = Double(batch)
    let t = teacher.map { teacherForward($0, imageSize: teacherImageSize) } ?? 0
    return Step(teacher: b * t, encoderForward: b * enc, decoderForward: b * dec,
                backward: b * (2 * (enc + dec) - embed))
  }
}
