// Data-parallel gradient averaging as PyTorch DDP does it: the trainable parameters, in the reverse of their
// declaration order (roughly the order backward finishes them), are packed into buckets of about `bucketBytes`;
// as soon as every gradient of a bucket is final (the autograd walk reports each leaf) the bucket is summed over
// all ranks on the MPI queue while backward goes on; `finish()` waits for the rest, divides by the rank count and
// writes the averages back. Every rank builds the same buckets and launches them in the same order (the graphs are
// the same), as MPI's collectives require.
import CMilanMPI
import Dispatch
import Foundation
import MilanAutograd
import MilanTensor

public final class GradientAllReduce: @unchecked Sendable {
  final class Bucket: @unchecked Sendable {
    var members: [(Parameter, Int)] = []  // parameter, offset in `buffer`
    var buffer = Tensor(zeros: [0])
    var remaining = 0
    var filled = Set<ObjectIdentifier>()
    var launched = false
    var done = DispatchSemaphore(value: 0)
    var seconds = 0.0
    var error: Error?
  }

  /// What the last `finish()` measured.
  public struct Timing: Sendable {
    /// Seconds the all-reduces ran (on the MPI queue).
    public var reduce: Double
    /// Seconds `finish()` waited for them after backward ended.
    public var waited: Double
    /// The part of the all-reduce time spent while backward was still running.
    public var hiddenFraction: Double { reduce > 0 ? max(0, 1 - waited / reduce) : 1 }
  }

  let group: ProcessGroup
  let buckets: [Bucket]
  let place: [ObjectIdentifier: (Bucket, Int)]
  public private(set) var last = Timing(reduce: 0, waited: 0)

  public init(group: ProcessGroup, parameters: [Parameter], bucketBytes: Int = 25 << 20) {
    self.group = group
    var buckets: [Bucket] = []
    var place: [ObjectIdentifier: (Bucket, Int)] = [:]
    var current = Bucket(), size = 0
    for p in parameters.reversed() {
      if size > 0 && (size + p.count) * 4 > bucketBytes {
        current.buffer = Tensor(zeros: [size])
        buckets.append(current)
        current = Bucket()
        size = 0
      }
      current.members.append((p, size))
      place[ObjectIdentifier(p)] = (current, size)
      size += p.count
    }
    if size > 0 {
      current.buffer = Tensor(zeros: [size])
      buckets.append(current)
    }
    self.buckets = buckets
    self.place = place
    reset()
  }

  public var bucketCount: Int { buckets.count }

  func reset() {
    for b in buckets {
      b.remaining = b.members.count
      b.filled.removeAll(keepingCapacity: true)
      b.launched = false
      b.done = DispatchSemaphore(value: 0)
      b.seconds = 0
      b.error = nil
    }
  }

  /// The autograd hook: copies a final gradient into its bucket and launches the bucket when it is complete.
  public func leafReady(_ v: Variable) {
    guard let (bucket, offset) = place[ObjectIdentifier(v)], !bucket.filled.contains(ObjectIdentifier(v)) else { return }
    copyIn(v, bucket, offset)
    if bucket.remaining == 0 { launch(bucket) }
  }

  func copyIn(_ v: Variable, _ bucket: Bucket, _ offset: Int) {
    bucket.filled.insert(ObjectIdentifier(v))
    let dst = bucket.buffer.data + offset
    if let g = v.grad { dst.update(from: g.data, count: g.count) } else { dst.update(repeating: 0, count: v.count) }
    bucket.remaining -= 1
  }

  func launch(_ bucket: Bucket) {
    bucket.launched = true
    let group = self.group
    group.queue.async {
      let t0 = DispatchTime.now().uptimeNanoseconds
      let rc = milanAllReduce(bucket.buffer)
      bucket.seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
      if rc != 0 {
        bucket.error = ProcessGroupError("rank \(group.rank): gradient all-reduce failed: "
          + "\(ProcessGroup.errorString(rc)) (did another rank stop?)")
      }
      bucket.done.signal()
    }
  }

  /// After backward: launches the buckets whose parameters got no gradient this step (zeros), waits for every
  /// all-reduce, and sets each parameter's gradient to the average over the ranks.
  public func finish() throws {
    let t0 = DispatchTime.now().uptimeNanoseconds
    for b in buckets where !b.launched {
      for (p, offset) in b.members where !b.filled.contains(ObjectIdentifier(p)) { copyIn(p, b, offset) }
      launch(b)
    }
    var reduce = 0.0
    var firstError: Error?
    for b in buckets {
      b.done.wait()
      reduce += b.seconds
      if firstError == nil { firstError = b.error }
    }
    let waited = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
    if let firstError { throw firstError }
    let scale = 1 / Float(group.size)
    for b in buckets {
      for (p, offset) in b.members {
        let g = p.gradBuffer()
        let src = b.buffer.data + offset
        for i in 0..<p.count { g.data[i] = src[i] * scale }
      }
    }
    last = Timing(reduce: reduce, waited: waited)
    reset()
  }
}

/// In-place float sum of a tensor over the ranks (called on the MPI queue).
func milanAllReduce(_ t: Tensor) -> Int32 { milan_mpi_allreduce_sum_f32(t.data, t.count) }
