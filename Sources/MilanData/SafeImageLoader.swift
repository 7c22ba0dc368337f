// Reading training images without losing a run to one bad file: an image that cannot be decoded is reported once,
// remembered, counted, and replaced by the next readable image, so batches keep their size. If more than the
// allowed fraction of the dataset turns out unreadable, loading stops with an error that says how many failed and
// names the last one.
import Foundation

public enum DataLoadError: Error, CustomStringConvertible, Equatable {
  case tooManyUnreadable(failed: Int, total: Int, allowed: Int, last: String)
  case nothingReadable(total: Int)

  public var description: String {
    switch self {
    case .tooManyUnreadable(let f, let t, let a, let last):
      return "data: \(f) of \(t) images could not be read (at most \(a) allowed: raise maxUnreadableFraction, `--max-unreadable` on the command line, or fix the files). "
        + "Last failure: \(last)"
    case .nothingReadable(let t): return "data: none of the \(t) images could be read"
    }
  }
}

public final class SafeImageLoader: @unchecked Sendable {
  public let dataset: any ImageDataset
  /// Unreadable images tolerated before loading fails: floor(fraction · count).
  public let allowedFailures: Int
  let warn: @Sendable (String) -> Void
  private let lock = NSLock()
  private var bad: [Int: String] = [:]

  public init(dataset: any ImageDataset, maxUnreadableFraction: Double = 0.01,
              warn: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }) {
    self.dataset = dataset
    allowedFailures = Int((maxUnreadableFraction * Double(dataset.count)).rounded(.down))
    self.warn = warn
  }

  /// Distinct images found unreadable so far.
  public var failureCount: Int { lock.withLock { bad.count } }
  public var failures: [Int: String] { lock.withLock { bad } }

  /// Image `i`, or — if it is unreadable — the next readable one (cyclically). Returns the index actually used.
  public func load(_ i: Int) throws -> (index: Int, image: DecodedImage) {
    let n = dataset.count
    for step in 0..<n {
      let j = (i + step) % n
      if lock.withLock({ bad[j] != nil }) { continue }
      do {
        return (j, try dataset.load(j))
      } catch {
        let reason = String(describing: error)
        let count: Int = lock.withLock {
          bad[j] = reason
          return bad.count
        }
        warn("warning: skipping unreadable image (\(count) so far): \(reason)")
        if count > allowedFailures {
          throw DataLoadError.tooManyUnreadable(failed: count, total: n, allowed: allowedFailures, last: reason)
        }
      }
    }
    throw DataLoadError.nothingReadable(total: n)
  }
}

/// Runs `produce(k)` for k = start, start + 1, … one item ahead on a background thread, so decoding and augmenting
/// the next batch overlaps the current training step. Items are produced in order; `next()` returns them in order.
public final class Prefetcher<T>: @unchecked Sendable {
  let produce: @Sendable (Int) throws -> T
  let end: Int
  private var nextIndex: Int
  private var pending: (sem: DispatchSemaphore, box: ResultBox)?
  private let queue = DispatchQueue(label: "milan.prefetch")

  final class ResultBox: @unchecked Sendable { var result: Result<T, Error>? }

  public init(from start: Int, to end: Int, produce: @escaping @Sendable (Int) throws -> T) {
    self.produce = produce
    self.end = end
    nextIndex = start
    launch()
  }

  private func launch() {
    guard nextIndex < end else { pending = nil; return }
    let k = nextIndex, sem = DispatchSemaphore(value: 0), box = ResultBox()
    let produce = self.produce
    queue.async {
      box.result = Result { try produce(k) }
      sem.signal()
    }
    pending = (sem, box)
  }

  /// The next item (waits for it), starting the one after in the background.
  public func next() throws -> T {
    guard let p = pending else { preconditionFailure("Prefetcher: no items left") }
    p.sem.wait()
    nextIndex += 1
    launch()
    return try p.box.result!.get()
  }

  deinit { pending?.sem.wait() }
}
