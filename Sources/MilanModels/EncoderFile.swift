// A ViT encoder under timm's names from a safetensors file, its configuration taken from the file: the
// `milan.vit_config` metadata of a `milan finetune` classifier, the `milan.config` of a `milan pretrain` checkpoint
// (its encoder; the decoder is dropped), or the tensors themselves (width, depth, patch, grid, MLP width, head and
// pooling) with the head count from metadata / config.json or 64-wide heads, as `TeacherFile` reads teachers.
import Foundation
import MilanIO
import MilanTensor

public enum EncoderFile {
  /// The encoder in `path` and a one-line description.
  public static func load(_ path: String) throws -> (encoder: VisionTransformer, description: String) {
    let url = URL(fileURLWithPath: path)
    let file = try SafeTensorsFile(contentsOf: url)
    let keys = Set(file.tensors.map(\.name))
    var config: ViTConfig
    var source: String
    if let json = file.metadata["milan.vit_config"] {
      config = try decode(ViTConfig.self, json, path: path, key: "milan.vit_config")
      source = "milan finetune classifier"
    } else if let json = file.metadata["milan.config"] {
      config = try decode(MILANConfig.self, json, path: path, key: "milan.config").encoder
      source = "milan pretrain checkpoint"
    } else {
      config = try infer(file, keys: keys, folder: url.deletingLastPathComponent(), path: path)
      source = "timm names"
    }
    do { try config.validate(field: "the encoder's configuration (\(source))") } catch {
      throw EncoderFileError(path, "\(error)")
    }
    let encoder = VisionTransformer(config)
    let own = Set(encoder.namedParameters().map(\.0))
    var weights: [String: Tensor] = [:]
    for k in keys where own.contains(k) { weights[k] = try file.tensor(k) }
    do { try encoder.load(weights) } catch { throw EncoderFileError(path, "not a timm ViT encoder: \(error)") }
    let c = config
    return (encoder, "ViT (\(source); width \(c.embedDim), depth \(c.depth), \(c.numHeads) heads, patch \(c.patchSize), "
      + "\(c.imageSize) px\(c.globalPool == .avg ? ", mean pooling + fc_norm" : "")) from \(path)")
  }

  static func decode<T: Decodable>(_ type: T.Type, _ json: String, path: String, key: String) throws -> T {
    do { return try JSONDecoder().decode(T.self, from: Data(json.utf8)) } catch {
      throw EncoderFileError(path, "its \(key) metadata does not decode (\(error))")
    }
  }

  /// A ViTConfig from timm tensors.
  static func infer(_ file: SafeTensorsFile, keys: Set<String>, folder: URL, path: String) throws -> ViTConfig {
    func shape(_ k: String) throws -> [Int] {
      guard keys.contains(k) else {
        throw EncoderFileError(path, "not a timm ViT encoder (no \(k); tensors \(keys.sorted().prefix(5).joined(separator: ", ")), …)")
      }
      return try file.info(k).shape
    }
    let conv = try shape("patch_embed.proj.weight"), pos = try shape("pos_embed"), fc = try shape("blocks.0.mlp.fc1.weight")
    guard conv.count == 4, conv[2] == conv[3], pos.count == 3, fc.count == 2 else {
      throw EncoderFileError(path, "unexpected shapes: patch_embed.proj.weight \(conv), pos_embed \(pos)")
    }
    let width = conv[0], patch = conv[2]
    let grid = try TeacherFile.squareGrid(pos[1] - 1, path: path, role: "encoder")
    let hints = ArchitectureHints(metadata: file.metadata, folder: folder)
    var c = ViTConfig(imageSize: grid * patch, patchSize: patch, inChannels: conv[1], embedDim: width,
                      depth: TeacherFile.count(keys, prefix: "blocks.", suffix: ".norm1.weight"),
                      numHeads: try hints.headCount(width: width, path: path, role: "encoder"), mlpRatio: Double(fc[0]) / Double(width),
                      qkvBias: keys.contains("blocks.0.attn.qkv.bias"))
    if keys.contains("fc_norm.weight") { c.globalPool = .avg }
    if keys.contains("head.weight") { c.numClasses = try shape("head.weight")[0] }
    if let e = hints.layerNormEps { c.layerNormEps = e }
    if keys.contains("blocks.0.ls1.gamma") {
      throw EncoderFileError(path, "a ViT with LayerScale (DINOv2): embed it as a teacher (--teacher)")
    }
    return c
  }
}

/// TeacherFileError for encoders.
func EncoderFileError(_ path: String, _ problem: String) -> TeacherFileError {
  TeacherFileError(path, problem, role: "encoder")
}
