/// Element types supported by this library (names as written in safetensors headers).
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .BOOL, .U8, .I8: return 1
        case .I16, .U16, .F16, .BF16: return 2
        case .I32, .U32, .F32: return 4
        case .F64, .I64, .U64: return 8
        }
    }

    /// Other dtype names defined by the safetensors format that this library
    /// recognises but refuses (they produce `.unsupportedDType`, not `.unknownDType`).
    /// Values are sizes in bits.
    static let recognisedUnsupported: [String: Int] = [
        "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
        "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "C64": 64,
    ]
}

/// Element conversions. All loads are unaligned and little-endian, so they are
/// correct for any data offset and on any host.
enum DTypeConversion {
    /// Exact IEEE binary16 -> binary32 conversion (NaN payloads preserved).
    @inline(__always)
    static func halfToFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32(h >> 10) & 0x1F
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            if mantissa == 0 { return Float(bitPattern: sign) }
            // Subnormal: mantissa * 2^-24, exact in Float.
            let magnitude = Float(mantissa) * 0x1p-24
            return sign != 0 ? -magnitude : magnitude
        }
        if exponent == 0x1F {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    /// Exact bfloat16 -> binary32 conversion.
    @inline(__always)
    static func bfloat16ToFloat(_ b: UInt16) -> Float {
        Float(bitPattern: UInt32(b) << 16)
    }

    @inline(__always)
    private static func u16(_ src: UnsafeRawBufferPointer, _ i: Int) -> UInt16 {
        UInt16(littleEndian: src.loadUnaligned(fromByteOffset: i &* 2, as: UInt16.self))
    }
    @inline(__always)
    private static func u32(_ src: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(littleEndian: src.loadUnaligned(fromByteOffset: i &* 4, as: UInt32.self))
    }
    @inline(__always)
    private static func u64(_ src: UnsafeRawBufferPointer, _ i: Int) -> UInt64 {
        UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i &* 8, as: UInt64.self))
    }

    static func canConvertToFloat(_ dtype: SafeTensorsDType) -> Bool {
        switch dtype {
        case .F32, .F16, .BF16, .F64: return true
        default: return false
        }
    }

    /// Converts `dst.count` elements of `dtype` from `src` (which must hold exactly that many).
    static func convertToFloat(_ dtype: SafeTensorsDType, _ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableBufferPointer<Float>) {
        let n = dst.count
        precondition(src.count == n * dtype.byteSize, "internal: source size mismatch")
        guard n > 0, let out = dst.baseAddress else { return }
        switch dtype {
        case .F32:
            #if _endian(little)
            UnsafeMutableRawPointer(out).copyMemory(from: src.baseAddress!, byteCount: n * 4)
            #else
            for i in 0..<n { out[i] = Float(bitPattern: u32(src, i)) }
            #endif
        case .F16:
            for i in 0..<n { out[i] = halfToFloat(u16(src, i)) }
        case .BF16:
            for i in 0..<n { out[i] = bfloat16ToFloat(u16(src, i)) }
        case .F64:
            for i in 0..<n { out[i] = Float(Double(bitPattern: u64(src, i))) }
        default:
            preconditionFailure("internal: convertToFloat called for \(dtype)")
        }
    }

    static func canConvertToInt64(_ dtype: SafeTensorsDType) -> Bool {
        switch dtype {
        case .I64, .I32, .I16, .I8, .U8, .U16, .U32, .U64, .BOOL: return true
        default: return false
        }
    }

    /// Converts to Int64. Returns the index of the first element that does not fit (U64 only), or nil on success.
    static func convertToInt64(_ dtype: SafeTensorsDType, _ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableBufferPointer<Int64>) -> Int? {
        let n = dst.count
        precondition(src.count == n * dtype.byteSize, "internal: source size mismatch")
        guard n > 0, let out = dst.baseAddress else { return nil }
        switch dtype {
        case .I64:
            for i in 0..<n { out[i] = Int64(bitPattern: u64(src, i)) }
        case .U64:
            for i in 0..<n {
                let v = u64(src, i)
                guard v <= UInt64(Int64.max) else { return i }
                out[i] = Int64(v)
            }
        case .I32:
            for i in 0..<n { out[i] = Int64(Int32(bitPattern: u32(src, i))) }
        case .U32:
            for i in 0..<n { out[i] = Int64(u32(src, i)) }
        case .I16:
            for i in 0..<n { out[i] = Int64(Int16(bitPattern: u16(src, i))) }
        case .U16:
            for i in 0..<n { out[i] = Int64(u16(src, i)) }
        case .I8:
            for i in 0..<n { out[i] = Int64(Int8(bitPattern: src[i])) }
        case .U8:
            for i in 0..<n { out[i] = Int64(src[i]) }
        case .BOOL:
            for i in 0..<n { out[i] = src[i] != 0 ? 1 : 0 }
        default:
            preconditionFailure("internal: convertToInt64 called for \(dtype)")
        }
        return nil
    }
}
