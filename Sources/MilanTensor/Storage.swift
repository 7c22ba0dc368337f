// Reference-counted, 64-byte aligned float buffers with a size-classed free list.
//
// Training allocates the same activation and gradient sizes every step. Fresh large allocations go through mmap and
// page-fault on first touch, which costs more than the kernels themselves at ViT sizes, so released buffers are kept
// in a pool keyed by size class and handed out again. The pool is bounded (`BufferPool.maxCachedBytes`).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

public final class TensorStorage: @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Float>
  /// Elements the buffer holds (its size class), at least the requested count.
  public let capacity: Int

  init(pointer: UnsafeMutablePointer<Float>, capacity: Int) {
    self.pointer = pointer
    self.capacity = capacity
  }

  /// A buffer of at least `count` elements; its contents are undefined unless `zeroed`.
  public static func allocate(count: Int, zeroed: Bool) -> TensorStorage {
    let s = BufferPool.shared.take(count: count)
    if zeroed { s.pointer.initialize(repeating: 0, count: max(count, 0)) }
    return s
  }

  deinit { BufferPool.shared.give(pointer: pointer, capacity: capacity) }
}

/// Size-classed cache of released buffers (thread-safe).
public final class BufferPool: @unchecked Sendable {
  public static let shared = BufferPool()
  /// Upper bound on the bytes kept for reuse; buffers beyond it are freed.
  public var maxCachedBytes: Int {
    get { lock.lock(); defer { lock.unlock() }; return limit }
    set { lock.lock(); limit = newValue; trimLocked(); lock.unlock() }
  }

  private let lock = NSLock()
  private var bins: [Int: [UnsafeMutablePointer<Float>]] = [:]
  private var cached = 0
  /// `MILAN_POOL_MB` overrides the default cap of 6 GiB of cached (released, reusable) buffers. A smaller cap lowers
  /// the resident memory and costs page faults on re-allocation (paper-config MILAN step: 6 GiB 3.77 GB RSS, 1 GiB
  /// 3.55 GB and about 8 % slower, 256 MiB 3.33 GB and about 28 % slower).
  private var limit: Int = {
    if let s = ProcessInfo.processInfo.environment["MILAN_POOL_MB"], let mb = Int(s), mb >= 0 { return mb << 20 }
    return 6 << 30
  }()
  /// Whether buffers of at least `hugePageThreshold` bytes are aligned to 2 MiB and marked for transparent huge pages
  /// (`madvise(MADV_HUGEPAGE)`, Linux; the kernel's THP mode `madvise` or `always` honours it). A head's columns of a
  /// row-major activation cross a 4 KiB page, and a TLB entry, at every row; with 2 MiB pages they do not. Paper step
  /// with cached targets, alternating processes: best 2153 / 2144 / 2138 vs 2176 / 2172 / 2177 ms, the same maximum
  /// RSS (docs/benchmarks.md). 2 MiB as the threshold was slower than 4. `MILAN_HUGEPAGES=0` turns it off (A/B runs).
  nonisolated(unsafe) public static var usesHugePages: Bool =
    ProcessInfo.processInfo.environment["MILAN_HUGEPAGES"] != "0"
  static let hugePageThreshold = 4 << 20

  private var liveBytes = 0
  private var peak = 0

  /// Bytes currently handed out, and the most ever handed out at once (peak tensor memory).
  public var stats: (live: Int, peak: Int, cached: Int) {
    lock.lock(); defer { lock.unlock() }
    return (liveBytes, peak, cached)
  }

  public func resetPeak() {
    lock.lock(); peak = liveBytes; lock.unlock()
  }

  /// Frees every cached buffer.
  public func drain() {
    lock.lock()
    for (_, list) in bins { for p in list { Self.release(p) } }
    bins.removeAll()
    cached = 0
    lock.unlock()
  }

  /// Size classes: exact below 1 Ki elements (rounded to 16), else rounded up to 1/16 steps of a power of two
  /// (at most 6.25 % padding).
  static func sizeClass(_ n: Int) -> Int {
    if n <= 1024 { return max(16, (n + 15) & ~15) }
    let hb = Int.bitWidth - n.leadingZeroBitCount - 1  // floor(log2 n)
    let step = 1 << (hb - 4)
    return (n + step - 1) / step * step
  }

  /// The capacity a request of `n` elements receives (exposed for tests).
  public static func sizeClassForTesting(_ n: Int) -> Int { sizeClass(n) }

  func take(count: Int) -> TensorStorage {
    let cap = Self.sizeClass(count)
    lock.lock()
    liveBytes += cap * 4
    if liveBytes > peak { peak = liveBytes }
    if var list = bins[cap], let p = list.popLast() {
      bins[cap] = list.isEmpty ? nil : list
      cached -= cap * 4
      lock.unlock()
      return TensorStorage(pointer: p, capacity: cap)
    }
    // Best fit among larger cached buffers (up to 1.5× the class): a step's allocation pattern changes between the
    // teacher forward, the student forward and the backward, and exact-class reuse alone would keep a separate set of
    // buffers for each phase resident.
    if cap >= 1 << 14, let fit = bins.keys.filter({ $0 > cap && $0 <= cap + cap / 2 }).min(), var list = bins[fit],
       let p = list.popLast() {
      bins[fit] = list.isEmpty ? nil : list
      cached -= fit * 4
      liveBytes += (fit - cap) * 4
      if liveBytes > peak { peak = liveBytes }
      lock.unlock()
      return TensorStorage(pointer: p, capacity: fit)
    }
    lock.unlock()
    var raw: UnsafeMutableRawPointer? = nil
    let bytes = cap * 4
    let huge = Self.usesHugePages && bytes >= Self.hugePageThreshold
    let rc = posix_memalign(&raw, huge ? 2 << 20 : 64, bytes)
    guard rc == 0, let r = raw else {
      fatalError("MilanTensor: out of memory allocating \(bytes) bytes")
    }
    #if os(Linux)
    // A hint only: where transparent huge pages are off or unavailable the call fails or does nothing, and the buffer
    // keeps 4 KiB pages.
    if huge { _ = madvise(r, bytes, MADV_HUGEPAGE) }
    #endif
    return TensorStorage(pointer: r.bindMemory(to: Float.self, capacity: cap), capacity: cap)
  }

  func give(pointer: UnsafeMutablePointer<Float>, capacity: Int) {
    lock.lock()
    liveBytes -= capacity * 4
    if cached + capacity * 4 <= limit {
      bins[capacity, default: []].append(pointer)
      cached += capacity * 4
      lock.unlock()
    } else {
      lock.unlock()
      Self.release(pointer)
    }
  }

  private func trimLocked() {
    while cached > limit, let key = bins.keys.max(), var list = bins[key], let p = list.popLast() {
      Self.release(p)
      cached -= key * 4
      bins[key] = list.isEmpty ? nil : list
    }
  }

  private static func release(_ p: UnsafeMutablePointer<Float>) {
    #if canImport(Glibc)
    Glibc.free(UnsafeMutableRawPointer(p))
    #else
    Darwin.free(UnsafeMutableRawPointer(p))
    #endif
  }
}
