#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Every failure of the safetensors reader and writer.
///
/// Format errors name the offending tensor (or metadata key) and the problem.
/// Errors raised while loading a file through `SafeTensorsFile(contentsOf:)`
/// are wrapped in `.inFile(path:underlying:)` so the message also names the
/// file; use `reason` to get at the underlying format error.
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable, Sendable {
    // MARK: File / OS level
    /// The file does not exist.
    case fileNotFound(path: String)
    /// The file (or a directory on its path) is not accessible.
    case permissionDenied(path: String)
    /// Another OS-level failure while reading (`operation` is e.g. "open", "fstat", "mmap").
    case readFailed(path: String, operation: String, errno: Int32)
    /// An OS-level failure while writing (`operation` is e.g. "open", "write", "fsync", "rename").
    /// `path` is the destination path; `tempPath` the temporary file that was used (and removed).
    case writeFailed(path: String, tempPath: String, operation: String, errno: Int32)
    /// A format error found while loading `path`.
    indirect case inFile(path: String, underlying: SafeTensorsError)

    // MARK: Header framing
    /// Fewer than 8 bytes: not even the header-length prefix is present.
    case fileTooSmall(size: Int)
    /// The header length prefix exceeds the 100 MB safety limit.
    case headerTooLarge(headerSize: UInt64, limit: Int)
    /// The header length prefix is larger than what follows it in the file.
    case headerSizeExceedsFile(headerSize: UInt64, available: Int)
    /// The header bytes are not valid UTF-8.
    case headerNotUTF8
    /// The header is not valid JSON (`detail` says where / why).
    case headerNotJSON(detail: String)
    /// The header is valid JSON but not an object (e.g. an array).
    case headerNotObject
    /// The header is a JSON object but its first byte is not `{` (e.g. leading whitespace).
    case invalidHeaderStart(firstByte: UInt8)

    // MARK: Metadata
    /// `__metadata__` is present but not a JSON object.
    case metadataNotObject
    /// A `__metadata__` value is not a string.
    case metadataValueNotString(key: String)
    /// A `__metadata__` key (or `__metadata__` itself) appears twice.
    case duplicateMetadataKey(key: String)

    // MARK: Tensor entries
    /// A header entry is not a JSON object.
    case entryNotObject(tensor: String)
    /// A required field ("dtype", "shape", "data_offsets") is missing.
    case missingField(tensor: String, field: String)
    /// A field has the wrong JSON type / arity / range.
    case invalidField(tensor: String, field: String, reason: String)
    /// The dtype string is not a known safetensors dtype.
    case unknownDType(tensor: String, dtype: String)
    /// The dtype is a known safetensors dtype (e.g. F8_E4M3) this library does not support.
    case unsupportedDType(tensor: String, dtype: String)
    /// A shape dimension is negative.
    case negativeDimension(tensor: String, index: Int, value: Int)
    /// A shape dimension is not a JSON integer (e.g. 1.5, 1e3, true, "2", null).
    case nonIntegerDimension(tensor: String, index: Int, value: String)
    /// Shape product (or byte size) does not fit in `Int`.
    case shapeOverflow(tensor: String)
    /// data_offsets has end < begin (or a negative value).
    case invalidOffsets(tensor: String, begin: Int, end: Int)
    /// `end - begin` differs from product(shape) * dtype size.
    case sizeMismatch(tensor: String, expectedBytes: Int, actualBytes: Int)
    /// data_offsets end lies beyond the data buffer.
    case offsetsOutOfBounds(tensor: String, end: Int, bufferSize: Int)
    /// Two tensors share bytes.
    case overlappingTensors(first: String, second: String)
    /// Unused bytes between two tensors (`before` is nil for a hole at the buffer start).
    case holeInData(before: String?, after: String, offset: Int, length: Int)
    /// Unused bytes after the last tensor (`after` is nil when there are no non-empty tensors before them).
    case trailingBytes(after: String?, count: Int)
    /// The same tensor name occurs twice (in a header or in a writer).
    case duplicateTensorName(name: String)
    /// The tensor name cannot be used (e.g. the reserved "__metadata__").
    case invalidTensorName(name: String, reason: String)

    // MARK: Access / conversion
    /// No tensor with that name.
    case missingTensor(name: String)
    /// The tensor's dtype cannot be converted to the requested element type.
    case unsupportedConversion(tensor: String, dtype: String, target: String)
    /// Destination buffer or value count does not match the tensor's element count.
    case countMismatch(tensor: String, expected: Int, actual: Int)
    /// An element does not fit the requested type (e.g. U64 > Int64.max).
    case valueOutOfRange(tensor: String, index: Int)

    /// The innermost error (strips `.inFile` wrappers).
    public var reason: SafeTensorsError {
        if case .inFile(_, let underlying) = self { return underlying.reason }
        return self
    }

    public var description: String {
        switch self {
        case .fileNotFound(let path):
            return "safetensors: file not found: '\(path)'"
        case .permissionDenied(let path):
            return "safetensors: permission denied: '\(path)'"
        case .readFailed(let path, let op, let err):
            return "safetensors: cannot read '\(path)': \(op) failed: \(errnoString(err)) (errno \(err))"
        case .writeFailed(let path, let temp, let op, let err):
            return "safetensors: cannot write '\(path)' (via temp file '\(temp)'): \(op) failed: \(errnoString(err)) (errno \(err))"
        case .inFile(let path, let underlying):
            var inner = underlying.description
            if inner.hasPrefix("safetensors: ") { inner.removeFirst("safetensors: ".count) }
            return "safetensors: invalid file '\(path)': \(inner)"
        case .fileTooSmall(let size):
            return "safetensors: file is \(size) bytes, too small to hold the 8-byte header length"
        case .headerTooLarge(let n, let limit):
            return "safetensors: header length \(n) exceeds the limit of \(limit) bytes"
        case .headerSizeExceedsFile(let n, let available):
            return "safetensors: header length \(n) is larger than the \(available) bytes following it"
        case .headerNotUTF8:
            return "safetensors: header is not valid UTF-8"
        case .headerNotJSON(let detail):
            return "safetensors: header is not valid JSON: \(detail)"
        case .headerNotObject:
            return "safetensors: header JSON is not an object"
        case .invalidHeaderStart(let b):
            return "safetensors: header must start with '{' but starts with byte 0x\(String(b, radix: 16))"
        case .metadataNotObject:
            return "safetensors: __metadata__ is not a JSON object"
        case .metadataValueNotString(let key):
            return "safetensors: __metadata__ value for key '\(key)' is not a string"
        case .duplicateMetadataKey(let key):
            return "safetensors: duplicate __metadata__ key '\(key)'"
        case .entryNotObject(let t):
            return "safetensors: tensor '\(t)': header entry is not a JSON object"
        case .missingField(let t, let f):
            return "safetensors: tensor '\(t)': missing field '\(f)'"
        case .invalidField(let t, let f, let r):
            return "safetensors: tensor '\(t)': invalid field '\(f)': \(r)"
        case .unknownDType(let t, let d):
            return "safetensors: tensor '\(t)': unknown dtype '\(d)'"
        case .unsupportedDType(let t, let d):
            return "safetensors: tensor '\(t)': dtype '\(d)' is recognised but not supported"
        case .negativeDimension(let t, let i, let v):
            return "safetensors: tensor '\(t)': shape dimension \(i) is negative (\(v))"
        case .nonIntegerDimension(let t, let i, let v):
            return "safetensors: tensor '\(t)': shape dimension \(i) is not an integer (\(v))"
        case .shapeOverflow(let t):
            return "safetensors: tensor '\(t)': shape size overflows"
        case .invalidOffsets(let t, let b, let e):
            return "safetensors: tensor '\(t)': invalid data_offsets [\(b), \(e)]"
        case .sizeMismatch(let t, let expected, let actual):
            return "safetensors: tensor '\(t)': shape and dtype require \(expected) bytes but data has \(actual)"
        case .offsetsOutOfBounds(let t, let end, let size):
            return "safetensors: tensor '\(t)': data end \(end) is beyond the \(size)-byte data buffer"
        case .overlappingTensors(let a, let b):
            return "safetensors: tensors '\(a)' and '\(b)' overlap"
        case .holeInData(let before, let after, let off, let len):
            let where_ = before.map { "between '\($0)' and '\(after)'" } ?? "before '\(after)'"
            return "safetensors: \(len) unused bytes at data offset \(off) \(where_)"
        case .trailingBytes(let after, let count):
            let where_ = after.map { " after tensor '\($0)'" } ?? ""
            return "safetensors: \(count) trailing unused bytes at the end of the data buffer\(where_)"
        case .duplicateTensorName(let n):
            return "safetensors: duplicate tensor name '\(n)'"
        case .invalidTensorName(let n, let r):
            return "safetensors: invalid tensor name '\(n)': \(r)"
        case .missingTensor(let n):
            return "safetensors: no tensor named '\(n)'"
        case .unsupportedConversion(let t, let d, let target):
            return "safetensors: tensor '\(t)': cannot convert dtype \(d) to \(target)"
        case .countMismatch(let t, let expected, let actual):
            return "safetensors: tensor '\(t)': expected \(expected) elements, got \(actual)"
        case .valueOutOfRange(let t, let i):
            return "safetensors: tensor '\(t)': element \(i) is out of range for the target type"
        }
    }
}

/// `strerror` text for an errno value.
func errnoString(_ err: Int32) -> String {
    guard let cString = strerror(err) else { return "error \(err)" }
    return String(cString: cString)
}
