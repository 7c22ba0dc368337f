import Foundation
import Testing
import MilanIO

@Suite("SafeTensors fuzzing")
struct SafeTensorsFuzzTests {
    /// A valid file with several dtypes, metadata and an empty tensor.
    private func baseFile() throws -> [UInt8] {
        var w = SafeTensorsWriter(metadata: ["format": "pt", "note": "fuzz \"base\""])
        for d in SafeTensorsDType.allCases {
            try w.add(name: RefValues.name(d), dtype: d, shape: RefValues.shape, bytes: RefValues.bytes(d))
        }
        try w.add(name: "empty", dtype: .F32, shape: [3, 0], bytes: [])
        return try w.serialized()
    }

    /// Parses and, if that succeeds, touches every tensor through every accessor.
    /// Returns true if the file parsed. Records an issue for any non-SafeTensorsError
    /// or for accessors disagreeing with the header.
    private func exercise(_ bytes: [UInt8]) -> Bool {
        let file: SafeTensorsFile
        do {
            file = try SafeTensorsFile(bytes: bytes)
        } catch is SafeTensorsError {
            return false
        } catch {
            Issue.record("non-SafeTensorsError thrown: \(error)")
            return false
        }
        var covered = 0
        for t in file.tensors {
            do {
                let (count, sum) = try file.withRawBytes(t.name) { raw in (raw.count, raw.reduce(0) { $0 &+ Int($1) }) }
                _ = sum
                #expect(count == t.elementCount * t.dtype.byteSize)
                covered += count
                if let f = try? file.floats(t.name) { #expect(f.count == t.elementCount) }
                if let i = try? file.int64s(t.name) { #expect(i.count == t.elementCount) }
            } catch {
                Issue.record("accessor failed on a parsed file: \(error)")
            }
        }
        let headerLength = bytes.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        #expect(covered == bytes.count - 8 - headerLength, "tensors must tile the data buffer")
        return true
    }

    @Test("Random byte flips, truncations and length edits never crash (seeded, 2000 iterations)")
    func byteMutations() throws {
        let base = try baseFile()
        #expect(exercise(base))
        let headerEnd = 8 + Int(base.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        var rng = SplitMix64(seed: 0x5AFE_7E45)
        var parsed = 0, rejected = 0
        for _ in 0..<2000 {
            var m = base
            let kind = Int.random(in: 0..<10, using: &rng)
            switch kind {
            case 0...4: // flip a few bytes, mostly in the header
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let inHeader = Int.random(in: 0..<10, using: &rng) < 8
                    let i = inHeader ? Int.random(in: 0..<headerEnd, using: &rng) : Int.random(in: 0..<m.count, using: &rng)
                    if Bool.random(using: &rng) {
                        m[i] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &rng)
                    } else {
                        m[i] = UInt8.random(in: 0...255, using: &rng)
                    }
                }
            case 5, 6: // truncate
                m = Array(m.prefix(Int.random(in: 0..<m.count, using: &rng)))
            case 7: // rewrite the length prefix
                let n: UInt64 = Bool.random(using: &rng) ? UInt64.random(in: 0...UInt64(m.count), using: &rng) : rng.next()
                withUnsafeBytes(of: n.littleEndian) { for j in 0..<8 { m[j] = $0[j] } }
            case 8: // delete a header byte (length prefix now lies)
                m.remove(at: Int.random(in: 8..<headerEnd, using: &rng))
            default: // append or insert garbage
                let extra = (0..<Int.random(in: 1...16, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                m.insert(contentsOf: extra, at: Int.random(in: 0...m.count, using: &rng))
            }
            if exercise(m) { parsed += 1 } else { rejected += 1 }
        }
        #expect(parsed + rejected == 2000)
        #expect(rejected > 1000, "most mutations must be rejected (parsed \(parsed), rejected \(rejected))")
    }

    @Test("Random JSON token substitutions in the header never crash (seeded, 1000 iterations)")
    func tokenMutations() throws {
        let base = try baseFile()
        let headerLength = Int(base.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
        let header = Array(base[8..<(8 + headerLength)])
        let data = Array(base[(8 + headerLength)...])
        let tokens = ["-1", "0", "1.5", "1e3", "true", "null", "\"x\"", "99999999999999999999", "-99999999999999999999",
                      "[]", "{}", "[0]", "\"F32\"", "\"BF16\"", "\"F8_E5M2\"", "9223372036854775807", "4", "\"__metadata__\"", ""]
        var rng = SplitMix64(seed: 1234)
        var rejected = 0
        for _ in 0..<1000 {
            var h = header
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                // Replace a random run of digits / a quoted string / a bracket with a random token.
                let start = Int.random(in: 0..<h.count, using: &rng)
                var end = start
                let isDigit: (UInt8) -> Bool = { $0 >= 0x30 && $0 <= 0x39 }
                if isDigit(h[start]) {
                    while end < h.count, isDigit(h[end]) { end += 1 }
                } else {
                    end = min(h.count, start + Int.random(in: 0...3, using: &rng))
                }
                h.replaceSubrange(start..<end, with: Array(tokens.randomElement(using: &rng)!.utf8))
            }
            let m = stFile(header: String(decoding: h, as: UTF8.self), data: data)
            if !exercise(m) { rejected += 1 }
        }
        #expect(rejected > 500)
    }
}
