import Foundation
import Testing
import MilanIO

@Suite("SafeTensors round trip and access")
struct SafeTensorsTests {
    // MARK: Round trips

    @Test("Round trip in memory for every dtype", arguments: SafeTensorsDType.allCases)
    func roundTripInMemory(dtype: SafeTensorsDType) throws {
        var rng = SplitMix64(seed: 42 &+ UInt64(dtype.byteSize))
        let shape = [2, 3, 5]
        let bytes = (0..<(30 * dtype.byteSize)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        var w = SafeTensorsWriter(metadata: ["format": "pt", "dtype": dtype.rawValue])
        try w.add(name: "x", dtype: dtype, shape: shape, bytes: bytes)
        try w.add(name: "empty", dtype: dtype, shape: [0, 4], bytes: [])
        try w.add(name: "scalar", dtype: dtype, shape: [], bytes: Array(bytes.prefix(dtype.byteSize)))

        let file = try SafeTensorsFile(bytes: try w.serialized())
        #expect(file.metadata == ["format": "pt", "dtype": dtype.rawValue])
        #expect(file.tensors.map(\.name).sorted() == ["empty", "scalar", "x"])
        let x = try file.info("x")
        #expect(x.dtype == dtype)
        #expect(x.shape == shape)
        #expect(x.elementCount == 30)
        #expect(try file.withRawBytes("x") { Array($0) } == bytes)
        #expect(try file.withRawBytes("empty") { $0.count } == 0)
        #expect(try file.info("empty").elementCount == 0)
        #expect(try file.info("scalar").shape == [])
        #expect(try file.withRawBytes("scalar") { Array($0) } == Array(bytes.prefix(dtype.byteSize)))
    }

    @Test("Round trip through a file on disk for every dtype with exact values", arguments: SafeTensorsDType.allCases)
    func roundTripOnDisk(dtype: SafeTensorsDType) throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let url = dir.appendingPathComponent("t.safetensors")
        var w = SafeTensorsWriter()
        try w.add(name: "v", dtype: dtype, shape: RefValues.shape, bytes: RefValues.bytes(dtype))
        try w.write(to: url)

        let file = try SafeTensorsFile(contentsOf: url)
        #expect(file.metadata.isEmpty)
        #expect(try file.info("v") == SafeTensorsInfo(name: "v", dtype: dtype, shape: [2, 3],
                                                      dataOffsets: 0..<(6 * dtype.byteSize)))
        if RefValues.isFloat(dtype) {
            #expect(try file.floats("v") == RefValues.floats.map { Float($0) })
            #expect(throws: SafeTensorsError.unsupportedConversion(tensor: "v", dtype: dtype.rawValue, target: "Int64")) {
                try file.int64s("v")
            }
        } else {
            #expect(try file.int64s("v") == RefValues.ints(dtype))
            #expect(throws: SafeTensorsError.unsupportedConversion(tensor: "v", dtype: dtype.rawValue, target: "Float")) {
                try file.floats("v")
            }
        }
        // Only the final file remains (no temp file).
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["t.safetensors"])
    }

    @Test("Typed add helpers round trip bit-exactly, including NaN and infinities")
    func typedAdds() throws {
        let floats: [Float] = [0, -0.0, 1, -1.5, .pi, .infinity, -.infinity, .nan, .leastNonzeroMagnitude, .greatestFiniteMagnitude]
        let ints: [Int64] = [0, 1, -1, .max, .min, 1 << 40]
        var w = SafeTensorsWriter()
        try floats.withUnsafeBufferPointer { try w.add(name: "f", shape: [2, 5], floats: $0) }
        try w.add(name: "i", shape: [6], int64s: ints)
        let file = try SafeTensorsFile(bytes: try w.serialized())
        #expect(try file.floats("f").map(\.bitPattern) == floats.map(\.bitPattern))
        #expect(try file.info("f").dtype == .F32)
        #expect(try file.int64s("i") == ints)
        #expect(try file.info("i").dtype == .I64)

        var dest = [Float](repeating: 7, count: 10)
        try dest.withUnsafeMutableBufferPointer { try file.readFloats("f", into: $0) }
        #expect(dest.map(\.bitPattern) == floats.map(\.bitPattern))
        var small = [Float](repeating: 0, count: 9)
        #expect(throws: SafeTensorsError.countMismatch(tensor: "f", expected: 10, actual: 9)) {
            try small.withUnsafeMutableBufferPointer { try file.readFloats("f", into: $0) }
        }
    }

    // MARK: Writer layout

    @Test("Writer produces the exact expected bytes (sorted, padded, aligned)")
    func writerLayout() throws {
        var w = SafeTensorsWriter(metadata: ["z": "last", "format": "pt"])
        try w.add(name: "b", dtype: .F32, shape: [1], bytes: leBytes([Float(2)]))
        try w.add(name: "a", dtype: .I64, shape: [1], bytes: leBytes([Int64(-1)]))
        let bytes = try w.serialized()
        var header = #"{"__metadata__":{"format":"pt","z":"last"},"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        while header.utf8.count % 8 != 0 { header += " " }
        let expected = stFile(header: header, data: leBytes([Int64(-1)]) + leBytes([Float(2)]))
        #expect(bytes == expected)
        #expect((8 + header.utf8.count) % 8 == 0)
        // Deterministic regardless of insertion order.
        var w2 = SafeTensorsWriter(metadata: ["format": "pt", "z": "last"])
        try w2.add(name: "a", dtype: .I64, shape: [1], bytes: leBytes([Int64(-1)]))
        try w2.add(name: "b", dtype: .F32, shape: [1], bytes: leBytes([Float(2)]))
        #expect(try w2.serialized() == bytes)
    }

    @Test("Empty metadata is omitted; empty writer yields a valid file")
    func writerEmpty() throws {
        let bytes = try SafeTensorsWriter().serialized()
        #expect(bytes == stFile(header: "{}      "))
        let file = try SafeTensorsFile(bytes: bytes)
        #expect(file.tensors.isEmpty)
        #expect(file.metadata.isEmpty)
        var w = SafeTensorsWriter(metadata: [:])
        try w.add(name: "a", dtype: .U8, shape: [1], bytes: [1])
        #expect(!String(decoding: try w.serialized(), as: UTF8.self).contains("__metadata__"))
    }

    @Test("Names and metadata with JSON special characters round trip")
    func escaping() throws {
        let names = ["quote\"d", "back\\slash", "new\nline", "tab\t", "ctl\u{01}\u{1F}", "unicode é 漢字 🙂", "", "slash/ok"]
        let meta = ["k\"ey": "va\\lue\n", "emoji": "🙂", "ctl": "\u{00}\u{7F}"]
        var w = SafeTensorsWriter(metadata: meta)
        for (i, n) in names.enumerated() {
            try w.add(name: n, dtype: .U8, shape: [i + 1], bytes: [UInt8](repeating: UInt8(i), count: i + 1))
        }
        let file = try SafeTensorsFile(bytes: try w.serialized())
        #expect(file.metadata == meta)
        #expect(Set(file.tensors.map(\.name)) == Set(names))
        for (i, n) in names.enumerated() {
            #expect(try file.int64s(n) == [Int64](repeating: Int64(i), count: i + 1))
        }
    }

    @Test("Writer validation errors")
    func writerErrors() throws {
        var w = SafeTensorsWriter()
        try w.add(name: "a", dtype: .F32, shape: [2], bytes: [UInt8](repeating: 0, count: 8))
        #expect(throws: SafeTensorsError.duplicateTensorName(name: "a")) {
            try w.add(name: "a", dtype: .F32, shape: [2], bytes: [UInt8](repeating: 0, count: 8))
        }
        #expect(throws: SafeTensorsError.sizeMismatch(tensor: "b", expectedBytes: 16, actualBytes: 8)) {
            try w.add(name: "b", dtype: .F32, shape: [2, 2], bytes: [UInt8](repeating: 0, count: 8))
        }
        #expect(throws: SafeTensorsError.negativeDimension(tensor: "c", index: 1, value: -3)) {
            try w.add(name: "c", dtype: .U8, shape: [1, -3], bytes: [])
        }
        #expect(throws: SafeTensorsError.shapeOverflow(tensor: "d")) {
            try w.add(name: "d", dtype: .U8, shape: [Int.max, 2], bytes: [])
        }
        #expect(throws: SafeTensorsError.invalidTensorName(name: "__metadata__", reason: "reserved for file metadata")) {
            try w.add(name: "__metadata__", dtype: .U8, shape: [1], bytes: [0])
        }
        #expect(throws: SafeTensorsError.countMismatch(tensor: "e", expected: 4, actual: 3)) {
            try w.add(name: "e", shape: [2, 2], int64s: [1, 2, 3])
        }
        #expect(throws: SafeTensorsError.countMismatch(tensor: "f", expected: 1, actual: 2)) {
            try [Float(1), 2].withUnsafeBufferPointer { try w.add(name: "f", shape: [], floats: $0) }
        }
        // Failed adds leave the writer unchanged.
        #expect(try SafeTensorsFile(bytes: try w.serialized()).tensors.map(\.name) == ["a"])
    }

    // MARK: Reading hand-made files

    @Test("Byte-literal good file (unaligned data start, padded header, any offset order)")
    func byteLiteralGoodFile() throws {
        // Header length 87 (not a multiple of 8) so the data is unaligned; entries listed out of offset order.
        let header = #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},"m":{"dtype":"I16","shape":[1],"data_offsets":[0,2]}}"#
        let padded = header + "   "
        let data: [UInt8] = [0xFE, 0xFF] + leBytes([Float(1.0), Float(-2.5)])
        let bytes = stFile(header: padded, data: data)
        let file = try SafeTensorsFile(bytes: bytes)
        #expect(file.tensors.map(\.name) == ["m", "w"])
        #expect(file.tensors[0] == SafeTensorsInfo(name: "m", dtype: .I16, shape: [1], dataOffsets: 0..<2))
        #expect(file.tensors[1] == SafeTensorsInfo(name: "w", dtype: .F32, shape: [2], dataOffsets: 2..<10))
        #expect(try file.floats("w") == [1.0, -2.5])
        #expect(try file.int64s("m") == [-2])
        #expect(file.metadata.isEmpty)

        // Same file via the mmap path.
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let url = dir.appendingPathComponent("good.safetensors")
        try Data(bytes).write(to: url)
        let mapped = try SafeTensorsFile(contentsOf: url)
        #expect(mapped.tensors == file.tensors)
        #expect(try mapped.floats("w") == [1.0, -2.5])
    }

    @Test("Access errors: missing tensor, unsupported conversion, U64 range")
    func accessErrors() throws {
        var w = SafeTensorsWriter()
        try w.add(name: "big", dtype: .U64, shape: [2], bytes: leBytes([UInt64(5), UInt64.max]))
        try w.add(name: "ok", dtype: .U64, shape: [1], bytes: leBytes([UInt64(Int64.max)]))
        let file = try SafeTensorsFile(bytes: try w.serialized())
        #expect(throws: SafeTensorsError.missingTensor(name: "nope")) { try file.info("nope") }
        #expect(throws: SafeTensorsError.missingTensor(name: "nope")) { try file.floats("nope") }
        #expect(throws: SafeTensorsError.missingTensor(name: "nope")) { try file.withRawBytes("nope") { _ in 0 } }
        #expect(throws: SafeTensorsError.valueOutOfRange(tensor: "big", index: 1)) { try file.int64s("big") }
        #expect(try file.int64s("ok") == [Int64.max])
        #expect(throws: SafeTensorsError.unsupportedConversion(tensor: "ok", dtype: "U64", target: "Float")) {
            try file.floats("ok")
        }
        #expect(SafeTensorsError.missingTensor(name: "nope").description.contains("'nope'"))
    }

    // MARK: Conversions

    @Test("F16 conversion is exact for known values")
    func f16Known() throws {
        let cases: [(UInt16, Float)] = [
            (0x0000, 0), (0x8000, -0.0), (0x3C00, 1), (0xBC00, -1), (0xC000, -2), (0x3800, 0.5),
            (0x3555, 0.333251953125), (0x7BFF, 65504), (0xFBFF, -65504), (0x0400, 0x1p-14),
            (0x0001, 0x1p-24), (0x8001, -0x1p-24), (0x03FF, 1023 * 0x1p-24), (0x7C00, .infinity), (0xFC00, -.infinity),
            (0x4248, 3.140625), (0x3BFF, 0.99951171875),
        ]
        let bits = cases.map(\.0) + [0x7E00, 0xFE01]
        let file = try SafeTensorsFile(bytes: try { () throws -> [UInt8] in
            var w = SafeTensorsWriter()
            try w.add(name: "h", dtype: .F16, shape: [bits.count], bytes: leBytes(bits))
            return try w.serialized()
        }())
        let out = try file.floats("h")
        for (i, c) in cases.enumerated() {
            #expect(out[i].bitPattern == c.1.bitPattern, "F16 0x\(String(c.0, radix: 16)) -> \(out[i]), expected \(c.1)")
        }
        #expect(out[cases.count].isNaN)
        #expect(out[cases.count + 1].isNaN && out[cases.count + 1].sign == .minus)
    }

    #if !(os(macOS) && arch(x86_64))
    @Test("F16 conversion matches Float16 for all 65536 bit patterns")
    func f16Exhaustive() throws {
        let all = (0...UInt16.max).map { $0 }
        var w = SafeTensorsWriter()
        try w.add(name: "h", dtype: .F16, shape: [all.count], bytes: leBytes(all))
        let out = try SafeTensorsFile(bytes: try w.serialized()).floats("h")
        var mismatches = 0
        for (i, b) in all.enumerated() {
            let ref = Float(Float16(bitPattern: b))
            if ref.isNaN {
                if !(out[i].isNaN && out[i].sign == ref.sign) { mismatches += 1 }
            } else if out[i].bitPattern != ref.bitPattern {
                mismatches += 1
            }
        }
        #expect(mismatches == 0)
    }
    #endif

    @Test("BF16 and F64 conversions are exact / correctly rounded")
    func bf16AndF64() throws {
        let cases: [(UInt16, Float)] = [
            (0x3F80, 1), (0xC020, -2.5), (0x4049, 3.140625), (0x0000, 0), (0x8000, -0.0),
            (0x7F80, .infinity), (0xFF80, -.infinity), (0x0001, Float(bitPattern: 0x0001_0000)),
            (0x7F7F, Float(bitPattern: 0x7F7F_0000)), (0x3C00, 0.0078125),
        ]
        let doubles: [Double] = [0.1, -1e300, 1e-50, 3.0, .infinity]
        var w = SafeTensorsWriter()
        try w.add(name: "b", dtype: .BF16, shape: [cases.count + 1], bytes: leBytes(cases.map(\.0) + [0x7FC0]))
        try w.add(name: "d", dtype: .F64, shape: [doubles.count], bytes: leBytes(doubles))
        let file = try SafeTensorsFile(bytes: try w.serialized())
        let out = try file.floats("b")
        for (i, c) in cases.enumerated() {
            #expect(out[i].bitPattern == c.1.bitPattern, "BF16 0x\(String(c.0, radix: 16)) -> \(out[i]), expected \(c.1)")
        }
        #expect(out[cases.count].isNaN)
        #expect(try file.floats("d") == doubles.map { Float($0) })
    }

    @Test("Integer conversions sign-extend correctly")
    func intConversions() throws {
        var w = SafeTensorsWriter()
        try w.add(name: "i8", dtype: .I8, shape: [3], bytes: [0x80, 0xFF, 0x7F])
        try w.add(name: "u8", dtype: .U8, shape: [2], bytes: [0x80, 0xFF])
        try w.add(name: "i16", dtype: .I16, shape: [2], bytes: leBytes([Int16.min, -1]))
        try w.add(name: "u16", dtype: .U16, shape: [1], bytes: leBytes([UInt16.max]))
        try w.add(name: "i32", dtype: .I32, shape: [2], bytes: leBytes([Int32.min, Int32.max]))
        try w.add(name: "u32", dtype: .U32, shape: [1], bytes: leBytes([UInt32.max]))
        try w.add(name: "bool", dtype: .BOOL, shape: [3], bytes: [0, 1, 2])
        let f = try SafeTensorsFile(bytes: try w.serialized())
        #expect(try f.int64s("i8") == [-128, -1, 127])
        #expect(try f.int64s("u8") == [128, 255])
        #expect(try f.int64s("i16") == [-32768, -1])
        #expect(try f.int64s("u16") == [65535])
        #expect(try f.int64s("i32") == [Int64(Int32.min), Int64(Int32.max)])
        #expect(try f.int64s("u32") == [Int64(UInt32.max)])
        #expect(try f.int64s("bool") == [0, 1, 1])
    }

    @Test("dtype byte sizes")
    func byteSizes() {
        let expected: [SafeTensorsDType: Int] = [.BOOL: 1, .U8: 1, .I8: 1, .I16: 2, .U16: 2, .F16: 2, .BF16: 2,
                                                 .I32: 4, .U32: 4, .F32: 4, .F64: 8, .I64: 8, .U64: 8]
        #expect(SafeTensorsDType.allCases.count == 13)
        for d in SafeTensorsDType.allCases { #expect(d.byteSize == expected[d]) }
    }

    // MARK: Atomic write

    @Test("Write into a missing directory throws naming the path and leaves no temp file")
    func atomicWriteMissingDirectory() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let target = dir.appendingPathComponent("no-such-dir/out.safetensors")
        var w = SafeTensorsWriter()
        try w.add(name: "a", dtype: .U8, shape: [1], bytes: [1])
        let error = #expect(throws: SafeTensorsError.self) { try w.write(to: target) }
        guard case .writeFailed(let path, let tempPath, let op, let err)? = error else {
            Issue.record("unexpected error \(String(describing: error))")
            return
        }
        #expect(path == target.path)
        #expect(tempPath.hasPrefix(target.path + ".tmp-"))
        #expect(op == "open")
        #expect(err == ENOENT)
        let text = error?.description ?? ""
        #expect(text.contains(target.path))
        #expect(text.contains("No such file or directory"))
        #expect(!FileManager.default.fileExists(atPath: tempPath))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }

    @Test("A failing rename removes the temp file; overwrite replaces the file")
    func atomicWriteRenameFailureAndOverwrite() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        var w = SafeTensorsWriter()
        try w.add(name: "a", dtype: .U8, shape: [3], bytes: [1, 2, 3])

        // Destination is a non-empty directory: open/write/fsync succeed, rename fails.
        let blocker = dir.appendingPathComponent("blocker")
        try FileManager.default.createDirectory(at: blocker.appendingPathComponent("inner"), withIntermediateDirectories: true)
        let error = #expect(throws: SafeTensorsError.self) { try w.write(to: blocker) }
        guard case .writeFailed(let path, let tempPath, let op, _)? = error else {
            Issue.record("unexpected error \(String(describing: error))")
            return
        }
        #expect(path == blocker.path)
        #expect(op == "rename")
        #expect(!FileManager.default.fileExists(atPath: tempPath))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["blocker"])

        // Overwrite an existing file.
        let url = dir.appendingPathComponent("x.safetensors")
        try Data("old contents".utf8).write(to: url)
        try w.write(to: url)
        #expect(try SafeTensorsFile(contentsOf: url).int64s("a") == [1, 2, 3])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["blocker", "x.safetensors"])
    }
}
