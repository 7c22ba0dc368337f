// RandAugment rand-m9-mstd0.5-inc1 against timm 1.0.31 + Pillow 13 (tools/make_image_fixtures.py): each of the 15
// ops at several magnitudes and both signs, bit for bit, and whole RandAugment calls replaying Python's draws.
import Foundation
import MilanData
import MilanIO
import MilanTestSupport
import Testing

@Suite struct RandAugmentTests {
  func load() throws -> (SafeTensorsFile, DecodedImage, [String: Any]) {
    let f = try SafeTensorsFile(contentsOf: Fixtures.url("images/randaugment.safetensors"))
    let s = try u8(f, "img")
    let img = DecodedImage(width: s.shape[1], height: s.shape[0], channels: 3, pixels: s.bytes)
    let ops = try JSONSerialization.jsonObject(with: Data(f.metadata["ops"]!.utf8)) as! [String: Any]
    return (f, img, ops)
  }

  @Test func everyOpMatchesPillow() throws {
    let (f, img, ops) = try load()
    var checked = 0, exact = 0
    for (key, value) in ops.sorted(by: { $0.key < $1.key }) {
      let o = value as! [String: Any]
      let op = RandAugmentOp(name: o["name"] as! String)!
      let m = o["magnitude"] as? Double ?? 0
      let negate = (o["sign"] as? String) == "-"
      let ref = try u8(f, key).bytes
      if let args = o["args"] as? [Double], let a = args.first {
        #expect(abs(RandAugment.argument(op, magnitude: m, negate: negate) - a) < 1e-12, "\(key): argument")
      }
      let out = RandAugment().apply(op, magnitude: m, negate: negate, to: img)
      let d = diff(out.pixels, ref)
      #expect(d.count == 0, "\(key): \(d.count) of \(ref.count) values differ (max \(d.max))")
      checked += 1
      if d.count == 0 { exact += 1 }
    }
    #expect(checked == 69)
    print("ok  RandAugment ops: \(exact)/\(checked) op outputs bit-identical to timm + Pillow")
  }

  /// Python's draws for one RandAugment call, replayed.
  struct Replay: AugmentRandomness {
    var ops: [Int], uniforms: [Double], gaussians: [Double]
    mutating func chooseOp() -> Int { ops.removeFirst() }
    mutating func random() -> Double { uniforms.removeFirst() }
    mutating func gauss(_ mean: Double, _ std: Double) -> Double { gaussians.removeFirst() }
  }

  @Test func wholeCallsReplayTimm() throws {
    let (f, img, _) = try load()
    let f2 = try SafeTensorsFile(contentsOf: Fixtures.url("images/randaugment.safetensors"))
    let trials = try JSONSerialization.jsonObject(with: Data(f2.metadata["trials"]!.utf8)) as! [[String: Any]]
    let all = try u8(f, "trial_out").bytes
    let n = img.pixels.count
    for (k, t) in trials.enumerated() {
      var r = Replay(ops: [], uniforms: [], gaussians: [])
      for o in t["ops"] as! [[String: Any]] {
        r.ops.append(o["index"] as! Int)
        let applied = o["applied"] as! Bool
        r.uniforms.append(applied ? 0.25 : 0.75)
        if applied {
          r.gaussians.append(o["magnitude"] as! Double)
          if let s = o["sign"] as? String { r.uniforms.append(s == "-" ? 0.75 : 0.25) }
        }
      }
      let out = RandAugment()(img, rng: &r)
      let d = diff(out.pixels, Array(all[(k * n)..<((k + 1) * n)]))
      #expect(d.count == 0, "trial \(k): \(d.count) values differ (max \(d.max))")
      #expect(r.ops.isEmpty && r.uniforms.isEmpty && r.gaussians.isEmpty, "trial \(k): draws left over")
    }
  }
}
