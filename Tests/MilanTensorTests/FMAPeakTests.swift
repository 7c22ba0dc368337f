// The FMA-peak loop: present on the CPUs this project runs on, and self-consistent (the all-core figure is between one
// core's and threads × one core's; one core does the FLOPs the loop claims at a clock a CPU can have).
import CMilanKernels
import MilanTensor
import Testing

@Suite struct FMAPeakTests {
  @Test func thePeakIsMeasuredAndConsistent() throws {
    #if arch(x86_64) || arch(arm64)
    let p = try #require(FMAPeak.measure(threads: 2, seconds: 0.02, trials: 3), "no FMA loop for this CPU")
    print(String(format: "FMA peak: %d-wide, %.1f GFLOP/s on one core, %.1f on 2", p.width, p.perCoreGFLOPS,
                 p.allCoresGFLOPS))
    // FLOPs per cycle per core is at most 64 (two 512-bit FMA pipes), clocks are below 6 GHz: ≤ 384 GFLOP/s.
    #expect(p.perCoreGFLOPS > 1 && p.perCoreGFLOPS < 384)
    // On a shared 2-core machine the second core may be busy: between 0.5 and 2.2 one-core peaks.
    #expect(p.allCoresGFLOPS > 0.5 * p.perCoreGFLOPS && p.allCoresGFLOPS < 2.2 * p.perCoreGFLOPS)
    #expect(FMAPeak.widths.contains(p.width))
    #endif
    // A width the CPU lacks does nothing and says so.
    #expect(milan_fma_peak_run(3, 10) == 0)
  }
}
