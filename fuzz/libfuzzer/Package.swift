// swift-tools-version: 6.0
// Coverage-guided fuzzing of every reader of outside bytes with libFuzzer, Swift's `-sanitize=fuzzer`. The fuzz
// targets are MilanFuzz's (the same readers, seeds and PNG checksum fix-up as the seeded mutation fuzzer
// milan-fuzz). A package of its own, built only by scripts/libfuzz.sh with -sanitize=fuzzer: its entry point calls
// libFuzzer's driver, which exists only in such a build, so it cannot be a product of the main package.
import Foundation
import PackageDescription

// The main package two folders up; a path dependency is named after its folder, whatever a clone calls it.
let root = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().deletingLastPathComponent()

let package = Package(
  name: "milan-libfuzz",
  dependencies: [.package(path: root.path)],
  targets: [
    .target(name: "CLibFuzzerDriver"),
    .executableTarget(
      name: "milan-libfuzz",
      dependencies: ["CLibFuzzerDriver", .product(name: "MilanFuzz", package: root.lastPathComponent)]),
  ]
)
