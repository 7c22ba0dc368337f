// `milan report RUN`: one self-contained HTML page (pictures inlined as PNG / SVG, no network, no external scripts
// or fonts) showing what a `milan pretrain` run — or every row of a `milan ablate` folder — learned:
//  - training curves (loss, learning rate, throughput per step; the ablation rows' losses on one plot),
//  - for a fixed set of test images: the image, the teacher's class attention, a semantic-aware and a random mask at
//    the run's ratio (the paper's Fig. 5, middle), each model's per-patch loss map (Fig. 5, right: 2 − 2·cos to the
//    teacher's token, or the pixel error for the pixel target) and its last-layer class attention (Figs. 3–4),
//  - 2-D embeddings (t-SNE) of test features of the student(s), a random encoder and the teacher (Fig. 2),
//  - the evaluation table and the linear probe's confusion matrix.
// The numbers behind the pictures come from `Report.analyze`, which the tests check against the library's own.
import Foundation
import MilanAutograd
import MilanData
import MilanIO
import MilanModels
import MilanTensor

public struct ReportConfig: Sendable {
  /// A `milan pretrain` output folder, or a `milan ablate` output folder.
  public var run: String
  /// Default: RUN/report.html.
  public var output: String?
  /// Test images shown with their maps.
  public var images = 6
  /// Test images in the 2-D embeddings.
  public var embedImages = 400
  /// Training images for the confusion matrix's probe (held-out lr choice as `milan ablate`).
  public var probeTrainImages = 4000
  public var probeTestImages = 2000
  public init(run: String) { self.run = run }
}

/// A model's per-image maps on the report's images, [images × L] row-major (NaN where there is no value).
public struct ModelMaps: Sendable {
  public var lossMap: [Float]
  public var attention: [Float]
}

/// The maps every model shares: the images and what the teacher makes of them.
public struct SharedMaps: Sendable {
  public var images: Tensor               // [k, 3, S, S], normalised as the student sees them
  public var teacher: TeacherOutput?      // on the same images at the teacher's size
  public var semanticMask: MaskingResult?
  public var randomMask: MaskingResult
}

public enum Report {
  /// The report's fixed images: the first `count` images of the test split, and the shared maps.
  public static func shared(_ cfg: PretrainConfig, teacher: LoadedTeacher?, test: EvalImages, count: Int) throws -> SharedMaps {
    let ids = Array(0..<min(count, test.dataset.count))
    let images = try test.batch(ids, size: cfg.imageSize)
    let t = try teacher.map { lt in
      let input = try test.batch(ids, size: RunTeacher.inputSize(lt.spec, cfg))
      return Autograd.noGrad { lt.teacher.encode(input) }
    }
    let l = cfg.model.encoder.numPatches, key: UInt64 = 0x5EED_1234
    let semantic = try t.map {
      try Masking.semanticAware(importance: $0.clsAttention,
                            expNoise: Masking.expNoise(rows: ids.count, patches: l, key: key, firstSample: 0),
                            maskRatio: cfg.maskRatio)
    }
    let random = Masking.random(noise: Masking.uniformNoise(rows: ids.count, patches: l, key: key, firstSample: 0),
                                maskRatio: cfg.maskRatio)
    return SharedMaps(images: images, teacher: t, semanticMask: semantic, randomMask: random)
  }

