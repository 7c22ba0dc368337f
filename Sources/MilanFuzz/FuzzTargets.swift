// Every reader of outside bytes, as a fuzz target: its seed corpus (valid inputs) and a function that runs the
// reader on one input the way the library does, reading everything the input claims to hold (each tensor of a
// safetensors file, each initializer of an ONNX graph, every image of an IDX set). A thrown error is the expected
// outcome for a bad input; a trap, a hang or an unbounded allocation is a bug.
import CZlib
import Foundation
import MilanData
import MilanIO
import MilanTensor
import MilanTrain

public struct FuzzTarget: @unchecked Sendable {
  public var name: String
  public var seeds: [[UInt8]]
  /// Runs the reader; throws for inputs it refuses.
  public var run: ([UInt8]) throws -> Void
  /// Applied to every other mutated input (even numbers) to repair a checksum the format carries (PNG's chunk
  /// CRCs), so that those inputs reach past the checksum into the decoder's deeper paths.
  public var fixup: (([UInt8]) -> [UInt8])? = nil

  public init(name: String, seeds: [[UInt8]], fixup: (([UInt8]) -> [UInt8])? = nil, run: @escaping ([UInt8]) throws -> Void) {
    self.name = name
    self.seeds = seeds
    self.fixup = fixup
    self.run = run
  }
}

public enum FuzzTargets {
  /// The readers, with seeds built here and, for the image codecs, the valid pictures under `images`
  /// (Tests/Fixtures/images/files). `scratch` is a folder for the readers that take files.
  public static func all(images: URL, scratch: URL) throws -> [FuzzTarget] {
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    func files(_ names: [String]) throws -> [[UInt8]] {
      try names.map { [UInt8](try Data(contentsOf: images.appendingPathComponent($0))) }
    }
    let idxImages = idx3(count: 3, rows: 4, cols: 5), idxLabels = idx1([0, 2, 1])
    return [
      FuzzTarget(name: "safetensors", seeds: [try safetensorsSeed(), try safetensorsSeed(metadata: false)]) { b in
        let f = try SafeTensorsFile(bytes: b)
        for t in f.tensors {
          switch t.dtype {
          case .F32, .F16, .BF16, .F64: _ = try f.floats(t.name)
          default: _ = try f.int64s(t.name)
          }
        }
      },
      FuzzTarget(name: "onnx", seeds: [onnxSeed()]) { b in
        let m = try ONNXModel(data: Data(b))
        for name in m.initializerOrder { _ = try m.floats(name) }
        for n in m.nodes { _ = try m.node(named: n.name) }
      },
      FuzzTarget(name: "jpeg", seeds: try files(["rgb.jpg", "grey.jpg", "cmyk.jpg", "rgb_progressive.jpg",
                                                 "rgb_444.jpg"])) { b in
        _ = try ImageDecoder.decode(Data(b))
      },
      FuzzTarget(name: "png", seeds: try files(["rgb.png", "grey.png", "grey16.png", "palette.png", "rgba.png",
                                                "rgb16.png"]), fixup: fixPNGChecksums) { b in
        _ = try ImageDecoder.decode(Data(b))
      },
      FuzzTarget(name: "idx", seeds: [idxImages + [0xFF] + idxLabels]) { b in
        // One input holds both files: images, a 0xFF separator byte, labels (the mutations move and break it).
        let cut = b.firstIndex(of: 0xFF) ?? b.count
        let imgURL = scratch.appendingPathComponent("images-idx3-ubyte")
        let labURL = scratch.appendingPathComponent("labels-idx1-ubyte")
        try Data(b[..<cut]).write(to: imgURL)
        try Data(b[min(cut + 1, b.count)...]).write(to: labURL)
        let d = try IDXDataset(images: imgURL, labels: labURL)
        for i in 0..<d.count { _ = d.image(i).reduce(0) { $0 &+ Int($1) } }
      },
      FuzzTarget(name: "gzip", seeds: [try gzip(idxImages), try gzip(Array("hello, fuzz".utf8))]) { b in
        _ = try Gzip.decompress(Data(b), label: "fuzz.gz")
      },
      FuzzTarget(name: "config.json", seeds: [try configSeed()]) { b in
        // Decoded and checked, as `milan pretrain --config` does before anything is built from it.
        try JSONDecoder().decode(PretrainConfig.self, from: Data(b)).validate()
      },
      FuzzTarget(name: "state.json", seeds: [try stateSeed()]) { b in
        let dir = scratch.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try Data(b).write(to: dir.appendingPathComponent("state.json"))
        _ = try TrainState.read(dir)
      },
    ]
  }

