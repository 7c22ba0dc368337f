// libFuzzer's two entry points over one MilanFuzz reader, chosen by MILAN_LIBFUZZ_READER (safetensors, onnx, jpeg,
// png, idx, gzip, config.json, state.json). A thrown error is a refusal, as in milan-fuzz; a crash, a sanitizer report,
// a leak or a timeout is a finding, and libFuzzer writes the input that caused it. No `main`: built with
// -sanitize=fuzzer (scripts/libfuzz.sh), libFuzzer's own main drives these.
//   MILAN_LIBFUZZ_READER=png MILAN_LIBFUZZ_SEEDS=corpus/png .build/debug/milan-libfuzz corpus/png -runs=100000
import Foundation
import MilanFuzz

/// Picks the reader and, with MILAN_LIBFUZZ_SEEDS=DIR, writes its seeds there (libFuzzer reads the corpus folders
/// after this returns, so DIR can be the corpus).
@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
  let env = ProcessInfo.processInfo.environment
  let images = env["MILAN_LIBFUZZ_IMAGES"] ?? "Tests/Fixtures/images/files"
  let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("milan-libfuzz-\(getpid())")
  let all: [FuzzTarget]
  do { all = try FuzzTargets.all(images: URL(fileURLWithPath: images), scratch: scratch) } catch {
    FileHandle.standardError.write(Data("milan-libfuzz: cannot build the fuzz targets: \(error)\n".utf8))
    exit(2)
  }
  guard let name = env["MILAN_LIBFUZZ_READER"], let t = all.first(where: { $0.name == name }) else {
    FileHandle.standardError.write(Data(("milan-libfuzz: set MILAN_LIBFUZZ_READER to one of "
      + all.map(\.name).joined(separator: ", ") + "\n").utf8))
    exit(2)
  }
  target = t
  if let dir = env["MILAN_LIBFUZZ_SEEDS"] {
    let url = URL(fileURLWithPath: dir)
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    for (i, seed) in t.seeds.enumerated() {
      try? Data(seed).write(to: url.appendingPathComponent("seed-\(i)"))
    }
  }
  return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  guard let t = target else { return 0 }
  var bytes = [UInt8](UnsafeBufferPointer(start: data, count: size))
  // Every other input gets the reader's fix-up (valid PNG checksums), as milan-fuzz does, so libFuzzer's mutations
  // also reach past the checksum test.
  inputsRun += 1
  if let fix = t.fixup, inputsRun % 2 == 0 { bytes = fix(bytes) }
  do { try t.run(bytes) } catch {}
  return 0
}
