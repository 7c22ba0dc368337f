// Mirrors zejiangh/MILAN models_milan.py Attention_fordecoder / Block_fordecoder (reference-milan.md §3):
// queries are the normalised mask tokens only; keys and values are each layer's own `kv` projection of
// [Z_cls, unshuffle(Z_visible ++ norm1(X))] in spatial order; the prompts Z are never updated.
// Keys: decoder_blocks.{j}.{norm1, attn.q, attn.kv (rows k | v), attn.proj, norm2, mlp.fc1, mlp.fc2}.
import MilanAutograd
import MilanNN
import MilanTensor

public final class PromptingAttention: Module {
  public let q: Linear, kv: Linear, proj: Linear
  public let heads: Int
  public init(dim: Int, heads: Int) {
    q = Linear(dim, dim)
    kv = Linear(dim, 2 * dim)
    proj = Linear(dim, dim)
    self.heads = heads
  }
  public var children: [(String, any Module)] { [("q", q), ("kv", kv), ("proj", proj)] }
}

public final class PromptingBlock: Module {
  public let norm1: LayerNorm, attn: PromptingAttention, norm2: LayerNorm, mlp: Mlp

  public init(dim: Int, heads: Int, mlpHidden: Int, eps: Float = 1e-6) {
    norm1 = LayerNorm(dim, eps: eps)
    attn = PromptingAttention(dim: dim, heads: heads)
    norm2 = LayerNorm(dim, eps: eps)
    mlp = Mlp(dim: dim, hidden: mlpHidden)
  }
  public var children: [(String, any Module)] { [("norm1", norm1), ("attn", attn), ("norm2", norm2), ("mlp", mlp)] }

  /// x: mask tokens [B, M, d] (ids_dump order); zCls [B, 1, d], zVisible [B, K, d] (ids_keep order).
  public func callAsFunction(_ x: Variable, zCls: Variable, zVisible: Variable, idsRestore: IndexTensor) -> Variable {
    let y = norm1(x)
    let s = assembleTokens(cls: zCls, visible: zVisible, masked: y, idsRestore: idsRestore)  // [B, 1 + L, d]
    let h = residualAdd(x, attn.proj(crossAttention(q: attn.q(y), kv: attn.kv(s), heads: attn.heads)))
    return residualAdd(h, mlp(norm2(h)))
  }
}
