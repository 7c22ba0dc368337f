// The entry point and the reader this process fuzzes. SwiftPM links an executable's `main` to the module's entry
// symbol (milan_libfuzz_main), so that symbol hands argc/argv to libFuzzer's driver (LLVMFuzzerRunDriver), which
// calls LLVMFuzzerInitialize and then testOneInput (LibFuzzerEntry.swift) for every input.
import CLibFuzzerDriver
import MilanFuzz

nonisolated(unsafe) var target: FuzzTarget? = nil
nonisolated(unsafe) var inputsRun = 0

@_cdecl("milan_libfuzz_main")
public func milanLibFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
  var argc = argc, argv = argv
  return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    guard let data else { return 0 }
    return testOneInput(data, size)
  }
}