  /// A trained model's maps: its objective's per-patch loss under its own masking kind (2 − 2·cos to the teacher's
  /// token; per-patch mean squared error to the (normalised) pixels; kd: only at the visible patches) and the class
  /// attention of its encoder's last block on the full image.
  public static func analyze(_ model: MILANModel, _ cfg: PretrainConfig, _ s: SharedMaps) -> ModelMaps {
    let k = s.images.shape[0], l = cfg.model.encoder.numPatches
    let m = cfg.masking == .semantic ? (s.semanticMask ?? s.randomMask) : s.randomMask
    var rng = SplitMix64(seed: 0)
    let pred = Autograd.noGrad { model.predict(Variable(s.images), masking: m, training: false, rng: &rng) }.value
    var loss = [Float](repeating: .nan, count: k * l)
    switch cfg.model.target {
    case .pixels:
      var target = patchify(s.images, patch: cfg.model.encoder.patchSize)
      if cfg.model.normPixLoss { target = normalizedPixelTarget(target) }
      let p = target.lastDim
      for i in 0..<(k * l) {
        var e: Float = 0
        for j in 0..<p { let d = pred.data[i * p + j] - target.data[i * p + j]; e += d * d }
        loss[i] = e / Float(p)
      }
    case .features:
      guard let t = s.teacher?.features else { break }
      let c = t.lastDim
      func cosLoss(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>) -> Float {
        var ab: Float = 0, aa: Float = 0, bb: Float = 0
        for j in 0..<c { ab += a[j] * b[j]; aa += a[j] * a[j]; bb += b[j] * b[j] }
        return 2 - 2 * ab / (aa.squareRoot() * bb.squareRoot())
      }
      if cfg.model.decoder == .kd {
        let kk = m.lenKeep
        for i in 0..<k {
          for j in 0..<kk {
            let patch = m.idsKeep.values[i * kk + j]
            loss[i * l + patch] = cosLoss(pred.data + (i * (1 + kk) + 1 + j) * c, t.data + (i * (1 + l) + 1 + patch) * c)
          }
        }
      } else {
        for i in 0..<k { for p in 0..<l { loss[i * l + p] = cosLoss(pred.data + (i * (1 + l) + 1 + p) * c, t.data + (i * (1 + l) + 1 + p) * c) } }
      }
    }
    let attention = Autograd.noGrad { model.encoder.forwardFeaturesWithAttention(Variable(s.images)) }.clsAttention
    return ModelMaps(lossMap: loss, attention: attention.toArray())
  }

  struct Model {
    var name: String
    var dir: URL
    var state: TrainState
    var model: MILANModel
  }

