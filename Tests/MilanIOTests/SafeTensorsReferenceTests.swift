import Foundation
import Testing
import MilanIO

/// Cross-check against the reference implementation (safetensors + torch in Python).
///
/// Runs only when a Python with `torch` and `safetensors` is available: set
/// `MILANIO_REFERENCE_PYTHON` to its path, or have `/work/venv-ref/bin/python`.
/// Skipped otherwise (not needed in CI).
enum ReferencePython {
    static let path: String = ProcessInfo.processInfo.environment["MILANIO_REFERENCE_PYTHON"] ?? "/work/venv-ref/bin/python"

    static func run(_ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            return (-1, "\(error)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static let isAvailable: Bool = {
        guard FileManager.default.isExecutableFile(atPath: path) else { return false }
        return run(["-c", "import torch, safetensors.torch"]).status == 0
    }()

    /// Loads `<dir>/swift.safetensors` (written by Swift) and checks every value, then writes
    /// `<dir>/torch.safetensors` with `safetensors.torch.save_file`. Prints "OK" on success.
    static let script = #"""
import sys
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

d = sys.argv[1]
n = 6
floats = [(i - 2.5) * 0.75 for i in range(n)]
signed = [i * 7 - 20 for i in range(n)]
unsigned = [i * 7 + 3 for i in range(n)]
bools = [i % 3 == 0 for i in range(n)]
spec = {
    "BOOL": (torch.bool, bools), "U8": (torch.uint8, unsigned), "I8": (torch.int8, signed),
    "I16": (torch.int16, signed), "U16": (torch.uint16, unsigned),
    "F16": (torch.float16, floats), "BF16": (torch.bfloat16, floats), "I32": (torch.int32, signed),
    "U32": (torch.uint32, unsigned), "F32": (torch.float32, floats),
    "F64": (torch.float64, floats), "I64": (torch.int64, signed), "U64": (torch.uint64, unsigned),
}
expected = {}
for k, (dt, vals) in spec.items():
    src = torch.float64 if dt.is_floating_point else torch.int64
    if dt == torch.bool:
        src = torch.bool
    expected["t_" + k.lower()] = torch.tensor(vals, dtype=src).to(dt).reshape(2, 3)

loaded = load_file(d + "/swift.safetensors")
with safe_open(d + "/swift.safetensors", framework="pt") as f:
    meta = f.metadata()
assert meta == {"format": "pt", "producer": "MilanIO"}, meta
for name, t in expected.items():
    got = loaded.pop(name)
    assert got.dtype == t.dtype, (name, got.dtype, t.dtype)
    assert tuple(got.shape) == (2, 3), (name, got.shape)
    assert got.tolist() == t.tolist(), (name, got.tolist(), t.tolist())
assert sorted(loaded) == ["empty", "scalar"], sorted(loaded)
assert loaded["scalar"].shape == () and loaded["scalar"].item() == 1.5
assert tuple(loaded["empty"].shape) == (0, 4)

out = dict(expected)
out["scalar"] = torch.tensor(1.5, dtype=torch.float32)
out["empty"] = torch.zeros((0, 4), dtype=torch.float32)
save_file(out, d + "/torch.safetensors", metadata={"format": "pt", "producer": "torch"})
import safetensors
print("OK torch", torch.__version__, "safetensors", safetensors.__version__)
"""#
}

@Suite("SafeTensors reference interop (Python safetensors)", .enabled(if: ReferencePython.isAvailable))
struct SafeTensorsReferenceTests {
    @Test("Swift-written file loads in safetensors.torch; torch-written file reads in Swift")
    func interop() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }

        var w = SafeTensorsWriter(metadata: ["format": "pt", "producer": "MilanIO"])
        for d in SafeTensorsDType.allCases {
            try w.add(name: RefValues.name(d), dtype: d, shape: RefValues.shape, bytes: RefValues.bytes(d))
        }
        try [Float(1.5)].withUnsafeBufferPointer { try w.add(name: "scalar", shape: [], floats: $0) }
        try w.add(name: "empty", dtype: .F32, shape: [0, 4], bytes: [])
        try w.write(to: dir.appendingPathComponent("swift.safetensors"))

        let result = ReferencePython.run(["-c", ReferencePython.script, dir.path])
        #expect(result.status == 0, "python output:\n\(result.output)")
        guard result.status == 0 else { return }
        print("reference python: \(result.output.trimmingCharacters(in: .whitespacesAndNewlines))")

        let file = try SafeTensorsFile(contentsOf: dir.appendingPathComponent("torch.safetensors"))
        #expect(file.metadata == ["format": "pt", "producer": "torch"])
        for d in SafeTensorsDType.allCases {
            let name = RefValues.name(d)
            let info = try file.info(name)
            #expect(info.dtype == d)
            #expect(info.shape == [2, 3])
            #expect(try file.withRawBytes(name) { Array($0) } == RefValues.bytes(d), "\(name) bytes")
            if RefValues.isFloat(d) {
                #expect(try file.floats(name) == RefValues.floats.map { Float($0) })
            } else {
                #expect(try file.int64s(name) == RefValues.ints(d))
            }
        }
        #expect(try file.floats("scalar") == [1.5])
        #expect(try file.info("scalar").shape == [])
        #expect(try file.info("empty").shape == [0, 4])
    }
}
