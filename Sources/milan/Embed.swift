import ArgumentParser
import Foundation
import MilanTrain

extension Milan {
  struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write per-image features of an encoder or a teacher (class token, mean or every token; optionally "
        + "the class attention) for an image folder or IDX set to a safetensors file.",
      discussion: """
        Sources: --checkpoint RUN (the pretrained encoder; with --from teacher, the teacher the run recorded), \
        --encoder FILE (a ViT under timm names: milan convert's output, a finetuned classifier, a model.safetensors) \
        or --teacher FILE (any teacher file pretrain takes). The file holds features [N, D] or [N, 1+L, D], labels \
        and indices (I64), optionally cls_attention [N, L], and in its metadata the image names (files), class \
        names, source, tokens and image size. Images use the evaluation transform (Resize(size/0.875) + \
        CenterCrop, ImageNet normalisation), so an encoder's tokens equal timm's forward_features on it. \
        Read it with safetensors.numpy.load_file(path) and json.loads(safe_open(path, 'np').metadata()['files']).
        """)

    @Option(help: "Pretraining output folder (default runs/milan-fashion when no --encoder or --teacher is given).")
    var checkpoint: String?
    @Option(help: "With --checkpoint: embed with the run's encoder or its teacher.") var from: From = .encoder
    @Option(help: "A ViT encoder file under timm names.") var encoder: String?
    @Option(help: "A teacher file (ONNX or safetensors; DINOv2 or CLIP).") var teacher: String?
    @Option(help: "IDX folder or image folder (default: the run's data).") var dataDir: String?
    @Option(help: "Split: train, or test (t10k-* files, val/ or test/ sub-folder).") var split = "train"
    @Option(help: "Embed the first N images of the split (default all).") var images: Int?
    @Option(help: "cls (class token), mean (mean of the patch tokens) or all (every token).") var tokens = "cls"
    @Flag(help: "Also write the last block's class-token attention over the patches (heads averaged).")
    var attention = false
    @Option(help: "Input size (default: the run's, or the model's own).") var imageSize: Int?
    @Option(help: "Batch size.") var batchSize = 64
    @Option(help: "Fraction of unreadable images tolerated (skipped, listed in the metadata).") var maxUnreadable = 0.01
    @Option(name: .shortAndLong, help: "Output .safetensors file.") var output: String
    @OptionGroup var runtime: RuntimeOptions

    enum From: String, ExpressibleByArgument, CaseIterable { case encoder, teacher }

    func run() throws {
      let sources = [checkpoint != nil, encoder != nil, teacher != nil].filter { $0 }.count
      guard sources <= 1 else { throw ValidationError("give one of --checkpoint, --encoder and --teacher") }
      let source: EmbedConfig.Source
      if let encoder {
        source = .encoderFile(encoder)
      } else if let teacher {
        source = .teacherFile(teacher)
      } else {
        let run = checkpoint ?? "runs/milan-fashion"
        source = from == .teacher ? .runTeacher(run) : .runEncoder(run)
      }
      if from == .teacher && checkpoint == nil && (encoder != nil || teacher != nil) {
        throw ValidationError("--from teacher goes with --checkpoint")
      }
      var c = EmbedConfig(source: source, output: output)
      c.dataDir = dataDir
      c.split = split
      c.limit = images
      c.tokens = try choice(tokens, "--tokens")
      c.attention = attention
      c.imageSize = imageSize
      c.batchSize = batchSize
      c.maxUnreadableFraction = maxUnreadable
      let s = try Embedding.run(c, group: try runtime.start(), log: say)
      say("\(s.count) images → \(output): features \(s.shape)\(attention ? " + cls_attention" : ""), labels, indices"
        + (s.skipped.isEmpty ? "" : "; \(s.skipped.count) unreadable skipped"))
    }
  }
}
