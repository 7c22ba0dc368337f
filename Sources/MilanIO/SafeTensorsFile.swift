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

/// Description of one tensor in a safetensors file.
public struct SafeTensorsInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data buffer (end exclusive), as in the header.
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: SafeTensorsDType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    /// Product of the shape (1 for a scalar, 0 if any dimension is 0).
    public var elementCount: Int { shape.reduce(1, &*) }
}

/// A validated, read-only safetensors file.
///
/// The URL initialiser memory-maps the file (`PROT_READ`, `MAP_PRIVATE`); the
/// mapping lives as long as the object. Every header rule of the format is
/// checked up front, so accessors never read out of bounds. Instances are
/// immutable and safe to share between threads.
///
/// Caveat: like any mmap-based reader, if another process truncates the file
/// while it is mapped, touching the lost pages raises SIGBUS. Write files
/// atomically (see `SafeTensorsWriter.write(to:)`) to avoid this.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Maximum header size accepted (same limit as the reference implementation).
    public static let maxHeaderSize = 100_000_000

    public let metadata: [String: String]
    /// All tensors, sorted by data offset.
    public let tensors: [SafeTensorsInfo]

    private let index: [String: Int]
    /// Start of the data buffer (after length prefix and header).
    private let data: UnsafeRawPointer
    private let dataSize: Int
    private let storage: Storage

    private enum Storage {
        case mapped(UnsafeMutableRawPointer, Int)
        case heap(UnsafeMutableRawPointer)
    }

    /// Memory-maps and validates the file at `url`.
    ///
    /// OS errors: `.fileNotFound`, `.permissionDenied`, `.readFailed` (all with the path).
    /// Format errors are wrapped as `.inFile(path:underlying:)`.
    public init(contentsOf url: URL) throws {
        let path = url.path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let err = errno
            switch err {
            case ENOENT, ENOTDIR: throw SafeTensorsError.fileNotFound(path: path)
            case EACCES, EPERM: throw SafeTensorsError.permissionDenied(path: path)
            default: throw SafeTensorsError.readFailed(path: path, operation: "open", errno: err)
            }
        }
        defer { close(fd) }

        var st = stat()
        if fstat(fd, &st) != 0 {
            throw SafeTensorsError.readFailed(path: path, operation: "fstat", errno: errno)
        }
        let fileType = st.st_mode & S_IFMT
        if fileType == S_IFDIR {
            throw SafeTensorsError.readFailed(path: path, operation: "open", errno: EISDIR)
        }
        if fileType != S_IFREG {
            throw SafeTensorsError.readFailed(path: path, operation: "open (not a regular file)", errno: EINVAL)
        }
        guard st.st_size >= 0, st.st_size <= Int64(Int.max) else {
            throw SafeTensorsError.readFailed(path: path, operation: "fstat", errno: EOVERFLOW)
        }
        let size = Int(st.st_size)
        guard size >= 8 else {
            // Also covers 0-byte files, which cannot be mapped.
            throw SafeTensorsError.inFile(path: path, underlying: .fileTooSmall(size: size))
        }

        guard let mapping = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              mapping != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SafeTensorsError.readFailed(path: path, operation: "mmap", errno: errno)
        }

        let parsed: ParsedHeader
        do {
            parsed = try Self.parse(UnsafeRawBufferPointer(start: mapping, count: size))
        } catch let error as SafeTensorsError {
            munmap(mapping, size)
            throw SafeTensorsError.inFile(path: path, underlying: error)
        } catch {
            munmap(mapping, size)
            throw error
        }
        self.storage = .mapped(mapping, size)
        self.data = UnsafeRawPointer(mapping) + parsed.dataStart
        self.dataSize = size - parsed.dataStart
        self.metadata = parsed.metadata
        self.tensors = parsed.tensors
        self.index = parsed.index
    }

    /// Validates an in-memory file image (the bytes are copied).
    public init(bytes: [UInt8]) throws {
        let parsed = try bytes.withUnsafeBytes { try Self.parse($0) }
        // parse() guarantees bytes.count >= 8.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 16)
        bytes.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        self.storage = .heap(buffer)
        self.data = UnsafeRawPointer(buffer) + parsed.dataStart
        self.dataSize = bytes.count - parsed.dataStart
        self.metadata = parsed.metadata
        self.tensors = parsed.tensors
        self.index = parsed.index
    }

    deinit {
        switch storage {
        case .mapped(let p, let size): munmap(p, size)
        case .heap(let p): p.deallocate()
        }
    }

    // MARK: Access

    /// Header entry for `name`; throws `.missingTensor`.
    public func info(_ name: String) throws -> SafeTensorsInfo {
        guard let i = index[name] else { throw SafeTensorsError.missingTensor(name: name) }
        return tensors[i]
    }

    /// Calls `body` with the tensor's raw little-endian bytes. The pointer is valid only
    /// inside `body` and may be unaligned for the element type (use `loadUnaligned`).
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let t = try info(name)
        return try body(rawBytes(t))
    }

    private func rawBytes(_ t: SafeTensorsInfo) -> UnsafeRawBufferPointer {
        // Offsets were validated against dataSize in parse().
        UnsafeRawBufferPointer(start: data + t.dataOffsets.lowerBound, count: t.dataOffsets.count)
    }

    /// Elements converted to Float. Supports F32, F16, BF16 (exact) and F64 (rounded).
    public func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        guard DTypeConversion.canConvertToFloat(t.dtype) else {
            throw SafeTensorsError.unsupportedConversion(tensor: name, dtype: t.dtype.rawValue, target: "Float")
        }
        let n = t.elementCount
        return [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            DTypeConversion.convertToFloat(t.dtype, rawBytes(t), UnsafeMutableBufferPointer(rebasing: buffer[0..<n]))
            initialized = n
        }
    }

    /// Converts into a caller-provided buffer whose count must equal the element count.
    public func readFloats(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let t = try info(name)
        guard DTypeConversion.canConvertToFloat(t.dtype) else {
            throw SafeTensorsError.unsupportedConversion(tensor: name, dtype: t.dtype.rawValue, target: "Float")
        }
        guard destination.count == t.elementCount else {
            throw SafeTensorsError.countMismatch(tensor: name, expected: t.elementCount, actual: destination.count)
        }
        DTypeConversion.convertToFloat(t.dtype, rawBytes(t), destination)
    }

    /// Elements converted to Int64. Supports I64, I32, I16, I8, U8, U16, U32, BOOL (0/1),
    /// and U64 (throws `.valueOutOfRange` for values above Int64.max).
    public func int64s(_ name: String) throws -> [Int64] {
        let t = try info(name)
        guard DTypeConversion.canConvertToInt64(t.dtype) else {
            throw SafeTensorsError.unsupportedConversion(tensor: name, dtype: t.dtype.rawValue, target: "Int64")
        }
        let n = t.elementCount
        var badIndex: Int?
        let result = [Int64](unsafeUninitializedCapacity: n) { buffer, initialized in
            badIndex = DTypeConversion.convertToInt64(t.dtype, rawBytes(t), UnsafeMutableBufferPointer(rebasing: buffer[0..<n]))
            initialized = badIndex == nil ? n : 0
        }
        if let badIndex { throw SafeTensorsError.valueOutOfRange(tensor: name, index: badIndex) }
        return result
    }

    // MARK: Validation

    struct ParsedHeader {
        var metadata: [String: String]
        var tensors: [SafeTensorsInfo]
        var index: [String: Int]
        var dataStart: Int
    }

    /// Validates a complete file image. Never reads outside `file`.
    static func parse(_ file: UnsafeRawBufferPointer) throws -> ParsedHeader {
        guard file.count >= 8 else { throw SafeTensorsError.fileTooSmall(size: file.count) }
        let n = UInt64(littleEndian: file.loadUnaligned(as: UInt64.self))
        if n > UInt64(maxHeaderSize) {
            throw SafeTensorsError.headerTooLarge(headerSize: n, limit: maxHeaderSize)
        }
        let available = file.count - 8
        if n > UInt64(available) {
            throw SafeTensorsError.headerSizeExceedsFile(headerSize: n, available: available)
        }
        let headerSize = Int(n)
        let header = UnsafeBufferPointer(rebasing: file.bindMemory(to: UInt8.self)[8..<(8 + headerSize)])
        guard UTF8Validation.isValid(header) else {
            throw SafeTensorsError.headerNotUTF8
        }
        let root = try JSONParser.parse(header)
        guard case .object(let members) = root else { throw SafeTensorsError.headerNotObject }
        guard header.first == UInt8(ascii: "{") else {
            throw SafeTensorsError.invalidHeaderStart(firstByte: header.first ?? 0)
        }

        let dataStart = 8 + headerSize
        let bufferSize = file.count - dataStart
        var metadata: [String: String] = [:]
        var sawMetadata = false
        var seen = Set<String>()
        var tensors: [SafeTensorsInfo] = []
        tensors.reserveCapacity(members.count)

        for member in members {
            if member.key == "__metadata__" {
                if sawMetadata { throw SafeTensorsError.duplicateMetadataKey(key: "__metadata__") }
                sawMetadata = true
                metadata = try parseMetadata(member.value)
                continue
            }
            guard seen.insert(member.key).inserted else {
                throw SafeTensorsError.duplicateTensorName(name: member.key)
            }
            tensors.append(try parseEntry(name: member.key, member.value, bufferSize: bufferSize))
        }

        // Tensors must tile the data buffer exactly: no overlaps, no holes, no trailing bytes.
        tensors.sort {
            if $0.dataOffsets.lowerBound != $1.dataOffsets.lowerBound {
                return $0.dataOffsets.lowerBound < $1.dataOffsets.lowerBound
            }
            if $0.dataOffsets.upperBound != $1.dataOffsets.upperBound {
                return $0.dataOffsets.upperBound < $1.dataOffsets.upperBound
            }
            return $0.name.utf8.lexicographicallyPrecedes($1.name.utf8)
        }
        var cursor = 0
        var previous: String?
        for t in tensors {
            let begin = t.dataOffsets.lowerBound
            if begin < cursor {
                throw SafeTensorsError.overlappingTensors(first: previous ?? t.name, second: t.name)
            }
            if begin > cursor {
                throw SafeTensorsError.holeInData(before: previous, after: t.name, offset: cursor, length: begin - cursor)
            }
            cursor = t.dataOffsets.upperBound
            if !t.dataOffsets.isEmpty { previous = t.name }
        }
        if cursor != bufferSize {
            throw SafeTensorsError.trailingBytes(after: previous, count: bufferSize - cursor)
        }

        var index: [String: Int] = [:]
        index.reserveCapacity(tensors.count)
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        return ParsedHeader(metadata: metadata, tensors: tensors, index: index, dataStart: dataStart)
    }

    private static func parseMetadata(_ value: JSONValue) throws -> [String: String] {
        guard case .object(let members) = value else { throw SafeTensorsError.metadataNotObject }
        var result: [String: String] = [:]
        for m in members {
            guard case .string(let s) = m.value else {
                throw SafeTensorsError.metadataValueNotString(key: m.key)
            }
            guard result.updateValue(s, forKey: m.key) == nil else {
                throw SafeTensorsError.duplicateMetadataKey(key: m.key)
            }
        }
        return result
    }

    private static func parseEntry(name: String, _ value: JSONValue, bufferSize: Int) throws -> SafeTensorsInfo {
        guard case .object(let fields) = value else { throw SafeTensorsError.entryNotObject(tensor: name) }
        var dtypeValue: JSONValue?, shapeValue: JSONValue?, offsetsValue: JSONValue?
        for f in fields {
            switch f.key {
            case "dtype":
                if dtypeValue != nil { throw SafeTensorsError.invalidField(tensor: name, field: f.key, reason: "duplicate key") }
                dtypeValue = f.value
            case "shape":
                if shapeValue != nil { throw SafeTensorsError.invalidField(tensor: name, field: f.key, reason: "duplicate key") }
                shapeValue = f.value
            case "data_offsets":
                if offsetsValue != nil { throw SafeTensorsError.invalidField(tensor: name, field: f.key, reason: "duplicate key") }
                offsetsValue = f.value
            default:
                continue // unknown fields are ignored, as in the reference implementation
            }
        }

        // dtype
        guard let dtypeValue else { throw SafeTensorsError.missingField(tensor: name, field: "dtype") }
        guard case .string(let dtypeName) = dtypeValue else {
            throw SafeTensorsError.invalidField(tensor: name, field: "dtype", reason: "expected a string, got \(dtypeValue.summary)")
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            if SafeTensorsDType.recognisedUnsupported[dtypeName] != nil {
                throw SafeTensorsError.unsupportedDType(tensor: name, dtype: dtypeName)
            }
            throw SafeTensorsError.unknownDType(tensor: name, dtype: dtypeName)
        }

        // shape
        guard let shapeValue else { throw SafeTensorsError.missingField(tensor: name, field: "shape") }
        guard case .array(let dimValues) = shapeValue else {
            throw SafeTensorsError.invalidField(tensor: name, field: "shape", reason: "expected an array, got \(shapeValue.summary)")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dimValues.count)
        var elementCount = 1
        var overflow = false
        for (i, dimValue) in dimValues.enumerated() {
            switch dimValue.integer {
            case nil:
                throw SafeTensorsError.nonIntegerDimension(tensor: name, index: i, value: dimValue.summary)
            case .overflow(negative: true):
                throw SafeTensorsError.negativeDimension(tensor: name, index: i, value: Int.min)
            case .overflow(negative: false):
                throw SafeTensorsError.shapeOverflow(tensor: name)
            case .value(let d):
                if d < 0 { throw SafeTensorsError.negativeDimension(tensor: name, index: i, value: d) }
                shape.append(d)
                let (p, o) = elementCount.multipliedReportingOverflow(by: d)
                elementCount = p
                overflow = overflow || o
            }
        }
        // Overflow is judged after all dims: a later 0 does not excuse it (the reference
        // implementation uses checked multiplication in order as well).
        if overflow { throw SafeTensorsError.shapeOverflow(tensor: name) }
        let (expectedBytes, byteOverflow) = elementCount.multipliedReportingOverflow(by: dtype.byteSize)
        if byteOverflow { throw SafeTensorsError.shapeOverflow(tensor: name) }

        // data_offsets
        guard let offsetsValue else { throw SafeTensorsError.missingField(tensor: name, field: "data_offsets") }
        guard case .array(let offsetValues) = offsetsValue, offsetValues.count == 2 else {
            throw SafeTensorsError.invalidField(tensor: name, field: "data_offsets",
                                                reason: "expected an array of 2 integers, got \(offsetsValue.summary)")
        }
        var offsets: [Int] = []
        for v in offsetValues {
            switch v.integer {
            case .value(let x) where x >= 0:
                offsets.append(x)
            case .value, .overflow(negative: true):
                throw SafeTensorsError.invalidField(tensor: name, field: "data_offsets", reason: "negative offset \(v.summary)")
            case .overflow(negative: false):
                throw SafeTensorsError.invalidField(tensor: name, field: "data_offsets", reason: "offset \(v.summary) is too large")
            case nil:
                throw SafeTensorsError.invalidField(tensor: name, field: "data_offsets", reason: "expected integers, got \(v.summary)")
            }
        }
        let begin = offsets[0], end = offsets[1]
        if end < begin { throw SafeTensorsError.invalidOffsets(tensor: name, begin: begin, end: end) }
        if end - begin != expectedBytes {
            throw SafeTensorsError.sizeMismatch(tensor: name, expectedBytes: expectedBytes, actualBytes: end - begin)
        }
        if end > bufferSize {
            throw SafeTensorsError.offsetsOutOfBounds(tensor: name, end: end, bufferSize: bufferSize)
        }
        return SafeTensorsInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }
}
