import ArgumentParser
import CMilanKernels
import MilanTensor

extension Milan {
  struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print the compute setup: BLAS library, SIMD code path, worker threads.")

    func run() {
      print("BLAS:     \(BLAS.libraryDescription) (one BLAS thread per worker; MilanTensor splits work itself)")
      print("SIMD:     \(["portable scalar", "AVX2 + FMA", "AVX-512 + AVX2 + FMA"][Int(milan_simd_level())]) kernels")
      print("Threads:  \(Parallel.threads) (set MILAN_THREADS to change)")
    }
  }
}
