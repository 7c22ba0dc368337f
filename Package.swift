// swift-tools-version: 6.0
// MILAN in Swift: masked image pretraining on language-assisted representations.
//
// Layers (one-way): CMilanKernels/COpenBLAS -> MilanTensor (tensors, kernels) -> MilanAutograd (tape,
// differentiable ops) -> MilanNN (modules, optimizers) -> MilanModels (ViT, teachers, MILAN) -> MilanTrain (engines)
// -> milan (CLI). MilanIO (safetensors, ONNX, file digests) sits beside MilanAutograd on MilanTensor, and MilanData
// (datasets, decoding, transforms) beside MilanNN; MilanModels reads weights through MilanIO.
//
// No unsafeFlags anywhere: the SIMD hot loops live in the C target CMilanKernels, whose AVX2/FMA functions carry
// per-function `__attribute__((target("avx2,fma")))` and are chosen at run time from CPUID, with a portable path
// beside them. The package therefore builds unchanged as a versioned dependency.
import PackageDescription

#if os(Linux)
let blasDependencies: [Target.Dependency] = ["COpenBLAS"]
let blasTargets: [Target] = [
  .systemLibrary(
    name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
    providers: [.apt(["libopenblas-dev"])]),
]
#else
let blasDependencies: [Target.Dependency] = []
let blasTargets: [Target] = []
#endif

let package = Package(
  name: "milan-swift",
  platforms: [.macOS(.v14)],
  products: [
    .library(name: "MilanTensor", targets: ["MilanTensor"]),
    .library(name: "MilanIO", targets: ["MilanIO"]),
    .library(name: "MilanAutograd", targets: ["MilanAutograd"]),
    .library(name: "MilanNN", targets: ["MilanNN"]),
    .library(name: "MilanModels", targets: ["MilanModels"]),
    .library(name: "MilanData", targets: ["MilanData"]),
    .library(name: "MilanTrain", targets: ["MilanTrain"]),
    .executable(name: "milan", targets: ["milan"]),
    .executable(name: "milan-bench", targets: ["milan-bench"]),
    .executable(name: "milan-scaling", targets: ["milan-scaling"]),
    .executable(name: "milan-fuzz", targets: ["milan-fuzz"]),
    // The fuzz targets, for the libFuzzer build in fuzz/libfuzzer (its own package: libFuzzer supplies main).
    .library(name: "MilanFuzz", targets: ["MilanFuzz"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-numerics", from: "1.0.0"),
    .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
  ],
  targets: blasTargets + [
    .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
    // libjpeg-turbo and libpng report errors by longjmp, so the decoding calls live in a small C target.
    .target(
      name: "CMilanCodecs",
      linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png16")]),
    .target(name: "MilanData", dependencies: ["CZlib", "CMilanCodecs", "MilanTensor"]),
    // Open MPI, loaded at run time (dlopen) only when mpirun started the process: nothing MPI at build time.
    .target(name: "CMilanMPI", linkerSettings: [.linkedLibrary("dl", .when(platforms: [.linux]))]),
    .target(
      name: "MilanTrain",
      dependencies: ["MilanModels", "MilanData", "MilanNN", "MilanAutograd", "MilanIO", "MilanTensor", "CMilanMPI"]),
    .target(
      name: "CMilanKernels",
      cSettings: [.define("_GNU_SOURCE")],
      linkerSettings: [.linkedLibrary("m", .when(platforms: [.linux]))]),
    .target(
      name: "MilanTensor",
      dependencies: blasDependencies + [
        "CMilanKernels",
        .product(name: "RealModule", package: "swift-numerics"),
      ],
      linkerSettings: [.linkedFramework("Accelerate", .when(platforms: [.macOS]))]),
    .target(name: "MilanIO", dependencies: ["MilanTensor", .product(name: "Crypto", package: "swift-crypto")]),
    .target(name: "MilanAutograd", dependencies: ["MilanTensor"]),
    .target(
      name: "MilanNN",
      dependencies: ["CMilanKernels", "MilanAutograd", "MilanTensor", .product(name: "RealModule", package: "swift-numerics")]),
    .target(name: "MilanModels", dependencies: ["MilanNN", "MilanAutograd", "MilanTensor", "MilanIO"]),
    .executableTarget(
      name: "milan",
      dependencies: [
        "MilanTensor", "MilanIO", "MilanAutograd", "MilanModels", "MilanData", "MilanTrain", "CMilanKernels",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    .executableTarget(
      name: "milan-bench",
      dependencies: [
        "MilanTensor", "MilanAutograd", "MilanModels", "MilanNN",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "bench/Sources/milan-bench"),
    // Data-parallel measurements behind docs/scaling.md (all-reduce bandwidth, steps on 1 process vs mpirun).
    .executableTarget(
      name: "milan-scaling",
      dependencies: [
        "MilanTensor", "MilanAutograd", "MilanModels", "MilanNN", "MilanTrain",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "bench/Sources/milan-scaling"),
    // The mutation fuzzer over every reader of outside bytes (docs/reliability.md); a library for the smoke test.
    .target(name: "MilanFuzz", dependencies: ["MilanIO", "MilanData", "MilanTrain", "MilanTensor", "CZlib"]),
    .executableTarget(
      name: "milan-fuzz",
      dependencies: ["MilanFuzz", .product(name: "ArgumentParser", package: "swift-argument-parser")],
      path: "fuzz/Sources/milan-fuzz"),
    // Comparison helpers and fixture paths shared by the test targets (not a product).
    .target(name: "MilanTestSupport", dependencies: ["MilanTensor"]),
    .testTarget(
      name: "MilanTensorTests",
      dependencies: [
        "MilanTensor", "MilanIO", "MilanTestSupport", "CMilanKernels",
        .product(name: "RealModule", package: "swift-numerics"),
      ]),
    .testTarget(name: "MilanIOTests", dependencies: ["MilanIO"]),
    .testTarget(name: "MilanDataTests", dependencies: ["MilanData", "MilanTensor", "MilanIO", "MilanTestSupport"]),
    .testTarget(
      name: "MilanTrainTests",
      dependencies: ["MilanTrain", "MilanData", "MilanModels", "MilanIO", "MilanTensor", "MilanTestSupport"]),
    .testTarget(
      name: "MilanModelsTests",
      dependencies: ["MilanModels", "MilanNN", "MilanAutograd", "MilanTensor", "MilanIO", "MilanTestSupport"]),
    .testTarget(name: "MilanFuzzTests", dependencies: ["MilanFuzz", "MilanTestSupport"]),
    .testTarget(
      name: "MilanAutogradTests",
      dependencies: ["MilanAutograd", "MilanTensor", "MilanIO", "MilanTestSupport"]),
  ]
)
