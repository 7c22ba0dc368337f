// Splitting work across the cores ourselves (OpenBLAS runs with one thread inside each split): on the 2-core target
// machine this is on par with OpenBLAS's own threading for large GEMMs and clearly better for many small ones.
import CMilanKernels
import Dispatch
import Foundation

public enum Parallel {
  /// Worker count: `MILAN_THREADS` if set, else the cores this process may use divided by the processes of the same
  /// job on this machine (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE under mpirun; 1 otherwise). At most this many
  /// threads ever run a split at once.
  nonisolated(unsafe) public static var threads: Int = defaultThreads()

  public static func defaultThreads() -> Int {
    let env = ProcessInfo.processInfo.environment
    if let s = env["MILAN_THREADS"], let n = Int(s), n > 0 { return n }
    let local = env["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap { Int($0) } ?? 1
    return max(1, usableCores / max(local, 1))
  }

  /// Cores in this process's affinity mask (what a cgroup or `taskset` leaves it), else the online count.
  public static var usableCores: Int {
    let n = Int(milan_usable_cores())
    return n > 0 ? n : max(1, ProcessInfo.processInfo.activeProcessorCount)
  }

  /// Runs `body(part)` for every part in `0..<parts` on at most `threads` threads at once; parts are handed out one
  /// by one, so a core slowed by another process does less of the work.
  @usableFromInline
  static func run(parts: Int, _ body: (Int) -> Void) {
    if milan_flop_counting() != 0 {  // a counting thread's region counts on every thread that runs its parts
      withoutActuallyEscaping(body) { body in
        let counted: (Int) -> Void = { part in
          let was = milan_flop_counting()
          milan_flop_counting_set(1)
          body(part)
          milan_flop_counting_set(was)
        }
        distribute(parts: parts, counted)
      }
      return
    }
    distribute(parts: parts, body)
  }

  private static func distribute(parts: Int, _ body: (Int) -> Void) {
    let workers = min(threads, parts)
    if workers <= 1 {
      for p in 0..<parts { body(p) }
      return
    }
    if usesPool && runOnPool(parts: parts, body) { return }
    withoutActuallyEscaping(body) { body in
      let box = UncheckedBox(body)
      if workers == parts {
        DispatchQueue.concurrentPerform(iterations: parts) { box.value($0) }
        return
      }
      let next = PartCounter(parts)
      DispatchQueue.concurrentPerform(iterations: workers) { _ in
        while let p = next.take() { box.value(p) }
      }
    }
  }

  /// Whether parallel regions run on the project's spinning worker pool (`milan_pool_run`, thread_pool.c) rather than
  /// on Dispatch; `MILAN_WORKER_POOL=0` selects Dispatch (A/B runs). The pool's workers poll for the next region for
  /// a few hundred microseconds before sleeping, so back-to-back regions (a training step issues hundreds) do not
  /// wait for an OS wake-up. A region started while another runs (another thread's, or nested) uses Dispatch.
  nonisolated(unsafe) public static var usesPool: Bool =
    ProcessInfo.processInfo.environment["MILAN_WORKER_POOL"] != "0"

  private static func runOnPool(parts: Int, _ body: (Int) -> Void) -> Bool {
    withoutActuallyEscaping(body) { body in
      var fn = body
      return withUnsafeMutablePointer(to: &fn) { ctx in
        milan_pool_run(parts, Int32(clamping: threads), { ctx, part in
          ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(part)
        }, ctx) != 0
      }
    }
  }

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
    run(parts: parts) { p in
      let lo = count * p / parts, hi = count * (p + 1) / parts
      if lo < hi { body(lo..<hi) }
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
    run(parts: parts) { p in
      let lo = count * p / parts, hi = count * (p + 1) / parts
      if lo < hi { body(p, lo..<hi) }
    }
    return parts
  }

  /// A sum over `0..<count` (a reduction dimension, e.g. the tokens of a weight gradient) split across the threads in
  /// parts of at least `minChunk`, so that no part has to repeat another's work on the output. `body(part, range,
  /// destination, ld)` computes one part's [rows, cols] result: part 0 straight into `out` (rows `ld` apart; the body
  /// decides whether it overwrites or accumulates), the others into scratch (rows `cols` apart, to be overwritten),
  /// which is then added to `out` in part order.
  static func forEachPartialSum(_ count: Int, minChunk: Int, rows: Int, cols: Int,
                                into out: UnsafeMutablePointer<Float>, ld: Int,
                                _ body: (Int, Range<Int>, UnsafeMutablePointer<Float>, Int) -> Void) {
    let parts = self.parts(count, minChunk: minChunk)
    let partial = Tensor(uninitialized: [max(parts - 1, 0) * rows * cols])
    nonisolated(unsafe) let out = out, pp = partial.data
    forEachChunkIndexed(count, minChunk: minChunk) { part, r in
      if part == 0 {
        body(0, r, out, ld)
      } else {
        body(part, r, pp + (part - 1) * rows * cols, cols)
      }
    }
    for part in 1..<max(parts, 1) {
      let src = pp + (part - 1) * rows * cols
      if ld == cols {
        Kernels.axpy(1, x: src, y: out, count: rows * cols)
      } else {
        for i in 0..<rows { Kernels.axpy(1, x: src + i * cols, y: out + i * ld, count: cols) }
      }
    }
  }

  /// Number of chunks `forEachChunk(count, minChunk:)` would use.
  @inlinable
  public static func parts(_ count: Int, minChunk: Int = 1, tasksPerThread: Int = 1) -> Int {
    min(threads * max(tasksPerThread, 1), max(1, count / max(minChunk, 1)))
  }
}

/// Hands out part numbers 0..<count once each, to whichever worker asks first.
@usableFromInline
final class PartCounter: @unchecked Sendable {
  let count: Int
  var next = 0
  let lock = NSLock()
  @usableFromInline init(_ count: Int) { self.count = count }
  @usableFromInline func take() -> Int? {
    lock.lock()
    defer { lock.unlock() }
    guard next < count else { return nil }
    next += 1
    return next - 1
  }
}

/// Carries a non-Sendable value (closures over raw pointers) into `concurrentPerform`; the callers guarantee that
/// chunks touch disjoint memory.
@usableFromInline
struct UncheckedBox<T>: @unchecked Sendable {
  @usableFromInline let value: T
  @usableFromInline init(_ value: T) { self.value = value }
}
