// The processes of one run: a single process, or the ranks `mpirun` started (Open MPI, loaded at run time through
// CMilanMPI, so nothing MPI is linked and a machine without MPI builds and runs as before). MPI is initialised only
// when Open MPI's launcher says it started this process (OMPI_COMM_WORLD_SIZE in the environment); every MPI call
// goes through one serial queue, so callers on any thread never overlap in the library.
import CMilanMPI
import Foundation
import MilanTensor

public struct ProcessGroupError: Error, CustomStringConvertible {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

public final class ProcessGroup: @unchecked Sendable {
  public let rank: Int
  public let size: Int
  /// Whether MPI is in use (under mpirun, even with one rank).
  public let usesMPI: Bool
  let queue = DispatchQueue(label: "milan.mpi")

  init(rank: Int, size: Int, usesMPI: Bool) {
    self.rank = rank
    self.size = size
    self.usesMPI = usesMPI
  }

  /// One process, no MPI.
  public static let single = ProcessGroup(rank: 0, size: 1, usesMPI: false)

  nonisolated(unsafe) private static var cached: ProcessGroup?
  private static let lock = NSLock()

  /// The run's group: MPI's world under mpirun (initialised on first use), `single` otherwise.
  public static func current() throws -> ProcessGroup {
    try lock.withLock {
      if let cached { return cached }
      let env = ProcessInfo.processInfo.environment
      guard env["OMPI_COMM_WORLD_SIZE"] != nil else {
        cached = .single
        return .single
      }
      var err = [CChar](repeating: 0, count: 512)
      guard milan_mpi_load(env["MILAN_LIBMPI"], &err, err.count) == 0 else {
        throw ProcessGroupError("started by mpirun, but Open MPI's library cannot be loaded: \(cText(err)) "
          + "(install libopenmpi3, or set MILAN_LIBMPI to libmpi.so.40)")
      }
      var rank: Int32 = 0, size: Int32 = 0, provided: Int32 = 0
      let rc = milan_mpi_init(&rank, &size, &provided)
      guard rc == 0 else { throw ProcessGroupError("MPI_Init_thread failed: \(errorString(rc))") }
      guard provided >= 2 else {
        throw ProcessGroupError("MPI gives thread level \(provided); at least MPI_THREAD_SERIALIZED (2) is needed")
      }
      let g = ProcessGroup(rank: Int(rank), size: Int(size), usesMPI: true)
      cached = g
      return g
    }
  }

  /// The group if it was created (nil before `current()` ran).
  public static var ifCreated: ProcessGroup? { lock.withLock { cached } }

  static func errorString(_ code: Int32) -> String {
    var buf = [CChar](repeating: 0, count: 512)
    milan_mpi_error_string(code, &buf, buf.count)
    return cText(buf)
  }

  func check(_ rc: Int32, _ what: String) throws {
    guard rc == 0 else {
      throw ProcessGroupError("rank \(rank): \(what) failed: \(Self.errorString(rc)) (did another rank stop?)")
    }
  }

  /// In-place sum of `count` floats over every rank.
  public func allReduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
    guard size > 1 else { return }
    nonisolated(unsafe) let b = buffer
    try check(queue.sync { milan_mpi_allreduce_sum_f32(b, count) }, "all-reduce of \(count) floats")
  }

  public enum ReduceOp: Int32 { case sum = 0, max = 1, min = 2 }

  /// The reduction of `values` over every rank (float64, element by element).
  public func allReduce(_ values: [Double], _ op: ReduceOp) throws -> [Double] {
    guard size > 1 else { return values }
    var v = values
    let rc = queue.sync { v.withUnsafeMutableBufferPointer { milan_mpi_allreduce_f64($0.baseAddress, Int32($0.count), op.rawValue) } }
    try check(rc, "all-reduce")
    return v
  }

  /// `bytes` bytes of `root`'s buffer copied into every rank's.
  public func broadcast(_ buffer: UnsafeMutableRawPointer, bytes: Int, root: Int = 0) throws {
    guard size > 1, bytes > 0 else { return }
    nonisolated(unsafe) let b = buffer
    try check(queue.sync { milan_mpi_bcast(b, bytes, Int32(root)) }, "broadcast of \(bytes) bytes")
  }

