// Progress of a long pass (teacher targets, feature extraction): a line at most every few seconds, so a pass that
// takes minutes is never silent, and nothing for a pass that ends quickly.
import Foundation

public final class ProgressLog: @unchecked Sendable {
  let label: String
  let total: Int
  let interval: TimeInterval
  let scale: Int
  let log: (String) -> Void
  let start = Date()
  var last: Date
  public private(set) var done = 0
  /// Items counted as done without work (e.g. rows taken from a cache): not part of the rate.
  var skipped = 0

  /// `scale`: processes sharing the pass (each logs its own share × scale, as rank 0 speaks for all).
  public init(_ label: String, total: Int, every interval: TimeInterval = 5, scale: Int = 1,
              log: @escaping (String) -> Void) {
    self.label = label
    self.total = total
    self.interval = interval
    self.scale = max(scale, 1)
    self.log = log
    last = start
  }

  /// Counts `n` items done without work (taken from a cache): they move the count, not the rate.
  public func skip(by n: Int) {
    done += n
    skipped += n
  }

  public func advance(by n: Int) {
    done += n
    let now = Date()
    guard now.timeIntervalSince(last) >= interval, done < total else { return }
    last = now
    log(String(format: "%@ %d/%d (%.0f images/s)", label, done * scale, total * scale,
               Double(done - skipped) / now.timeIntervalSince(start) * Double(scale)))
  }
}