  /// Recomputes the CRC of every whole chunk after the PNG signature (length, type, data, CRC), up to the first
  /// chunk that runs past the end.
  static func fixPNGChecksums(_ input: [UInt8]) -> [UInt8] {
    var b = input
    var o = 8
    while o + 12 <= b.count {
      let len = Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3])
      guard len >= 0, o + 12 + len <= b.count else { break }
      let crc = b[(o + 4)..<(o + 8 + len)].withContiguousStorageIfAvailable { p in
        UInt32(crc32(0, p.baseAddress, uInt(p.count)))
      } ?? Array(b[(o + 4)..<(o + 8 + len)]).withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, uInt($0.count))) }
      for t in 0..<4 { b[o + 8 + len + t] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(t))) }
      o += 12 + len
    }
    return b
  }

  static func safetensorsSeed(metadata: Bool = true) throws -> [UInt8] {
    var w = SafeTensorsWriter(metadata: metadata ? ["format": "pt", "note": "seed"] : [:])
    try w.add(name: "a.weight", tensor: Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]))
    try w.add(name: "b", shape: [4], int64s: [0, 1, -2, 3])
    try w.add(name: "c.bias", dtype: .F16, shape: [3], bytes: [0x00, 0x3C, 0x00, 0x40, 0x00, 0xC2])
    try w.add(name: "d", dtype: .BF16, shape: [1, 2], bytes: [0x80, 0x3F, 0x00, 0xC0])
    return try w.serialized()
  }

  /// IDX images: magic 0x00000803, count, rows, cols (big-endian), then bytes.
  static func idx3(count: Int, rows: Int, cols: Int) -> [UInt8] {
    var b: [UInt8] = [0, 0, 8, 3]
    for v in [count, rows, cols] { b += withUnsafeBytes(of: UInt32(v).bigEndian, Array.init) }
    b += (0..<(count * rows * cols)).map { UInt8(truncatingIfNeeded: $0 &* 37) }
    return b
  }

  static func idx1(_ labels: [UInt8]) -> [UInt8] {
    [0, 0, 8, 1] + withUnsafeBytes(of: UInt32(labels.count).bigEndian, Array.init) + labels
  }

  /// gzip through zlib's deflate with the gzip wrapper (windowBits 16 + 15).
  static func gzip(_ input: [UInt8]) throws -> [UInt8] {
    var s = z_stream()
    guard deflateInit2_(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                        Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw FuzzError("deflateInit2 failed") }
    defer { deflateEnd(&s) }
    var out = [UInt8](repeating: 0, count: input.count + 128)
    var inp = input
    let produced: Int = inp.withUnsafeMutableBufferPointer { ib in
      out.withUnsafeMutableBufferPointer { ob in
        s.next_in = ib.baseAddress
        s.avail_in = uInt(ib.count)
        s.next_out = ob.baseAddress
        s.avail_out = uInt(ob.count)
        _ = deflate(&s, Z_FINISH)
        return ob.count - Int(s.avail_out)
      }
    }
    return Array(out.prefix(produced))
  }

  static func configSeed() throws -> [UInt8] {
    [UInt8](try PretrainConfig.jsonEncoder().encode(PretrainConfig.fashionDemo(dataDir: "/data", teacherPath: "/t.onnx",
                                                                             outputDir: "/out")))
  }

  static func stateSeed() throws -> [UInt8] {
    let s = TrainState(loop: LoopState(epoch: 3, step: 90, rng: SplitMix64(seed: 5)),
                       config: PretrainConfig.fashionDemo(dataDir: "/data", teacherPath: "/t.onnx", outputDir: "/out"))
    return [UInt8](try PretrainConfig.jsonEncoder().encode(s))
  }

  /// A minimal ONNX model: one MatMul node and two float initializers (one as float_data, one as raw_data).
  static func onnxSeed() -> [UInt8] {
    var w = ProtobufWriter()
    var graph = ProtobufWriter()
    var node = ProtobufWriter()
    node.string(1, "x")
    node.string(1, "w")
    node.string(2, "y")
    node.string(3, "/layer/MatMul")
    node.string(4, "MatMul")
    graph.message(1, node)
    var t1 = ProtobufWriter()
    t1.int(1, 2)
    t1.int(1, 3)
    t1.int(2, 1)  // FLOAT
    for v: Float in [1, 2, 3, 4, 5, 6] { t1.fixed32(4, v.bitPattern) }
    t1.string(8, "w")
    graph.message(5, t1)
    var t2 = ProtobufWriter()
    t2.int(1, 3)
    t2.int(2, 1)
    t2.bytes(9, [Float(0.5), -1, 2].flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) })
    t2.string(8, "bias")
    graph.message(5, t2)
    w.int(1, 8)  // ir_version
    w.message(7, graph)
    return w.bytes
  }
}

public struct FuzzError: Error, CustomStringConvertible {
  public let description: String
  init(_ d: String) { description = d }
}
