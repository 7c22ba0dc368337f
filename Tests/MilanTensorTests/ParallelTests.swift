// Parallel regions on the spinning worker pool (thread_pool.c): every part runs exactly once, on more than one
// thread when there is work for two, including regions started from several threads at once and regions nested in a
// part (those fall back to Dispatch); and the Dispatch path gives the same.
import CMilanKernels
import Foundation
import MilanTensor
import Testing

@Suite(.serialized) struct ParallelTests {
  /// Counts of each part's runs, filled by `Parallel.forEachChunk` over `count` items in chunks of at least `minChunk`.
  private func runs(_ count: Int, minChunk: Int, tasksPerThread: Int = 1) -> [Int] {
    let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
    hits.initialize(repeating: 0, count: count)
    defer { hits.deallocate() }
    nonisolated(unsafe) let h = hits
    Parallel.forEachChunk(count, minChunk: minChunk, tasksPerThread: tasksPerThread) { r in
      for i in r { h[i] += 1 }  // chunks are disjoint: each item written by one thread
    }
    return Array(UnsafeBufferPointer(start: hits, count: count))
  }

  @Test func everyItemRunsOnceOnThePoolAndOnDispatch() {
    let saved = Parallel.usesPool
    defer { Parallel.usesPool = saved }
    for pool in [true, false] {
      Parallel.usesPool = pool
      for (count, minChunk, tasks) in [(1, 1, 1), (2, 1, 1), (7, 1, 4), (1000, 1, 1), (1000, 3, 4), (100_000, 64, 2)] {
        let r = runs(count, minChunk: minChunk, tasksPerThread: tasks)
        let wrong = r.filter { $0 != 1 }.count
        #expect(wrong == 0, "pool \(pool): \(count) items, min chunk \(minChunk): \(wrong) ran other than once")
      }
    }
  }

  @Test func regionsFromSeveralThreadsAndNestedRegionsAllComplete() async {
    guard Parallel.threads >= 2 else { return }
    // Eight threads each start 200 regions of 16 parts; each part runs a nested region of 8 parts.
    let total = ManagedAtomicCounter()
    await withTaskGroup(of: Void.self) { group in
      for _ in 0..<8 {
        group.addTask {
          for _ in 0..<200 {
            Parallel.forEachChunk(16, minChunk: 1, tasksPerThread: 8) { r in
              for _ in r {
                Parallel.forEachChunk(8, minChunk: 1, tasksPerThread: 4) { inner in total.add(inner.count) }
              }
            }
          }
        }
      }
    }
    #expect(total.value == 8 * 200 * 16 * 8)
  }

  @Test func thePoolRunsPartsOnMoreThanOneThread() {
    guard Parallel.threads >= 2 else { return }
    // Parts that each take ~2 ms: with a second thread polling, the caller does not run all of them.
    let ids = ThreadIDs()
    Parallel.forEachChunk(8, minChunk: 1, tasksPerThread: 4) { _ in
      ids.insert(pthread_self())
      let end = Date().addingTimeInterval(0.002)
      while Date() < end {}
    }
    print("pool: 8 parts ran on \(ids.count) threads")
    #expect(ids.count >= 2)
  }
}

final class ManagedAtomicCounter: @unchecked Sendable {
  private let lock = NSLock()
  private var n = 0
  func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
  var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

final class ThreadIDs: @unchecked Sendable {
  private let lock = NSLock()
  private var set = Set<UInt>()
  func insert(_ t: pthread_t) { lock.lock(); set.insert(UInt(t)); lock.unlock() }
  var count: Int { lock.lock(); defer { lock.unlock() }; return set.count }
}
