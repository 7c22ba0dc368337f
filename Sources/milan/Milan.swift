// The `milan` command line. Thin: each subcommand parses options, builds a configuration and calls the library.
import ArgumentParser

@main
struct Milan: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "milan",
    abstract: "MILAN in Swift: masked image pretraining on language-assisted representations.",
    version: "0.1.0",
    subcommands: [Info.self, Inspect.self, Convert.self, Pretrain.self, Step.self, Eval.self, Knn.self, Linprobe.self, Finetune.self, Embed.self])
}
