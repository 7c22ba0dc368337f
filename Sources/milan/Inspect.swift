import ArgumentParser
import Foundation
import MilanIO

extension Milan {
  struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "List the tensors of a safetensors or ONNX file: names, dtypes, shapes and parameter counts.")

    @Argument(help: "A .safetensors or .onnx file.")
    var file: String

    func run() throws {
      let url = URL(fileURLWithPath: file)
      // By content; a broken file named .safetensors gets the safetensors reader's error.
      if !SafeTensorsFile.looksLikeSafeTensors(url) && url.pathExtension.lowercased() != "safetensors" {
        return try inspectONNX()
      }
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
  
    func inspectONNX() throws {
      let m = try ONNXModel(contentsOf: URL(fileURLWithPath: file))
      var total = 0
      let width = min(72, m.initializerOrder.map(\.count).max() ?? 10)
      let dtypes = [1: "F32", 6: "I32", 7: "I64", 10: "F16", 11: "F64", 16: "BF16"]
      for name in m.initializerOrder {
        let t = m.initializers[name]!
        total += t.elementCount
        let n = name.padding(toLength: max(width, name.count), withPad: " ", startingAt: 0)
        print("\(n)  \(dtypes[t.dataType] ?? "type\(t.dataType)")  \(t.dims)  \(t.elementCount)")
      }
      var ops: [String: Int] = [:]
      for node in m.nodes { ops[node.opType, default: 0] += 1 }
      print("ops: " + ops.sorted { $0.value > $1.value }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
      print("\(m.initializers.count) initializers, \(total) elements (\(String(format: "%.2f", Double(total) / 1e6)) M), "
        + "\(m.nodes.count) nodes")
    }
  }
}
