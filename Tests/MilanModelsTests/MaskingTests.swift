// Masking index semantics (the golden comparison with the PyTorch reference lives with the MILAN step fixtures).
import MilanModels
import MilanTensor
import Testing

@Suite struct MaskingTests {
  @Test func randomMaskingMatchesArgsortSemantics() {
    let noise = Tensor(shape: [1, 8], values: [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    let m = Masking.random(noise: noise, maskRatio: 0.75)
    #expect(m.lenKeep == 2)
    #expect(m.idsShuffle.values == [1, 5, 3, 7, 0, 4, 6, 2])
    #expect(m.idsKeep.values == [1, 5] && m.idsDump.values == [3, 7, 0, 4, 6, 2])
    #expect(m.idsRestore.values == [4, 0, 7, 2, 5, 1, 6, 3])
    #expect(m.mask == [1, 0, 1, 1, 1, 0, 1, 1])
  }

  @Test func semanticAwareSamplingFollowsTheImportance() throws {
    // With equal Exp draws the order is by importance, descending; zero importance is never kept.
    let p = Tensor(shape: [1, 6], values: [0.1, 0.4, 0, 0.2, 0.25, 0.05])
    let ones = Tensor(shape: [1, 6], repeating: 1)
    let m = try Masking.semanticAware(importance: p, expNoise: ones, maskRatio: 0.5)
    #expect(m.idsShuffle.values == [1, 4, 3, 0, 5, 2] && m.lenKeep == 3)
    // Sampling frequency ∝ importance: over many draws the first pick follows p (Plackett–Luce).
    var rng = SplitMix64(seed: 9)
    var firstCounts = [Int](repeating: 0, count: 6)
    let trials = 20000
    for _ in 0..<trials {
      let e = Masking.expNoise([1, 6], rng: &rng)
      firstCounts[try Masking.semanticAware(importance: p, expNoise: e, maskRatio: 0.5).idsShuffle.values[0]] += 1
    }
    for j in 0..<6 {
      let freq = Double(firstCounts[j]) / Double(trials)
      #expect(abs(freq - Double(p.data[j])) < 0.015, "patch \(j): first-pick frequency \(freq) vs p \(p.data[j])")
    }
  }

  @Test func importanceThatCannotBeSampledThrows() {
    // The importance is the teacher's class attention: damaged teacher weights give NaN, ∞ or a zero row. Each is
    // an error with the image and patch, not a trap.
    let ones = Tensor(shape: [2, 3], repeating: 1)
    for (values, expected) in [([0.2, 0.3, 0.5, 0.1, .nan, 0.4], MaskingError.badImportance(row: 1, patch: 1, value: .nan)),
                               ([0.2, -0.3, 0.5, 0.1, 0.2, 0.4], .badImportance(row: 0, patch: 1, value: -0.3)),
                               ([0.2, 0.3, .infinity, 0.1, 0.2, 0.4], .badImportance(row: 0, patch: 2, value: .infinity)),
                               ([0.2, 0.3, 0.5, 0, 0, 0], .zeroImportance(row: 1))] as [([Float], MaskingError)] {
      do {
        _ = try Masking.semanticAware(importance: Tensor(shape: [2, 3], values: values), expNoise: ones, maskRatio: 0.5)
        Issue.record("importance \(values) was sampled from")
      } catch let e as MaskingError {
        // NaN ≠ NaN: compare the description, which prints the value.
        #expect(e.description == expected.description, "\(e)")
        print("importance \(values): \(e)")
      } catch { Issue.record("unexpected error \(error)") }
    }
  }
}
