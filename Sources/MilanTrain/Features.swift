// Frozen-feature extraction for k-NN and linear probing: a pretrained (or random) encoder's class token after the
// final norm, or the mean of its normalised patch tokens; optionally only the patches the teacher attends to most
// (semantic-aware probing, paper §4: the top fraction by class attention enter the encoder); the teacher's own
// class-token features; raw pixels.
import MilanAutograd
import MilanModels
import MilanTensor

public enum FeaturePool: String, Codable, Sendable, CaseIterable { case token, mean }

public struct SemanticProbing {
  public var teacher: any Teacher
  public var teacherImageSize: Int
  public var keepFraction: Double = 0.5
  public init(teacher: any Teacher, teacherImageSize: Int, keepFraction: Double = 0.5) {
    self.teacher = teacher
    self.teacherImageSize = teacherImageSize
    self.keepFraction = keepFraction
  }
}

public enum Features {
  /// Encoder features [N, D] for `indices`.
  public static func encoder(_ encoder: VisionTransformer, images: EvalImages, indices: [Int], imageSize: Int,
                             pool: FeaturePool = .token, semantic: SemanticProbing? = nil,
                             batch: Int = 128, progress: ProgressLog? = nil) throws -> Tensor {
    let d = encoder.config.embedDim
    let out = Tensor(uninitialized: [indices.count, d])
    var rng = SplitMix64(seed: 0)
    for s in stride(from: 0, to: indices.count, by: batch) {
      let ids = Array(indices[s..<min(s + batch, indices.count)])
      let img = try images.batch(ids, size: imageSize)
      let keep: IndexTensor? = try semantic.map { sp in
        let attn = try Autograd.noGrad { sp.teacher.encode(try images.batch(ids, size: sp.teacherImageSize)) }.clsAttention
        return topPatches(attn, fraction: sp.keepFraction)
      }
      let f = Autograd.noGrad { encoder.forwardFeatures(Variable(img), keep: keep, rng: &rng) }
      let l = f.shape[1]
      for r in 0..<ids.count {
        let o = out.data + (s + r) * d, row = f.value.data + r * l * d
        switch pool {
        case .token: o.update(from: row, count: d)
        case .mean:
          for j in 0..<d {
            var acc: Float = 0
            for t in 1..<l { acc += row[t * d + j] }
            o[j] = acc / Float(l - 1)
          }
        }
      }
      progress?.advance(by: ids.count)
    }
    return out
  }

  /// Per row of `attention` [B, L], the indices of the top ⌈fraction·L⌉... (at least 1) patches, in descending order.
  public static func topPatches(_ attention: Tensor, fraction: Double) -> IndexTensor {
    let b = attention.shape[0], l = attention.shape[1]
    let k = max(1, Int(Double(l) * fraction))
    var ids: [Int] = []
    for n in 0..<b {
      let row = attention.data + n * l
      ids += (0..<l).sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }.prefix(k)
    }
    return IndexTensor(shape: [b, k], values: ids)
  }

  /// The teacher's class-token features [N, C]. Rows the `cached` features of the pretraining run hold are copied
  /// from them (the same teacher, size, data and preprocessing: TeacherFeatureCache), the others computed.
  public static func teacher(_ teacher: any Teacher, images: EvalImages, indices: [Int], imageSize: Int,
                             batch: Int = 64, cached: TeacherFeatureCache? = nil,
                             progress: ProgressLog? = nil) throws -> Tensor {
    let c = teacher.featureDim
    let out = Tensor(uninitialized: [indices.count, c])
    var missing: [Int] = []  // positions in `indices`
    for (p, i) in indices.enumerated() {
      if let cached, cached.features.shape[1] == c, let r = cached.rowOf[i] {
        (out.data + p * c).update(from: cached.features.data + r * c, count: c)
      } else {
        missing.append(p)
      }
    }
    progress?.skip(by: indices.count - missing.count)
    for s in stride(from: 0, to: missing.count, by: batch) {
      let pos = Array(missing[s..<min(s + batch, missing.count)])
      let f = try Autograd.noGrad { teacher.encode(try images.batch(pos.map { indices[$0] }, size: imageSize)) }.features
      let l = f.shape[1]
      for (r, p) in pos.enumerated() { (out.data + p * c).update(from: f.data + r * l * c, count: c) }
      progress?.advance(by: pos.count)
    }
    return out
  }

  /// Raw pixels (normalised, at `imageSize`) as features, [N, 3·size²].
  public static func pixels(images: EvalImages, indices: [Int], imageSize: Int,
                            progress: ProgressLog? = nil) throws -> Tensor {
    defer { progress?.advance(by: indices.count) }
    return try images.batch(indices, size: imageSize).reshaped([indices.count, -1])
  }
}
