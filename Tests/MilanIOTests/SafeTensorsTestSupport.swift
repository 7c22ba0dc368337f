import Foundation
import MilanIO

/// Assembles a file image from a header string and a data buffer.
func stFile(header: String, data: [UInt8] = []) -> [UInt8] {
    let h = Array(header.utf8)
    return stFile(headerLength: UInt64(h.count), rest: h + data)
}

/// Assembles a file image with an arbitrary (possibly lying) length prefix.
func stFile(headerLength: UInt64, rest: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    withUnsafeBytes(of: headerLength.littleEndian) { out.append(contentsOf: $0) }
    return out + rest
}

/// Parses `bytes`, returning the SafeTensorsError thrown (nil if it parsed).
func stParseError(_ bytes: [UInt8]) -> SafeTensorsError? {
    do {
        _ = try SafeTensorsFile(bytes: bytes)
        return nil
    } catch let e as SafeTensorsError {
        return e
    } catch {
        return .headerNotJSON(detail: "UNEXPECTED NON-SafeTensorsError: \(error)")
    }
}

/// Little-endian bytes of a sequence of fixed-width values.
func leBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    var out: [UInt8] = []
    for v in values { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    return out
}

func leBytes(_ values: [Float]) -> [UInt8] { leBytes(values.map(\.bitPattern)) }
func leBytes(_ values: [Double]) -> [UInt8] { leBytes(values.map(\.bitPattern)) }

/// Deterministic PRNG (SplitMix64) so fuzz runs are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A fresh, empty temporary directory (removed by the caller via `removeTempDir`).
func makeTempDir() throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("milanio-st-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func removeTempDir(_ url: URL) {
    try? FileManager.default.removeItem(at: url)
}

/// Deterministic test values shared with the Python reference check.
enum RefValues {
    static let shape = [2, 3]
    static let count = 6
    static var floats: [Double] { (0..<count).map { (Double($0) - 2.5) * 0.75 } }
    static var signed: [Int64] { (0..<count).map { Int64($0) * 7 - 20 } }
    static var unsigned: [Int64] { (0..<count).map { Int64($0) * 7 + 3 } }
    static var bools: [Int64] { (0..<count).map { $0 % 3 == 0 ? 1 : 0 } }

    /// Tensor name used for a dtype in the reference files.
    static func name(_ d: SafeTensorsDType) -> String { "t_" + d.rawValue.lowercased() }

    /// Expected element values as Int64 (integer dtypes) or Double (float dtypes).
    static func isFloat(_ d: SafeTensorsDType) -> Bool { [.F16, .BF16, .F32, .F64].contains(d) }
    static func ints(_ d: SafeTensorsDType) -> [Int64] {
        switch d {
        case .BOOL: return bools
        case .U8, .U16, .U32, .U64: return unsigned
        default: return signed
        }
    }

    /// Raw bytes for a dtype (all values are exactly representable in every dtype).
    static func bytes(_ d: SafeTensorsDType) -> [UInt8] {
        switch d {
        case .F32: return leBytes(floats.map { Float($0) })
        case .F64: return leBytes(floats)
        case .BF16: return leBytes(floats.map { UInt16(Float($0).bitPattern >> 16) })
        case .F16: return leBytes(floats.map { halfBits(Float($0)) })
        case .BOOL, .U8: return ints(d).map { UInt8($0) }
        case .I8: return ints(d).map { UInt8(bitPattern: Int8($0)) }
        case .I16: return leBytes(ints(d).map { Int16($0) })
        case .U16: return leBytes(ints(d).map { UInt16($0) })
        case .I32: return leBytes(ints(d).map { Int32($0) })
        case .U32: return leBytes(ints(d).map { UInt32($0) })
        case .I64: return leBytes(ints(d))
        case .U64: return leBytes(ints(d).map { UInt64($0) })
        }
    }

    /// Half-precision bits for a normal Float that is exactly representable as binary16.
    static func halfBits(_ f: Float) -> UInt16 {
        if f == 0 { return f.sign == .minus ? 0x8000 : 0 }
        let b = f.bitPattern
        let sign = UInt16((b >> 16) & 0x8000)
        let exp = Int((b >> 23) & 0xFF) - 127 + 15
        precondition(exp > 0 && exp < 31 && (b & 0x1FFF) == 0, "not exactly representable as a normal half")
        return sign | UInt16(exp) << 10 | UInt16((b >> 13) & 0x3FF)
    }
}
