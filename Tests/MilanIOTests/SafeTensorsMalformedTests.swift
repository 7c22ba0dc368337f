import Foundation
import Testing
import MilanIO

@Suite("SafeTensors malformed input")
struct SafeTensorsMalformedTests {
    /// F32 entry helper.
    private func entry(_ name: String, shape: String = "[2]", offsets: String, dtype: String = "\"F32\"") -> String {
        #""\#(name)":{"dtype":\#(dtype),"shape":\#(shape),"data_offsets":\#(offsets)}"#
    }

    private func expectError(_ expected: SafeTensorsError, header: String, data: [UInt8] = [],
                             sourceLocation: SourceLocation = #_sourceLocation) {
        let got = stParseError(stFile(header: header, data: data))
        #expect(got == expected, "header: \(header)", sourceLocation: sourceLocation)
    }

    @Test("Truncated file (< 8 bytes)")
    func truncated() {
        for n in 0..<8 {
            #expect(stParseError([UInt8](repeating: 0, count: n)) == .fileTooSmall(size: n))
        }
    }

    @Test("Header length larger than the file")
    func headerLengthTooLarge() {
        #expect(stParseError(stFile(headerLength: 100, rest: Array("{}".utf8))) ==
            .headerSizeExceedsFile(headerSize: 100, available: 2))
        #expect(stParseError(stFile(headerLength: 3, rest: Array("{}".utf8))) ==
            .headerSizeExceedsFile(headerSize: 3, available: 2))
        #expect(stParseError(stFile(headerLength: UInt64.max, rest: [])) ==
            .headerTooLarge(headerSize: UInt64.max, limit: 100_000_000))
    }

    @Test("Oversized header (> 100 MB limit)")
    func oversizedHeader() {
        #expect(stParseError(stFile(headerLength: 100_000_001, rest: Array("{}".utf8))) ==
            .headerTooLarge(headerSize: 100_000_001, limit: 100_000_000))
    }

    @Test("Header not UTF-8, not JSON, not an object, bad start")
    func headerNotJSON() {
        #expect(stParseError(stFile(headerLength: 4, rest: [0x7B, 0xFF, 0xFE, 0x7D])) == .headerNotUTF8)
        for text in ["hello", "{", "{\"a\":}", "{\"a\":1,}", "{} x", "", "{\"a\":01}", "{\"a\":\"\\x\"}",
                     "{\"a\":\"\\ud800\"}", "{\"a\":\"line\nbreak\"}", "{'a':1}", "{\"a\":tru}"] {
            let got = stParseError(stFile(header: text))
            guard case .headerNotJSON? = got else {
                Issue.record("\(text.debugDescription): expected headerNotJSON, got \(String(describing: got))")
                continue
            }
        }
        expectError(.headerNotObject, header: "[1,2]")
        expectError(.headerNotObject, header: "\"str\"")
        expectError(.headerNotObject, header: "42")
        expectError(.invalidHeaderStart(firstByte: 0x20), header: " {}")
        // Trailing space padding is fine.
        #expect(stParseError(stFile(header: "{}   ")) == nil)
    }

    @Test("UTF-8 validation: known bad sequences and a seeded differential check against the stdlib")
    func utf8Validation() {
        func header(_ payload: [UInt8]) -> [UInt8] {
            let h = Array(#"{"__metadata__":{"k":""#.utf8) + payload + Array(#""}}"#.utf8)
            return stFile(headerLength: UInt64(h.count), rest: h)
        }
        let bad: [[UInt8]] = [[0x80], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80],
                              [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xE2, 0x82], [0xF0, 0x9F, 0x98], [0xFF]]
        for b in bad { #expect(stParseError(header(b)) == .headerNotUTF8, "\(b)") }
        let good: [[UInt8]] = [[0xC2, 0x80], [0xE2, 0x82, 0xAC], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80],
                               [0xF0, 0x9F, 0x98, 0x80], [0xF4, 0x8F, 0xBF, 0xBF]]
        for b in good { #expect(stParseError(header(b)) == nil, "\(b)") }

        guard #available(macOS 15.0, iOS 18.0, *) else { return } // String(validating:as:)
        var rng = SplitMix64(seed: 77)
        var valid = 0
        for _ in 0..<3000 {
            let payload = (0..<Int.random(in: 1...6, using: &rng)).map { _ -> UInt8 in
                Int.random(in: 0..<4, using: &rng) == 0 ? UInt8(ascii: "a") : UInt8.random(in: 0x80...0xFF, using: &rng)
            }
            let isValid = String(validating: payload, as: UTF8.self) != nil
            if isValid { valid += 1 }
            #expect(stParseError(header(payload)) == (isValid ? nil : .headerNotUTF8), "\(payload)")
        }
        #expect(valid > 50)
    }

    @Test("Deep nesting is rejected, not a stack overflow")
    func deepNesting() {
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        let got = stParseError(stFile(header: "{\"a\":" + deep + "}"))
        guard case .headerNotJSON? = got else {
            Issue.record("expected headerNotJSON, got \(String(describing: got))")
            return
        }
    }

    @Test("Entry not an object, missing / ill-typed fields")
    func badEntries() {
        expectError(.entryNotObject(tensor: "a"), header: #"{"a":3}"#)
        expectError(.missingField(tensor: "a", field: "dtype"), header: #"{"a":{"shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        expectError(.missingField(tensor: "a", field: "shape"), header: #"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#, data: [0, 0, 0, 0])
        expectError(.missingField(tensor: "a", field: "data_offsets"), header: #"{"a":{"dtype":"F32","shape":[1]}}"#, data: [0, 0, 0, 0])
        expectError(.invalidField(tensor: "a", field: "dtype", reason: "expected a string, got 5"),
                    header: "{" + entry("a", offsets: "[0,8]", dtype: "5") + "}", data: [UInt8](repeating: 0, count: 8))
        expectError(.invalidField(tensor: "a", field: "shape", reason: "expected an array, got 2"),
                    header: "{" + entry("a", shape: "2", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
        for bad in ["[0]", "[0,8,9]", "\"0,8\"", "{}"] {
            let got = stParseError(stFile(header: "{" + entry("a", offsets: bad) + "}", data: [UInt8](repeating: 0, count: 8)))
            guard case .invalidField(tensor: "a", field: "data_offsets", _)? = got else {
                Issue.record("offsets \(bad): got \(String(describing: got))")
                continue
            }
        }
        for bad in ["[0,8.0]", "[-1,7]", "[0,true]", "[0,99999999999999999999]"] {
            let got = stParseError(stFile(header: "{" + entry("a", offsets: bad) + "}", data: [UInt8](repeating: 0, count: 8)))
            guard case .invalidField(tensor: "a", field: "data_offsets", _)? = got else {
                Issue.record("offsets \(bad): got \(String(describing: got))")
                continue
            }
        }
        let dup = #"{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        expectError(.invalidField(tensor: "a", field: "dtype", reason: "duplicate key"), header: dup, data: [UInt8](repeating: 0, count: 8))
    }

    @Test("Unknown and recognised-but-unsupported dtypes")
    func dtypes() {
        expectError(.unknownDType(tensor: "a", dtype: "F33"), header: "{" + entry("a", offsets: "[0,8]", dtype: "\"F33\"") + "}",
                    data: [UInt8](repeating: 0, count: 8))
        expectError(.unknownDType(tensor: "a", dtype: "f32"), header: "{" + entry("a", offsets: "[0,8]", dtype: "\"f32\"") + "}",
                    data: [UInt8](repeating: 0, count: 8))
        expectError(.unsupportedDType(tensor: "a", dtype: "F8_E4M3"),
                    header: "{" + entry("a", offsets: "[0,2]", dtype: "\"F8_E4M3\"") + "}", data: [0, 0])
    }

    @Test("Size mismatch between shape*dtype and offsets")
    func sizeMismatch() {
        expectError(.sizeMismatch(tensor: "a", expectedBytes: 16, actualBytes: 8),
                    header: "{" + entry("a", shape: "[2,2]", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
        expectError(.sizeMismatch(tensor: "a", expectedBytes: 8, actualBytes: 4),
                    header: "{" + entry("a", shape: "[2]", offsets: "[0,4]", dtype: "\"F32\"") + "}", data: [UInt8](repeating: 0, count: 4))
    }

    @Test("Negative dimension")
    func negativeDim() {
        expectError(.negativeDimension(tensor: "a", index: 1, value: -2),
                    header: "{" + entry("a", shape: "[1,-2]", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
    }

    @Test("Non-integer dimension", arguments: ["1.5", "2.0", "2e0", "true", "null", "\"2\"", "[2]"])
    func nonIntegerDim(dim: String) {
        let got = stParseError(stFile(header: "{" + entry("a", shape: "[\(dim)]", offsets: "[0,8]") + "}",
                                      data: [UInt8](repeating: 0, count: 8)))
        guard case .nonIntegerDimension(tensor: "a", index: 0, _)? = got else {
            Issue.record("dim \(dim): got \(String(describing: got))")
            return
        }
    }

    @Test("Shape product overflow")
    func shapeOverflow() {
        expectError(.shapeOverflow(tensor: "a"),
                    header: "{" + entry("a", shape: "[4294967296,4294967296,4]", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
        expectError(.shapeOverflow(tensor: "a"),
                    header: "{" + entry("a", shape: "[2305843009213693952]", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
        expectError(.shapeOverflow(tensor: "a"),
                    header: "{" + entry("a", shape: "[99999999999999999999]", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 8))
    }

    @Test("Offsets: end < begin, beyond buffer")
    func badOffsets() {
        expectError(.invalidOffsets(tensor: "a", begin: 8, end: 0),
                    header: "{" + entry("a", offsets: "[8,0]") + "}", data: [UInt8](repeating: 0, count: 8))
        expectError(.offsetsOutOfBounds(tensor: "a", end: 8, bufferSize: 4),
                    header: "{" + entry("a", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 4))
        expectError(.offsetsOutOfBounds(tensor: "b", end: 16, bufferSize: 8),
                    header: "{" + entry("a", offsets: "[0,8]") + "," + entry("b", offsets: "[8,16]") + "}",
                    data: [UInt8](repeating: 0, count: 8))
    }

    @Test("Overlapping tensors")
    func overlapping() {
        expectError(.overlappingTensors(first: "a", second: "b"),
                    header: "{" + entry("b", offsets: "[4,12]") + "," + entry("a", offsets: "[0,8]") + "}",
                    data: [UInt8](repeating: 0, count: 12))
        expectError(.overlappingTensors(first: "a", second: "b"),
                    header: "{" + entry("a", offsets: "[0,8]") + "," + entry("b", offsets: "[0,8]") + "}",
                    data: [UInt8](repeating: 0, count: 8))
    }

    @Test("Holes between tensors / at the start")
    func holes() {
        expectError(.holeInData(before: "a", after: "b", offset: 8, length: 4),
                    header: "{" + entry("a", offsets: "[0,8]") + "," + entry("b", offsets: "[12,20]") + "}",
                    data: [UInt8](repeating: 0, count: 20))
        expectError(.holeInData(before: nil, after: "a", offset: 0, length: 4),
                    header: "{" + entry("a", offsets: "[4,12]") + "}", data: [UInt8](repeating: 0, count: 12))
    }

    @Test("Trailing bytes after the last tensor")
    func trailing() {
        expectError(.trailingBytes(after: "a", count: 3),
                    header: "{" + entry("a", offsets: "[0,8]") + "}", data: [UInt8](repeating: 0, count: 11))
        expectError(.trailingBytes(after: nil, count: 1), header: "{}", data: [0])
    }

    @Test("Metadata not strings / not an object / duplicated")
    func metadata() {
        expectError(.metadataValueNotString(key: "k"), header: #"{"__metadata__":{"k":1}}"#)
        expectError(.metadataValueNotString(key: "k"), header: #"{"__metadata__":{"ok":"x","k":null}}"#)
        expectError(.metadataNotObject, header: #"{"__metadata__":"x"}"#)
        expectError(.duplicateMetadataKey(key: "k"), header: #"{"__metadata__":{"k":"1","k":"2"}}"#)
        expectError(.duplicateMetadataKey(key: "__metadata__"), header: #"{"__metadata__":{},"__metadata__":{}}"#)
        let ok = try? SafeTensorsFile(bytes: stFile(header: #"{"__metadata__":{"k":"v\u00e9\n"}}"#))
        #expect(ok?.metadata == ["k": "v\u{e9}\n"])
    }

    @Test("Duplicate tensor names are detected")
    func duplicateNames() {
        expectError(.duplicateTensorName(name: "a"),
                    header: "{" + entry("a", offsets: "[0,8]") + "," + entry("a", offsets: "[8,16]") + "}",
                    data: [UInt8](repeating: 0, count: 16))
        // Same name spelled with an escape is still a duplicate.
        expectError(.duplicateTensorName(name: "a"),
                    header: "{" + entry("a", offsets: "[0,8]") + "," + entry("\\u0061", offsets: "[8,16]") + "}",
                    data: [UInt8](repeating: 0, count: 16))
    }

    @Test("Zero-length file through the URL initialiser")
    func zeroLengthFile() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let url = dir.appendingPathComponent("empty.safetensors")
        #expect(FileManager.default.createFile(atPath: url.path, contents: Data()))
        #expect(throws: SafeTensorsError.inFile(path: url.path, underlying: .fileTooSmall(size: 0))) {
            try SafeTensorsFile(contentsOf: url)
        }
    }

    @Test("Format errors from a URL name the file")
    func urlFormatError() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let url = dir.appendingPathComponent("bad.safetensors")
        try Data(stFile(header: "[]")).write(to: url)
        let error = #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(contentsOf: url) }
        #expect(error == .inFile(path: url.path, underlying: .headerNotObject))
        #expect(error?.reason == .headerNotObject)
        #expect(error?.description.contains(url.path) == true)
    }

    @Test("Missing file, directory, unreadable file")
    func osErrors() throws {
        let dir = try makeTempDir()
        defer { removeTempDir(dir) }
        let missing = dir.appendingPathComponent("missing.safetensors")
        let error = #expect(throws: SafeTensorsError.fileNotFound(path: missing.path)) {
            try SafeTensorsFile(contentsOf: missing)
        }
        #expect(error?.description.contains(missing.path) == true)
        #expect(throws: SafeTensorsError.readFailed(path: dir.path, operation: "open", errno: EISDIR)) {
            try SafeTensorsFile(contentsOf: dir)
        }
        if getuid() != 0 { // root bypasses permission checks
            let locked = dir.appendingPathComponent("locked.safetensors")
            try Data(stFile(header: "{}")).write(to: locked)
            chmod(locked.path, 0)
            #expect(throws: SafeTensorsError.permissionDenied(path: locked.path)) {
                try SafeTensorsFile(contentsOf: locked)
            }
        }
    }
}
