// IDX / gzip reading on the real Fashion-MNIST test set (Debian's dataset-fashion-mnist, installed by
// scripts/install-deps.sh) and on malformed files.
import Foundation
import MilanData
import Testing

let fashion = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")

@Suite struct IDXTests {
  @Test(.enabled(if: FileManager.default.fileExists(atPath: fashion.path) || ProcessInfo.processInfo.environment["CI"] != nil,
                 "dataset-fashion-mnist not installed (scripts/install-deps.sh installs it)"))
  func readsTheRealFashionMNISTTestSet() throws {
    let d = try IDXDataset(images: fashion.appendingPathComponent("t10k-images-idx3-ubyte.gz"),
                           labels: fashion.appendingPathComponent("t10k-labels-idx1-ubyte.gz"))
    #expect(d.count == 10_000 && d.rows == 28 && d.cols == 28 && d.pixels.count == 7_840_000)
    var perClass = [Int](repeating: 0, count: 10)
    for l in d.labels! { perClass[l] += 1 }
    #expect(perClass == [Int](repeating: 1000, count: 10))  // the test set is balanced
    let mean = Double(d.pixels.reduce(0) { $0 + Int($1) }) / Double(d.pixels.count) / 255
    #expect(mean > 0.28 && mean < 0.295, "mean pixel \(mean), Fashion-MNIST's is about 0.287")
  }

  func write(_ bytes: [UInt8], _ name: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("milan-idx-\(getpid())-\(name)")
    try Data(bytes).write(to: url)
    return url
  }

  @Test func malformedFilesGiveErrorsThatNameTheFile() throws {
    let header: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]
    let good = try write(header + [1, 2, 3, 4, 5, 6, 7, 8], "good")
    #expect(try IDXDataset(images: good).pixels == [1, 2, 3, 4, 5, 6, 7, 8])
    let short = try write(header + [1, 2, 3], "short")
    #expect(throws: IDXError.sizeMismatch(path: short.path, expected: 8, found: 3)) { try IDXDataset(images: short) }
    let labels = try write([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3], "labels")
    #expect(throws: IDXError.countMismatch(images: 2, labels: 3)) { try IDXDataset(images: good, labels: labels) }
    #expect(throws: IDXError.self) { try IDXDataset(images: labels) }  // a label file is not an image file
    let badGz = try write([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3, 0xFF, 0xFF, 0x00], "bad.gz")
    #expect(throws: GzipError.self) { try IDXDataset(images: badGz) }
    let missing = URL(fileURLWithPath: "/nonexistent/t10k.gz")
    do {
      _ = try IDXDataset(images: missing)
      Issue.record("missing file accepted")
    } catch let e as IDXError {
      #expect(e.description.contains("/nonexistent/t10k.gz"))
    }
    for u in [good, short, labels, badGz] { try? FileManager.default.removeItem(at: u) }
  }
}
