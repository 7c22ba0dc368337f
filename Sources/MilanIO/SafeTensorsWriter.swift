#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds safetensors files.
///
/// Layout is deterministic: `__metadata__` first (only if non-empty, keys sorted),
/// then tensors sorted by name (UTF-8 byte order) in both the header and the data
/// buffer, so data_offsets increase with the name. The header is padded with spaces
/// so the data buffer starts at an 8-byte aligned file offset. Data is little-endian.
public struct SafeTensorsWriter: Sendable {
    private struct Entry: Sendable {
        var dtype: SafeTensorsDType
        var shape: [Int]
        var bytes: [UInt8]
    }

    private var metadata: [String: String]
    private var entries: [String: Entry] = [:]

    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Adds a tensor from raw little-endian bytes. Validates name, dims and size.
    public mutating func add(name: String, dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) throws {
        let count = try checkNew(name: name, shape: shape)
        let (expected, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        if overflow { throw SafeTensorsError.shapeOverflow(tensor: name) }
        guard bytes.count == expected else {
            throw SafeTensorsError.sizeMismatch(tensor: name, expectedBytes: expected, actualBytes: bytes.count)
        }
        entries[name] = Entry(dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds an F32 tensor. `floats.count` must equal the shape's element count.
    public mutating func add(name: String, shape: [Int], floats: UnsafeBufferPointer<Float>) throws {
        let count = try checkNew(name: name, shape: shape)
        guard floats.count == count else {
            throw SafeTensorsError.countMismatch(tensor: name, expected: count, actual: floats.count)
        }
        var bytes = [UInt8](repeating: 0, count: count * 4)
        bytes.withUnsafeMutableBytes { out in
            for (i, f) in floats.enumerated() {
                out.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
        entries[name] = Entry(dtype: .F32, shape: shape, bytes: bytes)
    }

    /// Adds an I64 tensor. `int64s.count` must equal the shape's element count.
    public mutating func add(name: String, shape: [Int], int64s: [Int64]) throws {
        let count = try checkNew(name: name, shape: shape)
        guard int64s.count == count else {
            throw SafeTensorsError.countMismatch(tensor: name, expected: count, actual: int64s.count)
        }
        var bytes = [UInt8](repeating: 0, count: count * 8)
        bytes.withUnsafeMutableBytes { out in
            for (i, v) in int64s.enumerated() {
                out.storeBytes(of: v.littleEndian, toByteOffset: i * 8, as: Int64.self)
            }
        }
        entries[name] = Entry(dtype: .I64, shape: shape, bytes: bytes)
    }

    /// Returns the element count after checking name uniqueness and dims.
    private func checkNew(name: String, shape: [Int]) throws -> Int {
        if name == "__metadata__" {
            throw SafeTensorsError.invalidTensorName(name: name, reason: "reserved for file metadata")
        }
        if entries[name] != nil { throw SafeTensorsError.duplicateTensorName(name: name) }
        var count = 1
        for (i, d) in shape.enumerated() {
            if d < 0 { throw SafeTensorsError.negativeDimension(tensor: name, index: i, value: d) }
            let (p, o) = count.multipliedReportingOverflow(by: d)
            if o { throw SafeTensorsError.shapeOverflow(tensor: name) }
            count = p
        }
        // Byte size must also fit (largest dtype is 8 bytes).
        if count.multipliedReportingOverflow(by: 8).overflow { throw SafeTensorsError.shapeOverflow(tensor: name) }
        return count
    }

    private var sortedNames: [String] {
        entries.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    /// The 8-byte length prefix plus the padded JSON header.
    private func headerBytes(order: [String]) throws -> [UInt8] {
        var json: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        if !metadata.isEmpty {
            JSONWriter.appendString("__metadata__", to: &json)
            json.append(contentsOf: Array(":{".utf8))
            let keys = metadata.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
            for (i, k) in keys.enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                JSONWriter.appendString(k, to: &json)
                json.append(UInt8(ascii: ":"))
                JSONWriter.appendString(metadata[k]!, to: &json)
            }
            json.append(UInt8(ascii: "}"))
            first = false
        }
        var offset = 0
        for name in order {
            let e = entries[name]!
            if !first { json.append(UInt8(ascii: ",")) }
            first = false
            JSONWriter.appendString(name, to: &json)
            json.append(contentsOf: Array(":{\"dtype\":".utf8))
            JSONWriter.appendString(e.dtype.rawValue, to: &json)
            json.append(contentsOf: Array(",\"shape\":[".utf8))
            for (i, d) in e.shape.enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                JSONWriter.appendInt(d, to: &json)
            }
            json.append(contentsOf: Array("],\"data_offsets\":[".utf8))
            JSONWriter.appendInt(offset, to: &json)
            json.append(UInt8(ascii: ","))
            offset += e.bytes.count
            JSONWriter.appendInt(offset, to: &json)
            json.append(contentsOf: Array("]}".utf8))
        }
        json.append(UInt8(ascii: "}"))
        // Pad so that 8 + header is a multiple of 8.
        while json.count % 8 != 0 { json.append(0x20) }
        if json.count > SafeTensorsFile.maxHeaderSize {
            throw SafeTensorsError.headerTooLarge(headerSize: UInt64(json.count), limit: SafeTensorsFile.maxHeaderSize)
        }
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        return out
    }

    /// The complete file image.
    public func serialized() throws -> [UInt8] {
        let order = sortedNames
        var out = try headerBytes(order: order)
        out.reserveCapacity(out.count + entries.values.reduce(0) { $0 + $1.bytes.count })
        for name in order { out.append(contentsOf: entries[name]!.bytes) }
        return out
    }

    /// Writes the file atomically: data goes to `<path>.tmp-<pid>` in the same directory,
    /// is fsync'ed, then renamed over `path`. On failure the temp file is removed and
    /// `.writeFailed(path:tempPath:operation:errno:)` is thrown.
    public func write(to url: URL) throws {
        try stage(at: url).commit()
    }

    /// Writes the file under its temporary name and fsyncs it, without renaming it over `url` yet
    /// (see `StagedFile`: several files can then be committed as one unit).
    public func stage(at url: URL) throws -> StagedFile {
        let order = sortedNames
        var chunks = [try headerBytes(order: order)]
        for name in order { chunks.append(entries[name]!.bytes) }
        return try StagedFile.stage(chunks, at: url)
    }
}
