import ArgumentParser
import Foundation
import MilanTrain

extension Milan {
  struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write one self-contained HTML page showing what a pretraining run (or every row of an ablate folder) learned.",
      discussion: """
        Training curves; for the first test images the image, the teacher's class attention, a semantic-aware and a \
        random mask, each model's per-patch loss map and last-block class attention; t-SNE of test features of the \
        student(s), a random encoder and the teacher; the evaluation table (eval.json or ablation.json) and the \
        linear probe's confusion matrix. Pictures are inline PNG and SVG: open the file in any browser, offline.
        """)

    @Argument(help: "A milan pretrain output folder or a milan ablate output folder.") var folder: String
    @Option(name: .shortAndLong, help: "Output HTML file (default RUN/report.html).") var output: String?
    @Option(help: "Test images shown with their maps.") var images = 6
    @Option(help: "Test images in the t-SNE plots.") var embedImages = 400

    func run() throws {
      guard images > 0, embedImages > 1 else { throw ValidationError("--images and --embed-images must be positive") }
      var c = ReportConfig(run: folder)
      c.output = output
      c.images = images
      c.embedImages = embedImages
      let url = try MilanTrain.Report.write(c, log: say)
      say("report: \(url.path) (open it in a browser)")
    }
  }
}
