import ArgumentParser
import Foundation
import MilanIO

extension Milan {
  struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "List the tensors of a safetensors file: names, dtypes, shapes and parameter counts.")

    @Argument(help: "A .safetensors file.")
    var file: String

    func run() throws {
      let f = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: file))
      var total = 0
      let width = min(72, f.tensors.map(\.name.count).max() ?? 10)
      for t in f.tensors.sorted(by: { $0.name < $1.name }) {
        total += t.elementCount
        let name = t.name.padding(toLength: max(width, t.name.count), withPad: " ", startingAt: 0)
        print("\(name)  \(t.dtype.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0))  \(t.shape)  \(t.elementCount)")
      }
      if !f.metadata.isEmpty {
        print("metadata:")
        for (k, v) in f.metadata.sorted(by: { $0.key < $1.key }) { print("  \(k) = \(v.prefix(200))") }
      }
      print("\(f.tensors.count) tensors, \(total) elements (\(String(format: "%.2f", Double(total) / 1e6)) M)")
    }
  }
}