  public func broadcast(_ t: Tensor, root: Int = 0) throws {
    try broadcast(UnsafeMutableRawPointer(t.data), bytes: t.count * 4, root: root)
  }

  /// Rank `root`'s data (any length) on every rank.
  public func broadcast(_ data: Data, root: Int = 0) throws -> Data {
    guard size > 1 else { return data }
    var n = [Double(data.count)]
    n = try allReduce(rank == root ? n : [0], .sum)
    var bytes = [UInt8](rank == root ? data : Data(count: Int(n[0])))
    try bytes.withUnsafeMutableBytes { try broadcast($0.baseAddress!, bytes: $0.count, root: root) }
    return Data(bytes)
  }

  public func barrier() throws {
    guard size > 1 else { return }
    try check(queue.sync { milan_mpi_barrier() }, "barrier")
  }

  /// Rows of a [n_r, ...] tensor from every rank, stacked in rank order: [Σ n_r, ...] on every rank.
  public func allGatherRows(_ local: Tensor, rowShape: [Int]) throws -> Tensor {
    let rowFloats = rowShape.reduce(1, *)
    guard size > 1 else { return local }
    let counts = try allReduceCounts(local.count / max(rowFloats, 1))
    let total = counts.reduce(0, +)
    let out = Tensor(uninitialized: [total] + rowShape)
    let bytes = counts.map { Int32($0 * rowFloats * 4) }
    var displs: [Int32] = [0]
    for c in bytes.dropLast() { displs.append(displs.last! + c) }
    guard Int(displs.last!) + Int(bytes.last!) <= Int(Int32.max) else {
      throw ProcessGroupError("all-gather of \(total) rows of \(rowFloats) floats exceeds 2 GiB; use fewer images")
    }
    nonisolated(unsafe) let src = local.data, dst = out.data
    let rc = queue.sync {
      milan_mpi_allgatherv(src, bytes[rank], dst, bytes, displs)
    }
    try check(rc, "all-gather")
    return out
  }

  /// Every rank's `data`, in rank order.
  public func allGather(_ data: Data) throws -> [Data] {
    guard size > 1 else { return [data] }
    let counts = try allReduceCounts(data.count)
    var displs: [Int32] = [0]
    for c in counts.dropLast() { displs.append(displs.last! + Int32(c)) }
    var out = [UInt8](repeating: 0, count: counts.reduce(0, +))
    let bytes = counts.map { Int32($0) }
    let send = [UInt8](data)
    let rc = queue.sync {
      send.withUnsafeBytes { s in
        out.withUnsafeMutableBytes { o in milan_mpi_allgatherv(s.baseAddress, Int32(send.count), o.baseAddress, bytes, displs) }
      }
    }
    try check(rc, "all-gather")
    return (0..<size).map { r in Data(out[Int(displs[r])..<(Int(displs[r]) + counts[r])]) }
  }

  /// Every rank's `n`, in rank order.
  func allReduceCounts(_ n: Int) throws -> [Int] {
    var v = [Double](repeating: 0, count: size)
    v[rank] = Double(n)
    return try allReduce(v, .sum).map { Int($0) }
  }

  /// A log sink split for this process: warnings from every process (prefixed by the rank after rank 0), progress
  /// from rank 0 only.
  public func logs(_ sink: @escaping @Sendable (String) -> Void)
    -> (warn: @Sendable (String) -> Void, lead: @Sendable (String) -> Void) {
    if rank == 0 { return (sink, sink) }
    let r = rank
    return ({ sink("rank \(r): " + $0) }, { _ in })
  }

  /// The contiguous share of `0..<count` this rank takes (the first `count % size` ranks take one more).
  public func shard(_ count: Int) -> Range<Int> {
    let base = count / size, extra = count % size
    let lo = rank * base + min(rank, extra)
    return lo..<(lo + base + (rank < extra ? 1 : 0))
  }

  /// Ends the job on every rank (after an error on this one: the others may be waiting in a collective).
  public func abort(_ code: Int32) -> Never {
    if usesMPI { _ = milan_mpi_abort(code) }
    exit(code)
  }

  /// MPI_Finalize (after the last collective of the run).
  public func finalize() {
    guard usesMPI else { return }
    _ = queue.sync { milan_mpi_finalize() }
  }
}

/// A NUL-terminated C buffer as text.
func cText(_ buf: [CChar]) -> String {
  String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
