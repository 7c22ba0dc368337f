// Patch embedding: a Conv2d with stride = kernel = P computed as im2col + GEMM.
// img [B, C, H, W] → patches [B, N, C·P·P] (N = (H/P)·(W/P), row-major patch order, features in the conv weight's
// (c, kh, kw) order) → y [B, N, E] = patches·Wᵀ + b with W [E, C, P, P] viewed as [E, C·P·P].
import RealModule

public struct PatchGeometry: Sendable, Equatable {
  public var batch: Int, channels: Int, height: Int, width: Int, patch: Int
  public init(batch: Int, channels: Int, height: Int, width: Int, patch: Int) {
    precondition(patch > 0 && height % patch == 0 && width % patch == 0,
                 "PatchGeometry: image \(height)x\(width) is not divisible by patch \(patch)")
    self.batch = batch
    self.channels = channels
    self.height = height
    self.width = width
    self.patch = patch
  }
  public var gridH: Int { height / patch }
  public var gridW: Int { width / patch }
  public var patchesPerImage: Int { gridH * gridW }
  public var patchDim: Int { channels * patch * patch }
}

extension Kernels {
  /// img [B, C, H, W] → cols [B·N, C·P·P]; with `ids` ([B, K] patch indices, row-major patch order) only the listed
  /// patches: cols [B·K, C·P·P], row b·K + i holding patch ids[b·K + i] of image b.
  public static func im2col(img: UnsafePointer<Float>, cols: UnsafeMutablePointer<Float>, geometry g: PatchGeometry,
                            ids: [Int]? = nil) {
    nonisolated(unsafe) let img = img, cols = cols
    let n = g.patchesPerImage, pd = g.patchDim, p = g.patch
    let k = ids.map { $0.count / max(1, g.batch) } ?? n
    precondition(ids.map { $0.count == g.batch * k && $0.allSatisfy { $0 >= 0 && $0 < n } } ?? true,
                 "im2col: patch indices must be [\(g.batch), K] in 0..<\(n)")
    Parallel.forEachChunk(g.batch * k, minChunk: max(1, (1 << 14) / pd)) { r in
      for row in r {
        let b = row / k, patch = ids?[row] ?? row % n, pi = patch / g.gridW, pj = patch % g.gridW
        var o = cols + row * pd
        for c in 0..<g.channels {
          let plane = img + (b * g.channels + c) * g.height * g.width
          for kh in 0..<p {
            let src = plane + (pi * p + kh) * g.width + pj * p
            o.update(from: src, count: p)
            o += p
          }
        }
      }
    }
  }

  /// img[B, C, H, W] += col2im(cols) (the adjoint of im2col, with the same `ids`; patches never overlap, and the ids
  /// of one image are distinct).
  public static func col2imAccumulate(cols: UnsafePointer<Float>, img: UnsafeMutablePointer<Float>,
                                      geometry g: PatchGeometry, ids: [Int]? = nil) {
    nonisolated(unsafe) let img = img, cols = cols
    let n = g.patchesPerImage, pd = g.patchDim, p = g.patch
    let k = ids.map { $0.count / max(1, g.batch) } ?? n
    // Rows of one image may touch the same pixels only through a repeated id: keep an image's rows in one part.
    Parallel.forEachChunk(g.batch, minChunk: max(1, (1 << 14) / max(1, k * pd))) { r in
      for row in (r.lowerBound * k)..<(r.upperBound * k) {
        let b = row / k, patch = ids?[row] ?? row % n, pi = patch / g.gridW, pj = patch % g.gridW
        var o = cols + row * pd
        for c in 0..<g.channels {
          let plane = img + (b * g.channels + c) * g.height * g.width
          for kh in 0..<p {
            let dst = plane + (pi * p + kh) * g.width + pj * p
            for j in 0..<p { dst[j] += o[j] }
            o += p
          }
        }
      }
    }
  }

  /// y [B, N, E] = conv(img, weight, bias) flattened; `cols` receives the im2col matrix [B·N, C·P·P] (kept for the
  /// weight gradient). With `ids` ([B, K]) only those patches: y [B, K, E], cols [B·K, C·P·P] — the rows the full
  /// embedding would give for them, without the work of the others (MILAN's encoder sees only the visible patches).
  public static func patchEmbedForward(img: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                       bias: UnsafePointer<Float>?, cols: UnsafeMutablePointer<Float>,
                                       y: UnsafeMutablePointer<Float>, geometry g: PatchGeometry, embedDim e: Int,
                                       ids: [Int]? = nil) {
    im2col(img: img, cols: cols, geometry: g, ids: ids)
    linearForward(x: cols, weight: weight, bias: bias, y: y, rows: ids?.count ?? g.batch * g.patchesPerImage,
                  inFeatures: g.patchDim, outFeatures: e)
  }

  /// dimg += …, dweight += …, dbias += … (each optional), with the `ids` of the forward.
  public static func patchEmbedBackward(dy: UnsafePointer<Float>, cols: UnsafePointer<Float>,
                                        weight: UnsafePointer<Float>, dImg: UnsafeMutablePointer<Float>?,
                                        dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                        geometry g: PatchGeometry, embedDim e: Int, ids: [Int]? = nil) {
    let rows = ids?.count ?? g.batch * g.patchesPerImage
    var dcols: Tensor? = nil
    if dImg != nil { dcols = Tensor(zeros: [rows, g.patchDim]) }
    linearBackward(dy: dy, x: cols, weight: weight, dx: dcols?.data, dWeight: dWeight, dBias: dBias, rows: rows,
                   inFeatures: g.patchDim, outFeatures: e)
    if let dImg, let dcols { col2imAccumulate(cols: dcols.data, img: dImg, geometry: g, ids: ids) }
  }
}

extension Naive {
  /// Direct strided convolution (no im2col), output flattened to [B, N, E].
  public static func patchEmbed<T: RealScalar>(_ img: [T], _ w: [T], _ b: [T]?, geometry g: PatchGeometry,
                                         embedDim e: Int) -> [T] {
    let n = g.patchesPerImage, p = g.patch
    var y = [T](repeating: 0, count: g.batch * n * e)
    for bi in 0..<g.batch {
      for pi in 0..<g.gridH {
        for pj in 0..<g.gridW {
          for o in 0..<e {
            var s: T = b?[o] ?? 0
            for c in 0..<g.channels {
              for kh in 0..<p {
                for kw in 0..<p {
                  let iv = img[((bi * g.channels + c) * g.height + pi * p + kh) * g.width + pj * p + kw]
                  s += iv * w[((o * g.channels + c) * p + kh) * p + kw]
                }
              }
            }
            y[(bi * n + pi * g.gridW + pj) * e + o] = s
          }
        }
      }
    }
    return y
  }
}
