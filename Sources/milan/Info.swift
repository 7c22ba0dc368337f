import ArgumentParser
import CMilanKernels
import MilanTensor

extension Milan {
  struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print the compute setup: BLAS library, SIMD code path, worker threads.")

    func run() {
      print("BLAS:     \(BLAS.libraryDescription) (one BLAS thread per worker; MilanTensor splits work itself)")
      print("SIMD:     \(milan_simd_level() > 0 ? "AVX2 + FMA" : "portable scalar") kernels")
      print("Threads:  \(Parallel.threads) (set MILAN_THREADS to change)")
    }
  }
}
