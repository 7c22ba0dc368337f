import ArgumentParser
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor
import MilanTrain

extension Milan {
  struct Knn: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "knn",
      abstract: "Weighted k-NN (k = 20, T = 0.07) of a pretrained encoder on an IDX set, against a randomly "
        + "initialised encoder, the teacher's features and raw pixels.")

    @Option(help: "Pretraining output folder (model.safetensors, state.json).") var checkpoint = "runs/milan-fashion"
    @Option(help: "Folder with the IDX train and t10k files.") var dataDir = "/usr/share/datasets/fashion-mnist"
    @Option(help: "Bank size (a seeded subset of the training set).") var trainImages = 4000
    @Option(help: "Queries (a seeded subset of the test set).") var testImages = 2000
    @Option(help: "DINOv2 ONNX teacher for the teacher baseline (skipped if absent).") var teacher: String?
    @Option(help: "Also write the results as JSON here.") var json: String?
    @Option var k = 20
    @Option var temperature: Float = 0.07

    func run() throws {
      let dir = URL(fileURLWithPath: dataDir)
      let train = try IDXDataset(images: dir.appendingPathComponent("train-images-idx3-ubyte.gz"),
                                 labels: dir.appendingPathComponent("train-labels-idx1-ubyte.gz"))
      let test = try IDXDataset(images: dir.appendingPathComponent("t10k-images-idx3-ubyte.gz"),
                                labels: dir.appendingPathComponent("t10k-labels-idx1-ubyte.gz"))
      let ckpt = URL(fileURLWithPath: checkpoint)
      let state = try JSONDecoder().decode(TrainState.self, from: Data(contentsOf: ckpt.appendingPathComponent("state.json")))
      let cfg = state.config
      var rng = SplitMix64(seed: 123)
      var a = Array(0..<train.count), b = Array(0..<test.count)
      a.shuffle(using: &rng)
      b.shuffle(using: &rng)
      let bank = Array(a.prefix(trainImages)), queries = Array(b.prefix(testImages))
      let bankLabels = bank.map { train.labels![$0] }, queryLabels = queries.map { test.labels![$0] }
      let classes = (train.labels!.max() ?? 0) + 1

      var rows: [(String, Double)] = []
      func evaluate(_ name: String, _ f: (IDXDataset, [Int]) -> Tensor) {
        let t0 = Date()
        let acc = KNN.accuracy(bank: f(train, bank), bankLabels: bankLabels, queries: f(test, queries),
                               queryLabels: queryLabels, classes: classes, k: k, temperature: temperature)
        rows.append((name, acc))
        say(name.padding(toLength: 38, withPad: " ", startingAt: 0)
          + String(format: "%6.2f %%   (%.0f s)", acc * 100, Date().timeIntervalSince(t0)))
      }
      say("k-NN (k = \(k), T = \(temperature)) on Fashion-MNIST: bank \(bank.count) train images, \(queries.count) test queries")
      let milan = MILANModel(cfg.model)
      let f = try SafeTensorsFile(contentsOf: ckpt.appendingPathComponent("model.safetensors"))
      var w: [String: Tensor] = [:]
      for t in f.tensors { w[t.name] = try f.tensor(t.name) }
      try milan.load(w)
      evaluate("MILAN encoder (epoch \(state.epoch))") {
        KNN.encoderFeatures(milan.encoder, data: $0, indices: $1, imageSize: cfg.imageSize)
      }
      let random = VisionTransformer(cfg.model.encoder, seed: 7)
      evaluate("random encoder (same architecture)") {
        KNN.encoderFeatures(random, data: $0, indices: $1, imageSize: cfg.imageSize)
      }
      let teacherPath = teacher ?? cfg.teacherPath
      if FileManager.default.fileExists(atPath: teacherPath) {
        let t = try DINOv2ONNX.load(URL(fileURLWithPath: teacherPath))
        evaluate("teacher DINOv2-S/14 (\(cfg.teacherImageSize) px)") {
          KNN.teacherFeatures(t, data: $0, indices: $1, imageSize: cfg.teacherImageSize)
        }
      }
      evaluate("raw pixels (\(cfg.imageSize) px)") { KNN.pixelFeatures(data: $0, indices: $1, imageSize: cfg.imageSize) }
      if let json {
        let obj = Dictionary(uniqueKeysWithValues: rows.map { ($0.0, $0.1) })
        try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
          .write(to: URL(fileURLWithPath: json), options: .atomic)
      }
    }
  }
}
