// The teacher's class-token features of the training images, which pretraining computes anyway when it caches the
// teacher's targets (no augmentation), kept in the run folder so that `milan eval` does not run the teacher on the
// same images again. Reused only where it is exactly what evaluation would compute: the same teacher file (sha256),
// input size, data folder, dataset size and preprocessing. IDX sets preprocess the same way for both; image folders
// do not (pretraining resizes the shorter side to the size, evaluation to size / 0.875 before the centre crop), so
// for folders nothing is reused. A reused row equals a recomputed one to float rounding (~1e-6 of scale: the
// teacher's output for an image depends slightly on the batch it ran in, through the GEMMs' blocking, as it does
// between two evaluations); PretrainerTests checks it and that the scores do not move.
import Foundation
import MilanData
import MilanIO
import MilanModels
import MilanTensor

public struct TeacherFeatureCache {
  public static let fileName = "teacher-features.safetensors"

  /// What must match for a row to be reused.
  public struct Key: Equatable, Sendable {
    public var teacherSHA256: String
    public var imageSize: Int
    public var dataDir: String
    public var datasetCount: Int
    public var preprocessing: String

    var metadata: [String: String] {
      ["teacher_sha256": teacherSHA256, "image_size": String(imageSize), "data_dir": dataDir,
       "dataset_count": String(datasetCount), "preprocessing": preprocessing]
    }

    init?(metadata m: [String: String]) {
      guard let sha = m["teacher_sha256"], let size = m["image_size"].flatMap(Int.init), let dir = m["data_dir"],
            let count = m["dataset_count"].flatMap(Int.init), let pre = m["preprocessing"] else { return nil }
      (teacherSHA256, imageSize, dataDir, datasetCount, preprocessing) = (sha, size, dir, count, pre)
    }

    public init(teacherSHA256: String, imageSize: Int, dataDir: String, datasetCount: Int, preprocessing: String) {
      self.teacherSHA256 = teacherSHA256
      self.imageSize = imageSize
      self.dataDir = URL(fileURLWithPath: dataDir).standardizedFileURL.path
      self.datasetCount = datasetCount
      self.preprocessing = preprocessing
    }
  }

  /// How a dataset's images reach the teacher: "idx-bicubic" for IDX sets (the same in pretraining and evaluation);
  /// for image folders the two differ ("resize-center-crop" vs "eval-resize-0.875-center-crop").
  public static func preprocessing(_ data: any ImageDataset, evaluation: Bool) -> String {
    if data is IDXDataset { return "idx-bicubic" }
    return evaluation ? "eval-resize-0.875-center-crop" : "resize-center-crop"
  }

  public var key: Key
  /// [N, C], row r for dataset image `indices[r]`.
  public var features: Tensor
  public var rowOf: [Int: Int]

  /// Writes the class-token rows of `targets` ([N, 1 + L, C], one per `indices`) into `dir`, atomically.
  public static func write(targets: Tensor, indices: [Int], key: Key, to dir: URL) throws {
    let n = targets.shape[0], l1 = targets.shape[1], c = targets.shape[2]
    let cls = Tensor(uninitialized: [n, c])
    for r in 0..<n { (cls.data + r * c).update(from: targets.data + r * l1 * c, count: c) }
    var w = SafeTensorsWriter(metadata: key.metadata)
    try w.add(name: "features", tensor: cls)
    try w.add(name: "indices", shape: [n], int64s: indices.map(Int64.init))
    try w.write(to: dir.appendingPathComponent(fileName))
  }

  /// The cache in `dir` when it matches `key`; nil (and why, through `log`) when it is absent or does not match.
  /// A damaged file is reported and ignored: evaluation then computes the features itself.
  public static func read(_ dir: URL, matching key: Key, log: (String) -> Void) -> TeacherFeatureCache? {
    let url = dir.appendingPathComponent(fileName)
    guard FileManager.default.fileExists(atPath: url.path) else { return nil }
    do {
      let f = try SafeTensorsFile(contentsOf: url)
      guard let k = Key(metadata: f.metadata) else {
        log("\(url.path): no cache key in its metadata; the teacher runs on every image")
        return nil
      }
      guard k == key else {
        var why: [String] = []
        if k.teacherSHA256 != key.teacherSHA256 { why.append("another teacher file") }
        if k.imageSize != key.imageSize { why.append("input \(k.imageSize) px, not \(key.imageSize)") }
        if k.dataDir != key.dataDir || k.datasetCount != key.datasetCount { why.append("another data set") }
        if k.preprocessing != key.preprocessing { why.append("pretraining preprocessed \(k.preprocessing), evaluation \(key.preprocessing)") }
        log("teacher features of the pretraining run not reused (\(why.joined(separator: ", ")))")
        return nil
      }
      let features = try f.tensor("features"), idx = try f.indices("indices")
      guard features.shape.count == 2, idx.shape == [features.shape[0]] else {
        log("\(url.path): features \(features.shape) and indices \(idx.shape) disagree; the teacher runs on every image")
        return nil
      }
      var rowOf: [Int: Int] = [:]
      for (r, i) in idx.values.enumerated() { rowOf[Int(i)] = r }
      return TeacherFeatureCache(key: key, features: features, rowOf: rowOf)
    } catch {
      log("\(url.path) is unreadable (\(error)); the teacher runs on every image")
      return nil
    }
  }
}
