// Data that fights back, each with its documented behaviour (docs/reliability.md): symlink loops are skipped and
// reported, symlinked files and folders followed (as torchvision), special files skipped, a class folder without
// images refused (as torchvision), a dangling link or an unreadable file skipped and counted at load, 1×1 images
// trained on, decompression bombs refused from their header by Pillow's pixel limit, IDX headers whose dimensions
// overflow refused, gzip bombs refused past a size limit. (16-bit, CMYK, truncated, empty and disguised files:
// ImageDecodingTests, ImageTests; IDX counts that disagree: IDXTests.)
import Foundation
import MilanData
import MilanTensor
import MilanTestSupport
import Testing

@Suite struct HostileDataTests {
  func scratch(_ name: String) throws -> URL {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("milan-hostile-\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
  }

  @Test func symlinkLoopsSpecialFilesAndDanglingLinks() throws {
    let root = try scratch("links")
    defer { try? FileManager.default.removeItem(at: root) }
    let fm = FileManager.default
    let a = root.appendingPathComponent("a"), b = root.appendingPathComponent("b")
    try fm.createDirectory(at: a.appendingPathComponent("sub"), withIntermediateDirectories: true)
    try fm.createDirectory(at: b, withIntermediateDirectories: true)
    try fm.copyItem(at: imageFile("rgb.png"), to: a.appendingPathComponent("img.png"))
    try fm.copyItem(at: imageFile("rgb.jpg"), to: a.appendingPathComponent("sub/deep.jpg"))
    // a/sub/loop → a (a loop), b/link.png → a/img.png (a symlinked file), b/gone.jpg → nothing (dangling),
    // b/fifo.jpg: a FIFO (opening it for reading would block forever).
    try fm.createSymbolicLink(atPath: a.appendingPathComponent("sub/loop").path, withDestinationPath: a.path)
    try fm.createSymbolicLink(atPath: b.appendingPathComponent("link.png").path,
                              withDestinationPath: a.appendingPathComponent("img.png").path)
    try fm.createSymbolicLink(atPath: b.appendingPathComponent("gone.jpg").path, withDestinationPath: "/nonexistent.jpg")
    #expect(mkfifo(b.appendingPathComponent("fifo.jpg").path, 0o644) == 0)

    let folder = try ImageFolder(root: root)
    let names = folder.paths.map { $0.replacingOccurrences(of: root.path + "/", with: "") }
    #expect(names == ["a/img.png", "a/sub/deep.jpg", "b/gone.jpg", "b/link.png"], "\(names)")
    #expect(folder.labels == [0, 0, 1, 1])
    #expect(folder.skippedEntries.count == 2, "\(folder.skippedEntries)")
    #expect(folder.skippedEntries.contains { $0.contains("sub/loop") && $0.contains("symlink loop") })
    #expect(folder.skippedEntries.contains { $0.contains("fifo.jpg") && $0.contains("not a regular file") })
    // The dangling link is skipped and counted when loaded; the symlinked file loads.
    let warnings = WarningBox()
    let loader = SafeImageLoader(dataset: folder, maxUnreadableFraction: 0.5, warn: { warnings.append($0) })
    let (used, _) = try loader.load(2)
    #expect(used == 3 && loader.failureCount == 1 && warnings.lines.first?.contains("gone.jpg") == true)
  }

  @Test func anUnreadableFileIsSkippedAndCounted() throws {
    let root = try scratch("perm")
    defer { try? FileManager.default.removeItem(at: root) }
    let c = root.appendingPathComponent("c")
    try FileManager.default.createDirectory(at: c, withIntermediateDirectories: true)
    for n in ["1.png", "2.png", "3.png"] { try FileManager.default.copyItem(at: imageFile("rgb.png"), to: c.appendingPathComponent(n)) }
    try FileManager.default.setAttributes([.posixPermissions: 0], ofItemAtPath: c.appendingPathComponent("2.png").path)
    let folder = try ImageFolder(root: root)
    let loader = SafeImageLoader(dataset: folder, maxUnreadableFraction: 0.5, warn: { _ in })
    let (used, _) = try loader.load(1)
    if geteuid() == 0 {
      // Root reads a file whatever its mode: the file is simply read (the dangling link above covers the path).
      #expect(used == 1 && loader.failureCount == 0)
    } else {
      #expect(used == 2 && loader.failureCount == 1)
    }
  }

  @Test func aClassFolderWithoutImagesIsRefused() throws {
    let root = try scratch("empty-class")
    defer { try? FileManager.default.removeItem(at: root) }
    try FileManager.default.createDirectory(at: root.appendingPathComponent("cats"), withIntermediateDirectories: true)
    try FileManager.default.createDirectory(at: root.appendingPathComponent("dogs"), withIntermediateDirectories: true)
    try FileManager.default.copyItem(at: imageFile("rgb.png"), to: root.appendingPathComponent("cats/1.png"))
    try Data("not an image".utf8).write(to: root.appendingPathComponent("dogs/readme.txt"))
    #expect(throws: ImageFolderError.emptyClasses(root: root.path, classes: ["dogs"])) { try ImageFolder(root: root) }
    #expect(ImageFolderError.emptyClasses(root: root.path, classes: ["dogs"]).description.contains("dogs"))
  }

  @Test func oneByOneImagesGoThroughEveryTransform() throws {
    let tiny = DecodedImage(width: 1, height: 1, channels: 3, pixels: [200, 100, 50])
    var rng = SplitMix64(seed: 3)
    for _ in 0..<20 {
      let draw = Transforms.drawCrop(height: 1, width: 1, scale: 0.2...1.0, ratio: 0.75...1.3333, rng: &rng)
      let out = Transforms.batch([tiny], size: 32, draws: [draw])
      #expect(out.shape == [1, 3, 32, 32] && out.toArray().allSatisfy(\.isFinite))
    }
    let eval = Transforms.evaluation(tiny, size: 32)
    #expect(eval.width == 32 && eval.height == 32)
  }

  /// A PNG whose header claims `width`×`height` (the pixel data never follows).
  func pngHeader(width: UInt32, height: UInt32) -> Data {
    func be(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian, Array.init) }
    let ihdr: [UInt8] = Array("IHDR".utf8) + be(width) + be(height) + [8, 0, 0, 0, 0]  // 8-bit grey
    return Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + be(13) + ihdr + be(crc32(ihdr))
                + be(0) + Array("IEND".utf8) + be(crc32(Array("IEND".utf8))))
  }

  func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
      c ^= UInt32(b)
      for _ in 0..<8 { c = (c >> 1) ^ (c & 1 == 1 ? 0xEDB8_8320 : 0) }
    }
    return ~c
  }

  @Test func decompressionBombsAreRefusedFromTheirHeader() throws {
    // 20000 × 20000 = 4·10^8 pixels, over Pillow's error threshold (178,956,970): refused before any allocation.
    do {
      _ = try ImageDecoder.decode(pngHeader(width: 20000, height: 20000), path: "bomb.png")
      Issue.record("a 20000×20000 PNG header was accepted")
    } catch let e as ImageDecodeError {
      #expect(e.description.contains("bomb.png") && e.description.contains("400000000 pixels"), "\(e)")
    }
    // The same for a JPEG: a real one with its frame header's size changed to 20000 × 20000.
    var jpeg = [UInt8](try Data(contentsOf: imageFile("rgb.jpg")))
    let sof = try #require((0..<(jpeg.count - 1)).first { jpeg[$0] == 0xFF && (jpeg[$0 + 1] == 0xC0 || jpeg[$0 + 1] == 0xC2) })
    for (o, v) in [(sof + 5, 20000), (sof + 7, 20000)] { jpeg[o] = UInt8(v >> 8); jpeg[o + 1] = UInt8(v & 0xFF) }
    do {
      _ = try ImageDecoder.decode(Data(jpeg), path: "bomb.jpg")
      Issue.record("a 20000×20000 JPEG was accepted")
    } catch let e as ImageDecodeError {
      #expect(e.description.contains("bomb.jpg") && e.description.contains("over the limit"), "\(e)")
    }
    // Just under the threshold is read as far as its (missing) data: a different error, not the limit.
    do {
      _ = try ImageDecoder.decode(pngHeader(width: 13377, height: 13377), path: "big.png")
    } catch let e as ImageDecodeError {
      #expect(!e.description.contains("over the limit"), "\(e)")
    }
  }

  @Test func idxHeadersWhoseDimensionsOverflowAreRefused() throws {
    let dir = try scratch("idx")
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("images-idx3-ubyte")
    try Data([0, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).write(to: url)
    do {
      _ = try IDXDataset(images: url)
      Issue.record("an overflowing IDX header was accepted")
    } catch let e as IDXError {
      #expect(e.description.contains(url.path) && e.description.contains("2^63"), "\(e)")
    }
  }

  @Test func gzipBombsStopAtTheLimit() throws {
    // 64 KiB of zeros compress to a few hundred bytes; with a 16 KiB limit the output is refused.
    let zeros = [UInt8](repeating: 0, count: 1 << 16)
    let dir = try scratch("gz")
    defer { try? FileManager.default.removeItem(at: dir) }
    let raw = dir.appendingPathComponent("zeros"), gz = dir.appendingPathComponent("zeros.gz")
    try Data(zeros).write(to: raw)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/gzip")
    p.arguments = ["-k", raw.path]
    try p.run()
    p.waitUntilExit()
    let packed = try Data(contentsOf: gz)
    #expect(packed.count < 1000)
    #expect(try Gzip.decompress(packed, label: "zeros.gz").count == 1 << 16)
    #expect(throws: GzipError.tooLarge("zeros.gz", limit: 1 << 14)) { try Gzip.decompress(packed, label: "zeros.gz", limit: 1 << 14) }
  }
}
