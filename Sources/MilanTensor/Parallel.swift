// Splitting work across the cores ourselves (OpenBLAS runs with one thread inside each split): on the 2-core target
// machine this is on par with OpenBLAS's own threading for large GEMMs and clearly better for many small ones.
import Dispatch
import Foundation

public enum Parallel {
  /// Worker count: `MILAN_THREADS` if set, else the active processor count.
  nonisolated(unsafe) public static var threads: Int = {
    if let s = ProcessInfo.processInfo.environment["MILAN_THREADS"], let n = Int(s), n > 0 { return n }
    return max(1, ProcessInfo.processInfo.activeProcessorCount)
  }()

  /// Runs `body(chunkRange)` over `0..<count` split into at most `threads × tasksPerThread` contiguous chunks, each
  /// holding at least `minChunk` items (so small jobs run inline without dispatch overhead). With
  /// `tasksPerThread > 1` the chunks are handed out dynamically, so a core slowed by another process does less of
  /// the work (the machines this runs on are shared).
  @inlinable
  public static func forEachChunk(_ count: Int, minChunk: Int = 1, tasksPerThread: Int = 1,
                                  _ body: (Range<Int>) -> Void) {
    if count <= 0 { return }
    let parts = min(threads * max(tasksPerThread, 1), max(1, count / max(minChunk, 1)))
    if parts <= 1 {
      body(0..<count)
      return
    }
    withoutActuallyEscaping(body) { body in
      let box = UncheckedBox(body)
      DispatchQueue.concurrentPerform(iterations: parts) { p in
        let lo = count * p / parts, hi = count * (p + 1) / parts
        if lo < hi { box.value(lo..<hi) }
      }
    }
  }

  /// Like `forEachChunk`, but also passes the chunk's index (0..<parts), e.g. to pick a per-chunk scratch buffer.
  /// Returns the number of parts used (`parts(count, minChunk:, tasksPerThread:)`).
  @inlinable
  @discardableResult
  public static func forEachChunkIndexed(_ count: Int, minChunk: Int = 1, tasksPerThread: Int = 1,
                                         _ body: (Int, Range<Int>) -> Void) -> Int {
    if count <= 0 { return 0 }
    let parts = min(threads * max(tasksPerThread, 1), max(1, count / max(minChunk, 1)))
    if parts <= 1 {
      body(0, 0..<count)
      return 1
    }
    withoutActuallyEscaping(body) { body in
      let box = UncheckedBox(body)
      DispatchQueue.concurrentPerform(iterations: parts) { p in
        let lo = count * p / parts, hi = count * (p + 1) / parts
        if lo < hi { box.value(p, lo..<hi) }
      }
    }
    return parts
  }

  /// Number of chunks `forEachChunk(count, minChunk:)` would use.
  @inlinable
  public static func parts(_ count: Int, minChunk: Int = 1, tasksPerThread: Int = 1) -> Int {
    min(threads * max(tasksPerThread, 1), max(1, count / max(minChunk, 1)))
  }
}

/// Carries a non-Sendable value (closures over raw pointers) into `concurrentPerform`; the callers guarantee that
/// chunks touch disjoint memory.
@usableFromInline
struct UncheckedBox<T>: @unchecked Sendable {
  @usableFromInline let value: T
  @usableFromInline init(_ value: T) { self.value = value }
}
