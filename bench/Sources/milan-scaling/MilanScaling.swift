// Measurements behind docs/scaling.md (run by hand, never by the tests):
//   milan-scaling all-reduce                under mpirun: in-place float32 all-reduce time per call for a latency
//                                           message and for the gradient sizes of the ViT-S/B/L MILAN models, as one
//                                           message and in the trainer's 25 MB buckets
//   milan-scaling step --config paper|cpu   one MILAN training step as `milan pretrain` takes it (teacher forward,
//                                           semantic-aware masking, encoder, decoder, loss, backward with the
//                                           bucketed all-reduce overlapping it, AdamW), on random images and random
//                                           weights of the real shapes; in one process or under mpirun with the
//                                           global batch split; prints the median step time, throughput and the part
//                                           of the all-reduce hidden behind backward
// Output: one JSON line per measurement on rank 0's standard output.
import ArgumentParser
import Foundation
import MilanAutograd
import MilanModels
import MilanNN
import MilanTensor
import MilanTrain

@main
struct MilanScaling: ParsableCommand {
  static let configuration = CommandConfiguration(commandName: "milan-scaling",
                                                  subcommands: [AllReduce.self, Step.self])
}

func seconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

func emit(_ g: ProcessGroup, _ record: [String: Any]) {
  guard g.rank == 0, let d = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) else { return }
  FileHandle.standardOutput.write(d + Data("\n".utf8))
}

/// Trainable parameters of a MILAN model (student + prompting decoder 512 × 8) for a student preset and a 512-d
/// CLIP teacher, as `milan pretrain --model NAME` builds it.
func milanParameters(_ name: String, predictionDim: Int = 512) -> Int {
  var c = MILANConfig.preset(name)!
  c.predictionDim = predictionDim
  return MILANModel(c).trainableParameters().reduce(0) { $0 + $1.1.count }
}

struct AllReduce: ParsableCommand {
  @Option(help: "Calls per size (median reported).") var calls = 5
  @Option(help: "Bucket size of the bucketed rows (the trainer's default).") var bucketMB = 25

  func run() throws {
    let g = try ProcessGroup.current()
    var sizes: [(String, Int)] = [("latency 4 KB", 1024),
                                  ("CPU demo model", milanParameters(ViTConfig.demoName, predictionDim: 384))]
    for m in ["vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224"] {
      sizes.append(("MILAN \(m)", milanParameters(m)))
    }
    for (label, count) in sizes {
      let t = Tensor(zeros: [count])
      for bucketed in [false, true] where !(bucketed && count * 4 <= bucketMB << 20) {
        var times: [Double] = []
        for _ in 0..<(calls + 1) {
          try g.barrier()
          let t0 = seconds()
          if bucketed {
            let per = (bucketMB << 20) / 4
            for o in stride(from: 0, to: count, by: per) { try g.allReduceSum(t.data + o, count: min(per, count - o)) }
          } else {
            try g.allReduceSum(t.data, count: count)
          }
          times.append(seconds() - t0)
        }
        times.removeFirst()  // warm-up
        let median = times.sorted()[times.count / 2]
        emit(g, ["what": "allreduce", "label": label, "floats": count, "bytes": count * 4, "bucketed": bucketed,
                 "processes": g.size, "median_s": median, "best_s": times.min()!,
                 "algbw_GBps": Double(count * 4) / median / 1e9])
      }
    }
    g.finalize()
  }
}

struct Step: ParsableCommand {
  @Option(help: "paper (ViT-B/16 + decoder 512×8, CLIP ViT-B/16 teacher in the step, 224 px, global batch 8) or cpu (the CPU demo: vit_demo_patch4_32 + decoder 96×2, DINOv2-S/14-shaped teacher at 112 px in the step, global batch 128).")
  var config = "cpu"
  @Option(help: "Timed steps (after 2 warm-up steps).") var steps = 6
  @Option(help: "Worker threads of each process (default: the cores split among the processes on this machine).")
  var threads: Int?

  func run() throws {
    if let threads { Parallel.threads = threads }
    let g = try ProcessGroup.current()
    let paper = config == "paper"
    var mc = MILANConfig.preset(paper ? "vit_base_patch16_224" : ViTConfig.demoName)!
    let teacher: any Teacher
    var rng = SplitMix64(seed: 1)
    func randomize(_ m: any Module) {
      for (_, p) in m.namedParameters() { for i in 0..<p.count { p.value.data[i] = 0.02 * rng.nextNormal() } }
    }
    if paper {
      let t = CLIPVisionTeacher(.vitB16)
      randomize(t)
      teacher = t
    } else {
      let t = DINOv2Teacher(.small14)
      randomize(t)
      teacher = t
    }
    mc.predictionDim = teacher.featureDim
    let model = MILANModel(mc, seed: 0)
    let globalBatch = paper ? 8 : 128, batch = globalBatch / g.size
    let size = mc.encoder.imageSize, teacherSize = mc.encoder.gridSize * teacher.patchSize
    let opt = AdamW(groups: ParamGroup.weightDecayGroups(model.namedParameters(), weightDecay: 0.05), lr: 1e-4,
                    beta1: 0.9, beta2: 0.95)
    let trainable = model.trainableParameters().map(\.1)
    let reducer = g.size > 1 ? GradientAllReduce(group: g, parameters: trainable) : nil
    let images = Tensor.randn([batch, 3, size, size], rng: &rng)
    let teacherImages = Tensor.randn([batch, 3, teacherSize, teacherSize], rng: &rng)
    var times: [Double] = [], reduce = 0.0, waited = 0.0, backward: [Double] = []
    for s in 0..<(steps + 2) {
      try g.barrier()
      let t0 = seconds()
      let t = Autograd.noGrad { teacher.encode(teacherImages) }
      let m = try Masking.semanticAware(importance: t.clsAttention,
                                    expNoise: Masking.expNoise(rows: batch, patches: mc.encoder.numPatches,
                                                               key: UInt64(s), firstSample: g.rank * batch),
                                    maskRatio: 0.75)
      var dropRNG = SplitMix64(seed: 0)
      let loss = try model.loss(model.predict(Variable(images), masking: m, rng: &dropRNG), images: images,
                                teacher: t.features, masking: m)
      _ = try g.allReduce([Double(loss.value.data[0]), 0], .sum)
      let b0 = seconds()
      loss.backward(leafReady: reducer.map { r in { r.leafReady($0) } })
      let b1 = seconds()
      if let reducer { try reducer.finish() }
      opt.step()
      opt.zeroGrad()
      if s >= 2 {
        times.append(seconds() - t0)
        backward.append(b1 - b0)
        reduce += reducer?.last.reduce ?? 0
        waited += reducer?.last.waited ?? 0
      }
    }
    let median = times.sorted()[times.count / 2]
    emit(g, ["what": "step", "config": config, "processes": g.size, "threads": Parallel.threads,
             "global_batch": globalBatch, "median_step_s": median, "best_step_s": times.min()!,
             "images_per_s": Double(globalBatch) / median, "median_backward_s": backward.sorted()[backward.count / 2],
             "allreduce_s_per_step": reduce / Double(steps), "allreduce_wait_s_per_step": waited / Double(steps),
             "hidden_fraction": reduce > 0 ? max(0, 1 - waited / reduce) : 1,
             "gradient_mb": Double(trainable.reduce(0) { $0 + $1.count } * 4) / 1e6])
    g.finalize()
  }
}