  /// Writes the page; returns its path.
  public static func write(_ c: ReportConfig, log: @escaping @Sendable (String) -> Void = { print($0) }) throws -> URL {
    let root = URL(fileURLWithPath: c.run)
    var models: [Model] = []
    var ablation: AblationResult? = nil
    if let data = try? Data(contentsOf: root.appendingPathComponent("ablation.json")) {
      let a = try JSONDecoder().decode(AblationResult.self, from: data)
      ablation = a
      for (i, row) in a.rows.enumerated() {
        guard let run = row.runs.first else { continue }
        models.append(try load(URL(fileURLWithPath: run.folder), name: "(\(i + 1)) \(row.row.name)"))
      }
    } else {
      models.append(try load(root, name: "this run"))
    }
    guard let first = models.first else { throw InvalidSetting("report: \(c.run) holds no run") }
    // Shared pieces from the run with a teacher (any ablation row with features has one).
    let withTeacher = models.first { $0.state.config.teacher != nil } ?? first
    let cfg = withTeacher.state.config
    let teacher = try RunTeacher.load(cfg, override: nil, log: log)
    let test = EvalImages(try DatasetLoader.open(cfg.dataDir, split: "test"), warn: log)
    let train = EvalImages(try DatasetLoader.open(cfg.dataDir, split: "train"), warn: log)
    log("report: \(models.count) model(s), \(c.images) test images, t-SNE of \(c.embedImages)")
    let shared = try shared(cfg, teacher: teacher, test: test, count: c.images)
    let maps = models.map { analyze($0.model, $0.state.config, shared) }

    var html = header(title: ablation == nil ? "MILAN run \(root.lastPathComponent)" : "MILAN ablation \(root.lastPathComponent)")
    html += "<h1>" + SVG.esc(ablation == nil ? "MILAN pretraining run" : "MILAN ablation") + "</h1>"
    html += "<p class=\"meta\">" + SVG.esc(summary(first.state.config, teacher: teacher, root: root)) + "</p>"

    // 1. Curves.
    html += "<h2>Training</h2><div class=\"row\">"
    let logs = models.map { (m: $0, rows: readLog($0.dir)) }
    html += SVG.lines(logs.map { ($0.m.name, $0.rows.enumerated().map { (Double($0.offset + 1), $0.element.loss) }) },
                      title: "loss per iteration", x: "iteration", y: "loss")
    html += SVG.lines([(first.name, logs[0].rows.enumerated().map { (Double($0.offset + 1), $0.element.lr) })],
                      title: "learning rate", x: "iteration", y: "lr")
    html += SVG.lines(logs.map { ($0.m.name, $0.rows.enumerated().map { (Double($0.offset + 1), $0.element.rate) }) },
                      title: "throughput", x: "iteration", y: "images / s (running mean)")
    html += "</div>"
    if ablation != nil {
      html += "<p class=\"note\">The objectives differ (pixel error for MAE, 2 − 2·cos over different tokens for the "
        + "others), so the losses are comparable within a row only.</p>"
    }

    // 2. Maps.
    let g = cfg.model.encoder.gridSize, scale = max(1, 128 / cfg.imageSize)
    let k = shared.images.shape[0], l = g * g
    let panels = (0..<k).map { Panel.image(rgb(shared.images, $0), width: cfg.imageSize, height: cfg.imageSize, scale: scale) }
    html += "<h2>What the teacher sees and how the patches are masked</h2>"
    html += "<p class=\"note\">Test images \(k == 1 ? "0" : "0–\(k - 1)"); heat maps scaled to each map's own range "
      + "(yellow high, purple low); masks at ratio \(cfg.maskRatio) (grey: masked, seen by no encoder).</p><table class=\"maps\"><tr><th></th>"
    for i in 0..<k { html += "<th>image \(i)</th>" }
    html += "</tr>"
    func rowHTML(_ title: String, _ make: (Int) throws -> Panel?) throws -> String {
      var s = "<tr><th>\(SVG.esc(title))</th>"
      for i in 0..<k {
        if let p = try make(i) { s += "<td><img src=\"\(try p.dataURI())\" alt=\"\(SVG.esc(title)) \(i)\"></td>" } else { s += "<td>—</td>" }
      }
      return s + "</tr>"
    }
    html += try rowHTML("image") { panels[$0] }
    if let t = shared.teacher {
      html += try rowHTML("teacher class attention") { i in panels[i].heat(Array(t.clsAttention.toArray()[(i * l)..<((i + 1) * l)]), grid: g) }
    }
    if let m = shared.semanticMask {
      html += try rowHTML("semantic-aware mask") { i in panels[i].masked((0..<l).map { m.mask[i * l + $0] > 0 }, grid: g) }
    }
    html += try rowHTML("random mask") { i in panels[i].masked((0..<l).map { shared.randomMask.mask[i * l + $0] > 0 }, grid: g) }
    html += "</table><h2>What each model learned</h2><p class=\"note\">Per-patch loss of the trained model under its "
      + "own masking (2 − 2·cos to the teacher's token; pixel error for the pixel target; KD: visible patches only, "
      + "grey elsewhere) and its encoder's last-block class attention on the whole image.</p><table class=\"maps\"><tr><th></th>"
    for i in 0..<k { html += "<th>image \(i)</th>" }
    html += "</tr>"
    for (m, mp) in zip(models, maps) {
      html += try rowHTML("\(m.name): loss map") { i in panels[i].heat(Array(mp.lossMap[(i * l)..<((i + 1) * l)]), grid: g) }
      html += try rowHTML("\(m.name): class attention") { i in panels[i].heat(Array(mp.attention[(i * l)..<((i + 1) * l)]), grid: g) }
    }
    html += "</table>"

    // 3. Embeddings.
    log("report: features and t-SNE")
    let ids = Array(0..<min(c.embedImages, test.dataset.count)), labels = test.labels(ids)
    let classNames = test.dataset.classNames
    var panelsSVG: [String] = []
    let sets = try embeddingInputs(models.map { ($0.name, $0.model, $0.state.config) }, teacher: teacher, teacherConfig: cfg,
                                   test: test, ids: ids)
    var method = ""
    for (name, f) in sets {
      let e = TSNE.embed(f)
      method = e.method
      panelsSVG.append(SVG.scatter(e.points, labels: labels, classNames: classNames, title: name))
    }
    html += "<h2>Test features in 2-D</h2><p class=\"note\">\(SVG.esc(method)) of the class-token features of "
      + "\(ids.count) test images, coloured by class: " + SVG.legend(classNames) + "</p><div class=\"row\">"
      + panelsSVG.joined() + "</div>"

    // 4. Evaluation and confusion matrix.
    html += "<h2>Evaluation</h2>"
    if let ablation {
      html += markdownTable(ablation.table)
    } else if let data = try? Data(contentsOf: root.appendingPathComponent("eval.json")),
              let e = try? JSONDecoder().decode(EvaluationReport.self, from: data) {
      html += markdownTable(e.table)
    } else {
      html += "<p>No eval.json in the run folder: run <code>milan eval --checkpoint \(SVG.esc(root.path)) --json "
        + "\(SVG.esc(root.path))/eval.json</code> for the k-NN / linear-probe table.</p>"
    }
    log("report: linear probe for the confusion matrix")
    let probed = models.first { $0.state.config.masking == .semantic && $0.state.config.model.decoder == .prompting } ?? first
    let (matrix, top1, blr) = try confusion(probed, train: train, test: test, c)
    html += SVG.confusion(matrix, classNames: classNames,
                          title: String(format: "linear probe, %@: top-1 %.2f %% (blr %g, held-out)", probed.name,
                                        top1 * 100, blr))
    html += footer()

    let out = URL(fileURLWithPath: c.output ?? root.appendingPathComponent("report.html").path)
    try Data(html.utf8).write(to: out, options: .atomic)
    return out
  }

