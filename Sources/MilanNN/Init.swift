// Initialisers (MAE's recipe) and the fixed 2-D sin-cos position table.
import MilanTensor
import RealModule

public enum Init {
  /// xavier_uniform_ on a weight viewed as [fanOut, fanIn] (MAE views the patch conv weight this way too).
  public static func xavierUniform(_ t: Tensor, fanIn: Int, fanOut: Int, rng: inout SplitMix64) {
    let a = (6 / Float(fanIn + fanOut)).squareRoot()
    for i in 0..<t.count { t.data[i] = (2 * rng.nextUniform() - 1) * a }
  }

  /// normal_(std) truncated to ±2 std (timm's trunc_normal_ with its default bounds ±2 absolute is equivalent for
  /// std ≤ 0.02; here the bound is 2 std, resampled).
  public static func truncatedNormal(_ t: Tensor, std: Float, rng: inout SplitMix64) {
    for i in 0..<t.count {
      var v = rng.nextNormal()
      while abs(v) > 2 { v = rng.nextNormal() }
      t.data[i] = v * std
    }
  }

  /// MAE `get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token)`: [1 + gh·gw, D] (class row zero if `classToken`).
  /// Token (i, j) gets sin/cos of its column j in the first half and of its row i in the second half, each half
  /// [sin(p·ω_k), cos(p·ω_k)] with ω_k = 1/10000^(k/(D/4)).
  public static func sinCos2D(dim: Int, gridH: Int, gridW: Int, classToken: Bool) -> Tensor {
    precondition(dim % 4 == 0, "sin-cos position embedding needs a width divisible by 4, got \(dim)")
    let prefix = classToken ? 1 : 0
    let t = Tensor(zeros: [prefix + gridH * gridW, dim])
    let quarter = dim / 4
    for i in 0..<gridH {
      for j in 0..<gridW {
        let row = t.data + (prefix + i * gridW + j) * dim
        for (half, pos) in [(0, Double(j)), (1, Double(i))] {
          for k in 0..<quarter {
            let omega = 1 / Double.pow(10000, Double(k) / Double(quarter))
            row[half * 2 * quarter + k] = Float(Double.sin(pos * omega))
            row[half * 2 * quarter + quarter + k] = Float(Double.cos(pos * omega))
          }
        }
      }
    }
    return t
  }
}
