// The teacher interface MILAN needs: a frozen ViT that returns per-token features and the class token's attention
// over the patches in its last block (reference-milan.md §1–2).
import MilanAutograd
import MilanTensor

public struct TeacherOutput: Sendable {
  /// Per-token target features, class token first: [B, 1 + N, C].
  public var features: Tensor
  /// Last block's attention from the class-token query to every patch key, averaged over heads, the class column
  /// dropped: [B, N]. The importance used by semantic-aware masking.
  public var clsAttention: Tensor

  public init(features: Tensor, clsAttention: Tensor) {
    self.features = features
    self.clsAttention = clsAttention
  }
}

public protocol Teacher: AnyObject {
  /// What the network is (family, sizes, activation), as read from its weights.
  var architecture: TeacherArchitecture { get }
  /// Runs without recording gradients. images: [B, 3, H, W] (ImageNet-normalised), H and W multiples of patchSize.
  func encode(_ images: Tensor) -> TeacherOutput
}

extension Teacher {
  public var patchSize: Int { architecture.patchSize }
  /// Width of the target features (C).
  public var featureDim: Int { architecture.featureDim }
}

/// Class-token row of head-averaged attention [B, L, L] without the class column → [B, L − 1].
func clsAttentionRow(_ probs: Tensor) -> Tensor {
  let b = probs.shape[0], l = probs.shape[1]
  let out = Tensor(uninitialized: [b, l - 1])
  for i in 0..<b { (out.data + i * (l - 1)).update(from: probs.data + i * l * l + 1, count: l - 1) }
  return out
}

/// A position table [1 + g·g, D] (class row first) for a gridH×gridW input: the class row copied, the g×g grid
/// resized bicubically (`antialias` as timm's resample, otherwise PyTorch's plain bicubic as Hugging Face, open_clip
/// interpolation and the ONNX export use). Returns [1, 1 + gridH·gridW, D]; the table itself when the grid matches.
func positionTable(_ table: Tensor, grid g: Int, gridH: Int, gridW: Int, antialias: Bool) -> Tensor {
  let d = table.lastDim
  if gridH == g && gridW == g { return table.reshaped([1, 1 + g * g, d]) }
  let out = Tensor(uninitialized: [1, 1 + gridH * gridW, d])
  out.data.update(from: table.data, count: d)
  Kernels.resizeTokenGrid(table.data + d, dim: d, inH: g, inW: g, outH: gridH, outW: gridW, antialias: antialias,
                          into: out.data + d)
  return out
}

/// Runs `blocks` in order; only the last one is asked for its head-averaged attention, which is returned with the
/// output.
func runBlocksKeepingLastAttention<B>(_ x: Variable, _ blocks: [B],
                                      _ call: (B, Variable, Bool) -> (Variable, Tensor?)) -> (Variable, Tensor) {
  var x = x
  var probs: Tensor? = nil
  for (i, blk) in blocks.enumerated() {
    let last = i == blocks.count - 1
    let (h, p) = call(blk, x, last)
    x = h
    if last { probs = p }
  }
  return (x, probs!)
}