  /// The feature sets the 2-D plots embed: each model's class-token features (as `milan eval` extracts them), a
  /// random encoder's of the first model's architecture, and the teacher's class-token features.
  public static func embeddingInputs(_ models: [(String, MILANModel, PretrainConfig)], teacher: LoadedTeacher?,
                                     teacherConfig cfg: PretrainConfig, test: EvalImages, ids: [Int]) throws
    -> [(String, Tensor)] {
    var sets: [(String, Tensor)] = []
    for (name, model, c) in models {
      sets.append(("\(name): student", try Features.encoder(model.encoder, images: test, indices: ids, imageSize: c.imageSize)))
    }
    if let (_, _, c) = models.first {
      sets.append(("random encoder", try Features.encoder(VisionTransformer(c.model.encoder, seed: 7), images: test,
                                                         indices: ids, imageSize: c.imageSize)))
    }
    if let teacher {
      sets.append(("teacher \(teacher.spec.name)", try Features.teacher(teacher.teacher, images: test, indices: ids,
                                                                       imageSize: RunTeacher.inputSize(teacher.spec, cfg))))
    }
    return sets
  }

  static func load(_ dir: URL, name: String) throws -> Model {
    let state = try TrainState.read(dir)
    let model = MILANModel(state.config.model)
    try model.load(try SafeTensorsFile(contentsOf: dir.appendingPathComponent("model.safetensors")).tensors(),
                   file: dir.appendingPathComponent("model.safetensors").path)
    return Model(name: name, dir: dir, state: state, model: model)
  }

  /// Denormalised RGB bytes of image i of a normalised batch [B, 3, S, S].
  static func rgb(_ images: Tensor, _ i: Int) -> [UInt8] {
    let s = images.shape[2], plane = s * s
    var out = [UInt8](repeating: 0, count: plane * 3)
    for c in 0..<3 {
      let src = images.data + (i * 3 + c) * plane
      for p in 0..<plane {
        let v = src[p] * ImageNorm.imageNetStd[c] + ImageNorm.imageNetMean[c]
        out[p * 3 + c] = UInt8(max(0, min(255, (v * 255).rounded())))
      }
    }
    return out
  }

  struct LogRow { var loss: Double, lr: Double, rate: Double }

  static func readLog(_ dir: URL) -> [LogRow] {
    guard let text = try? String(contentsOf: dir.appendingPathComponent("log.jsonl"), encoding: .utf8) else { return [] }
    return text.split(separator: "\n").compactMap { line in
      guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
      return LogRow(loss: o["loss"] as? Double ?? .nan, lr: o["lr"] as? Double ?? .nan,
                    rate: o["images_per_s"] as? Double ?? .nan)
    }
  }

