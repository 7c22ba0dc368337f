// Differentiable multi-head attention over token-major operands (see MilanTensor/Kernels/Attention.swift).
// Three entry points share one implementation: separate q, k, v; a fused qkv projection (timm / open_clip / DINOv2
// order q | k | v); and MILAN's decoder layout, queries q with a fused kv projection (k | v).
import MilanTensor

/// One operand: columns [column, column + H·Dh) of a [B, L, ld] variable.
struct AttentionInput {
  let variable: Variable
  let column: Int
  var ld: Int { variable.value.lastDim }
  func operand() -> AttentionOperand { AttentionOperand(variable.value.data + column, ld: ld) }
}

/// The gradient operands of one attention backward. A variable whose columns the operands cover exactly (q | k | v
/// of a fused qkv, k | v of a fused kv, or a variable used once at its full width) and that has no gradient yet
/// gets an uninitialised buffer that the backward overwrites (each head block is written by one product); otherwise
/// the backward accumulates into its (zero-filled if new) gradient.
func attentionGradOperands(_ q: AttentionInput, _ k: AttentionInput, _ v: AttentionInput, width: Int)
  -> (dq: AttentionOperand?, dk: AttentionOperand?, dv: AttentionOperand?, overwrite: (dq: Bool, dk: Bool, dv: Bool))
{
  let all = [q, k, v]
  var fresh: [ObjectIdentifier: Bool] = [:]
  func operand(_ x: AttentionInput) -> (AttentionOperand, Bool)? {
    guard x.variable.requiresGrad else { return nil }
    let id = ObjectIdentifier(x.variable)
    if fresh[id] == nil {
      let uses = all.filter { $0.variable === x.variable }
      let covers = uses.count * width == x.ld && Set(uses.map(\.column)).count == uses.count
      if covers && x.variable.grad == nil {
        _ = x.variable.gradForWrite()
        fresh[id] = true
      } else {
        _ = x.variable.gradBuffer()
        fresh[id] = false
      }
    }
    return (AttentionOperand(x.variable.grad!.data + x.column, ld: x.ld), fresh[id]!)
  }
  let dq = operand(q), dk = operand(k), dv = operand(v)
  return (dq?.0, dk?.0, dv?.0, (dq?.1 ?? false, dk?.1 ?? false, dv?.1 ?? false))
}

func attentionCore(q: AttentionInput, k: AttentionInput, v: AttentionInput, batch: Int, queries: Int, keys: Int,
                   heads: Int, width: Int, keepHeadMean: Bool) -> (Variable, Tensor?) {
  precondition(width % heads == 0, "attention: width \(width) not divisible by \(heads) heads")
  let shape = AttentionShape(batch: batch, heads: heads, headDim: width / heads, queries: queries, keys: keys)
  let out = Tensor(uninitialized: [batch, queries, width])
  let inputs = [q.variable, k.variable, v.variable]
  let record = Autograd.needsGrad(inputs)
  let probs = (record || keepHeadMean) ? Tensor(uninitialized: [batch, heads, queries, keys]) : nil
  Kernels.attentionForward(q: q.operand(), k: k.operand(), v: v.operand(), o: AttentionOperand(out.data, ld: width),
                           probs: probs?.data, shape: shape)
  var mean: Tensor? = nil
  if keepHeadMean, let probs {
    let m = Tensor(uninitialized: [batch, queries, keys])
    Kernels.attentionProbsHeadMean(probs.data, into: m.data, shape: shape)
    mean = m
  }
  guard record, let probs else { return (Variable(out), mean) }
  let result = Autograd.result(out, inputs) { g in
    let d = attentionGradOperands(q, k, v, width: width)
    Kernels.attentionBackward(dOut: AttentionOperand(g.data, ld: width), q: q.operand(), k: k.operand(),
                              v: v.operand(), probs: probs.data, dq: d.dq, dk: d.dk, dv: d.dv, shape: shape,
                              overwrite: d.overwrite)
  }
  return (result, mean)
}

/// softmax(q·kᵀ/√Dh)·v per head. q: [B, Lq, H·Dh], k, v: [B, Lk, H·Dh] → [B, Lq, H·Dh].
public func attention(_ q: Variable, _ k: Variable, _ v: Variable, heads: Int) -> Variable {
  precondition(q.shape.count == 3 && k.shape == v.shape && k.shape[0] == q.shape[0] && k.shape[2] == q.shape[2],
               "attention: q \(q.shape), k \(k.shape), v \(v.shape)")
  return attentionCore(q: .init(variable: q, column: 0), k: .init(variable: k, column: 0),
                       v: .init(variable: v, column: 0), batch: q.shape[0], queries: q.shape[1], keys: k.shape[1],
                       heads: heads, width: q.shape[2], keepHeadMean: false).0
}

/// Self-attention from a fused projection qkv: [B, L, 3·D] (columns q | k | v) → [B, L, D]. With
/// `headMeanProbs`, also returns the attention probabilities averaged over heads, [B, L, L] (teacher importance).
public func selfAttention(qkv: Variable, heads: Int, headMeanProbs: Bool = false) -> (Variable, Tensor?) {
  precondition(qkv.shape.count == 3 && qkv.shape[2] % 3 == 0, "selfAttention: qkv \(qkv.shape)")
  let d = qkv.shape[2] / 3, l = qkv.shape[1]
  return attentionCore(q: .init(variable: qkv, column: 0), k: .init(variable: qkv, column: d),
                       v: .init(variable: qkv, column: 2 * d), batch: qkv.shape[0], queries: l, keys: l,
                       heads: heads, width: d, keepHeadMean: headMeanProbs)
}

/// Cross-attention with queries q: [B, Lq, D] and a fused key/value projection kv: [B, Lk, 2·D] (columns k | v, as
/// MILAN's `attn.kv`) → [B, Lq, D].
public func crossAttention(q: Variable, kv: Variable, heads: Int) -> Variable {
  precondition(q.shape.count == 3 && kv.shape.count == 3 && kv.shape[0] == q.shape[0] && kv.shape[2] == 2 * q.shape[2],
               "crossAttention: q \(q.shape), kv \(kv.shape)")
  let d = q.shape[2]
  return attentionCore(q: .init(variable: q, column: 0), k: .init(variable: kv, column: 0),
                       v: .init(variable: kv, column: d), batch: q.shape[0], queries: q.shape[1], keys: kv.shape[1],
                       heads: heads, width: d, keepHeadMean: false).0
}

/// `attention(q, k, v, heads:)` that also returns the probabilities averaged over heads, [B, Lq, Lk].
public func attention(_ q: Variable, _ k: Variable, _ v: Variable, heads: Int, headMeanProbs: Bool)
  -> (Variable, Tensor?)
{
  precondition(q.shape.count == 3 && k.shape == v.shape && k.shape[0] == q.shape[0] && k.shape[2] == q.shape[2],
               "attention: q \(q.shape), k \(k.shape), v \(v.shape)")
  return attentionCore(q: .init(variable: q, column: 0), k: .init(variable: k, column: 0),
                       v: .init(variable: v, column: 0), batch: q.shape[0], queries: q.shape[1], keys: k.shape[1],
                       heads: heads, width: q.shape[2], keepHeadMean: headMeanProbs)
}
