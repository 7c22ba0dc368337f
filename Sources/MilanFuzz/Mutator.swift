// Seeded mutations of valid inputs, for the readers of outside bytes (FuzzTargets). Deterministic: input number i of
// a run is a function of (seed, reader, i) only, so any input a run reports can be made again (`milan-fuzz
// --replay`). The mutations are the classic byte-level ones plus structure-aware edits of the numbers a header
// holds (sizes, dimensions, offsets): huge, negative, zero, off by one, swapped.
import MilanTensor

public struct Mutator {
  public static let kinds = ["bit flip", "byte set", "insert", "delete", "truncate", "duplicate block",
                             "number edit", "splice"]

  /// Input number `index` of a run: 1–4 stacked mutations of one of the `seeds`.
  public static func input(seeds: [[UInt8]], seed: UInt64, stream: UInt64, index: Int) -> (bytes: [UInt8], kinds: [String]) {
    var rng = SplitMix64.forSample(key: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15), sample: index)
    var bytes = seeds[Int(rng.next() % UInt64(seeds.count))]
    var kinds: [String] = []
    let rounds = 1 + Int(rng.next() % 4)
    for _ in 0..<rounds {
      let k = Int(rng.next() % UInt64(Self.kinds.count))
      kinds.append(Self.kinds[k])
      mutate(&bytes, kind: k, seeds: seeds, rng: &rng)
    }
    return (bytes, kinds)
  }

  static func mutate(_ b: inout [UInt8], kind: Int, seeds: [[UInt8]], rng: inout SplitMix64) {
    func pos(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }
    switch kind {
    case 0 where !b.isEmpty:  // bit flip
      let i = pos(b.count)
      b[i] ^= UInt8(1) << UInt8(rng.next() % 8)
    case 1 where !b.isEmpty:  // byte set to an interesting value
      let interesting: [UInt8] = [0, 1, 0x7F, 0x80, 0xFF, 0x22, 0x2C, 0x5B, 0x7B, 0x7D, 0x30, 0x39, 0x2D]
      b[pos(b.count)] = interesting[pos(interesting.count)]
    case 2:  // insert random bytes
      let n = 1 + pos(16)
      let at = pos(b.count + 1)
      b.insert(contentsOf: (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
    case 3 where !b.isEmpty:  // delete a range
      let at = pos(b.count), n = 1 + pos(min(64, b.count - at))
      b.removeSubrange(at..<min(b.count, at + n))
    case 4:  // truncate
      b = Array(b.prefix(pos(b.count + 1)))
    case 5 where b.count > 1:  // duplicate a block somewhere else
      let at = pos(b.count), n = 1 + pos(min(256, b.count - at))
      let block = Array(b[at..<min(b.count, at + n)])
      b.insert(contentsOf: block, at: pos(b.count + 1))
    case 6:  // edit a number: an ASCII decimal run (JSON headers) or a little-endian 8-/4-byte word (binary headers)
      editNumber(&b, rng: &rng)
    case 7:  // splice with another seed
      let other = seeds[pos(seeds.count)]
      let cut = pos(b.count + 1), from = pos(other.count + 1)
      b = Array(b.prefix(cut)) + Array(other.suffix(from: from))
    default:
      break
    }
  }

  static let numbers: [String] = ["0", "-1", "1", "2147483647", "2147483648", "4294967296", "1099511627776",
                                  "9223372036854775807", "-9223372036854775808", "18446744073709551615", "1e308",
                                  "99999999999999999999999", "3", "7"]

  static func editNumber(_ b: inout [UInt8], rng: inout SplitMix64) {
    guard !b.isEmpty else { return }
    func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
    let start = Int(rng.next() % UInt64(b.count))
    if rng.next() % 2 == 0, let i = (start..<b.count).first(where: { isDigit(b[$0]) })
      ?? (0..<start).first(where: { isDigit(b[$0]) }) {
      var j = i
      while j < b.count && isDigit(b[j]) { j += 1 }
      var k = i
      if k > 0 && b[k - 1] == 0x2D { k -= 1 }  // a minus sign belongs to the number
      let n = numbers[Int(rng.next() % UInt64(numbers.count))]
      b.replaceSubrange(k..<j, with: Array(n.utf8))
    } else {
      let width = rng.next() % 2 == 0 ? 8 : 4
      guard b.count >= width else { return }
      let at = Int(rng.next() % UInt64(b.count - width + 1))
      let values: [UInt64] = [0, 1, 0xFFFF_FFFF, 0x8000_0000, 1 << 40, UInt64.max, UInt64(Int64.max), 1 << 31,
                              UInt64(b.count), UInt64(b.count) + 1]
      var v = values[Int(rng.next() % UInt64(values.count))]
      for t in 0..<width {
        b[at + t] = UInt8(truncatingIfNeeded: v)
        v >>= 8
      }
    }
  }
}