  /// A probe on the model's class-token features (lr chosen on held-out training features), its confusion matrix on
  /// the test images and its top-1.
  static func confusion(_ m: Model, train: EvalImages, test: EvalImages, _ c: ReportConfig) throws
    -> ([[Int]], Double, Double) {
    // The bank and test images `milan eval` scores (its default seed).
    let (bank, queries, _) = Evaluation.splits(run: m.state.config, dataDir: m.state.config.dataDir, train: train,
                                               test: test, trainImages: c.probeTrainImages,
                                               testImages: c.probeTestImages, seed: EvaluationConfig.defaultSeed)
    let size = m.state.config.imageSize
    let fb = try Features.encoder(m.model.encoder, images: train, indices: bank, imageSize: size)
    let fq = try Features.encoder(m.model.encoder, images: test, indices: queries, imageSize: size)
    let lb = train.labels(bank), lq = test.labels(queries)
    guard let top = (lb + lq).max() else {
      throw InvalidSetting("report: the linear probe needs training and test images (got \(bank.count) and "
        + "\(queries.count))")
    }
    let classes = max(train.classes, top + 1)
    var pc = LinearProbeConfig()
    pc.batchSize = min(pc.batchSize, bank.count)
    (pc.blr, _) = try Evaluation.selectProbeBlr([1, 4, 16, 64], features: fb, labels: lb, classes: classes, config: pc, seed: 123)
    let (score, head) = try LinearProbe.run(train: fb, trainLabels: lb, test: fq, testLabels: lq, classes: classes, config: pc)
    let logits = Autograd.noGrad { head(Variable(fq), training: false) }.value
    var matrix = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
    for i in 0..<queries.count {
      let row = logits.data + i * classes
      let pred = (0..<classes).max { row[$0] < row[$1] }!
      matrix[lq[i]][pred] += 1
    }
    return (matrix, score.top1, Double(pc.blr))
  }

  static func summary(_ c: PretrainConfig, teacher: LoadedTeacher?, root: URL) -> String {
    let e = c.model.encoder
    return "\(root.path): student ViT width \(e.embedDim), depth \(e.depth), patch \(e.patchSize), \(c.imageSize) px; "
      + "\(c.epochs) epochs on \(c.trainImages.map(String.init) ?? "all") images of \(c.dataDir); teacher "
      + (teacher.map { $0.spec.summary } ?? "none") + "; mask ratio \(c.maskRatio)."
  }

  /// A Markdown table (as the library writes them) as HTML.
  static func markdownTable(_ md: String) -> String {
    let lines = md.split(separator: "\n").filter { $0.hasPrefix("|") }
    guard lines.count >= 2 else { return "" }
    func cells(_ l: Substring) -> [String] {
      l.split(separator: "|", omittingEmptySubsequences: false).dropFirst().dropLast()
        .map { $0.trimmingCharacters(in: .whitespaces) }
    }
    var s = "<table class=\"eval\"><tr>" + cells(lines[0]).map { "<th>\(SVG.esc($0))</th>" }.joined() + "</tr>"
    for l in lines.dropFirst(2) { s += "<tr>" + cells(l).map { "<td>\(SVG.esc($0))</td>" }.joined() + "</tr>" }
    return s + "</table>"
  }

  static func header(title: String) -> String {
    """
    <!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>\(SVG.esc(title))</title><style>
    body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px}
    h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
    .meta,.note{color:#555;font-size:13px}.row{display:flex;flex-wrap:wrap;gap:12px}
    table.maps th{font-size:12px;font-weight:normal;text-align:left;padding:2px 6px}table.maps td{padding:2px}
    table.maps img{display:block;image-rendering:pixelated}
    table.eval{border-collapse:collapse;font-size:13px}table.eval td,table.eval th{border:1px solid #ccc;padding:4px 8px}
    .key{margin-right:10px;white-space:nowrap}.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
    </style></head><body>
    """
  }

  /// Closes the page with a check a browser (or a test) can read: every image decoded, or the ones that did not.
  static func footer() -> String {
    """
    <p class="note">Written by milan report.</p><script>
    window.addEventListener('load', function () {
      var bad = [];
      document.querySelectorAll('img').forEach(function (i) { if (!i.complete || i.naturalWidth === 0) bad.push(i.alt); });
      document.body.setAttribute('data-images', bad.length ? 'broken: ' + bad.join(', ') : 'ok ' + document.images.length);
      document.body.setAttribute('data-height', String(document.documentElement.scrollHeight));
    });
    </script></body></html>
    """
  }
}
