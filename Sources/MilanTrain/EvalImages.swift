// Images for evaluation, without augmentation: IDX digits through the same bicubic float path pretraining uses
// (no crop), decoded files through the reference's evaluation transform (Resize(size / 0.875) + CenterCrop(size)).
// Unreadable files are replaced by the next readable image and counted (SafeImageLoader).
import MilanData
import MilanTensor

public struct EvalImages: Sendable {
  public let dataset: any ImageDataset
  public let loader: SafeImageLoader

  public init(_ dataset: any ImageDataset, maxUnreadableFraction: Double = 0.01,
              warn: @escaping @Sendable (String) -> Void = { print($0) }) {
    self.dataset = dataset
    loader = SafeImageLoader(dataset: dataset, maxUnreadableFraction: maxUnreadableFraction, warn: warn)
  }

  public func batch(_ ids: [Int], size: Int) throws -> Tensor {
    if let idx = dataset as? IDXDataset { return idx.batch(ids, size: size) }
    let out = Tensor(uninitialized: [ids.count, 3, size, size])
    for (b, i) in ids.enumerated() {
      Transforms.normalize(Transforms.evaluation(try loader.load(i).image, size: size), into: out.data + b * 3 * size * size)
    }
    return out
  }

  public func labels(_ ids: [Int]) -> [Int] { ids.map { dataset.label($0) } }
  public var classes: Int { dataset.classNames.count }
}
