// Turning decoded grey or colour images into normalised model input: bicubic resizing (PyTorch's
// interpolate(mode="bicubic", align_corners=False), clamped to [0, 1] after resizing), grey → RGB replication,
// ImageNet mean/std normalisation, NCHW layout.
import MilanTensor

public enum ImageNorm {
  public static let imageNetMean: [Float] = [0.485, 0.456, 0.406]
  public static let imageNetStd: [Float] = [0.229, 0.224, 0.225]
}

extension IDXDataset {
  /// Images `indices` as a normalised batch [B, 3, size, size] (grey replicated to RGB).
  public func batch(_ indices: [Int], size: Int) -> Tensor {
    let out = Tensor(uninitialized: [indices.count, 3, size, size])
    let plane = size * size
    var src = [Float](repeating: 0, count: rows * cols)
    var dst = [Float](repeating: 0, count: plane)
    for (b, i) in indices.enumerated() {
      for (k, v) in image(i).enumerated() { src[k] = Float(v) / 255 }
      if size == rows && size == cols {
        dst = src
      } else {
        src.withUnsafeBufferPointer { s in
          dst.withUnsafeMutableBufferPointer { d in
            Kernels.resizeTokenGrid(s.baseAddress!, dim: 1, inH: rows, inW: cols, outH: size, outW: size,
                                    antialias: false, into: d.baseAddress!)
          }
        }
      }
      for c in 0..<3 {
        let o = out.data + (b * 3 + c) * plane
        let mean = ImageNorm.imageNetMean[c], std = ImageNorm.imageNetStd[c]
        for k in 0..<plane { o[k] = (min(max(dst[k], 0), 1) - mean) / std }
      }
    }
    return out
  }
}
