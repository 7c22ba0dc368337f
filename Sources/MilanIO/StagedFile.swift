#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A file written in full under a temporary name next to its destination (`<path>.tmp-<pid>`) and fsync'ed, waiting
/// to be renamed over the destination by `commit()`.
///
/// Saving several files as one unit (a checkpoint's weights, optimizer state and training state) stages them all
/// first: a full disk or any other write error then happens before anything is renamed, so the previous set stays
/// complete and consistent (`StagedFile.commitAll`).
public struct StagedFile: Sendable {
  /// The destination.
  public let path: String
  /// Where the bytes are until `commit()`.
  public let tempPath: String

  /// Writes `chunks` in order to the temporary file and fsyncs it. On failure the temporary file is removed and
  /// `SafeTensorsError.writeFailed` (naming the destination, the operation and the OS error) is thrown.
  public static func stage(_ chunks: [[UInt8]], at url: URL) throws -> StagedFile {
    let path = url.path
    let tempPath = "\(path).tmp-\(getpid())"
    func failure(_ operation: String, _ err: Int32) -> SafeTensorsError {
      .writeFailed(path: path, tempPath: tempPath, operation: operation, errno: err)
    }
    let fd = open(tempPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    if fd < 0 { throw failure("open", errno) }
    var fdOpen = true
    var success = false
    defer {
      if fdOpen { close(fd) }
      if !success { unlink(tempPath) }
    }
    for chunk in chunks { try writeAll(fd, chunk) { throw failure("write", $0) } }
    if fsync(fd) != 0 { throw failure("fsync", errno) }
    fdOpen = false
    if close(fd) != 0 { throw failure("close", errno) }
    success = true
    return StagedFile(path: path, tempPath: tempPath)
  }

  /// Stages `data` (e.g. a JSON document).
  public static func stage(_ data: Data, at url: URL) throws -> StagedFile {
    try stage([[UInt8](data)], at: url)
  }

  /// Renames the temporary file over the destination (atomic on POSIX file systems), then fsyncs the directory
  /// (best effort). On failure the temporary file is removed.
  public func commit() throws {
    if rename(tempPath, path) != 0 {
      let err = errno
      unlink(tempPath)
      throw SafeTensorsError.writeFailed(path: path, tempPath: tempPath, operation: "rename", errno: err)
    }
    let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    let dfd = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_CLOEXEC)
    if dfd >= 0 {
      _ = fsync(dfd)
      close(dfd)
    }
  }

  /// Removes the temporary file; the destination is left as it was.
  public func discard() { unlink(tempPath) }

  /// Stages every file (`make` returns them in commit order), then commits them in order. If any staging fails,
  /// the files staged so far are discarded and nothing is renamed, so the destinations keep their previous contents.
  ///
  /// Between the staging and the renames a journal (`.milan-commit.json` beside the first file, listing every
  /// temporary file and its destination) is written and fsync'ed, and it is removed after the last rename. A process
  /// killed during the renames (kill -9, power loss) thus leaves the journal, and `recover(in:)` finishes the
  /// renames: the set is never left half old and half new. Killed before the journal, it leaves only temporary
  /// files, which `recover(in:)` removes (the previous set is untouched).
  public static func commitAll(_ make: [() throws -> StagedFile]) throws {
    var staged: [StagedFile] = []
    do {
      for m in make { staged.append(try m()) }
    } catch {
      for s in staged { s.discard() }
      throw error
    }
    guard let first = staged.first else { return }
    let dir = directory(of: first.path)
    let journalPath = dir + "/" + journalName
    do {
      let pairs = staged.map { ["temp": $0.tempPath, "path": $0.path] }
      let json = try JSONEncoder().encode(pairs)
      try StagedFile.stage(json, at: URL(fileURLWithPath: journalPath)).commit()
    } catch {
      for s in staged { s.discard() }
      throw error
    }
    testPause()
    for (i, s) in staged.enumerated() {
      do {
        try s.commit()
      } catch {
        for rest in staged[(i + 1)...] { rest.discard() }
        unlink(journalPath)
        throw error
      }
      testPause()
    }
    unlink(journalPath)
    fsyncDirectory(dir)
  }

  static let journalName = ".milan-commit.json"

  /// Finishes a commit a crash interrupted in `dir` (the journal's renames), and removes temporary files of
  /// processes that are gone. Returns what it did, one line per action (empty when there was nothing to do).
  @discardableResult
  public static func recover(in dir: URL) throws -> [String] {
    var done: [String] = []
    let journalPath = dir.path + "/" + journalName
    if let data = FileManager.default.contents(atPath: journalPath) {
      guard let pairs = try? JSONDecoder().decode([[String: String]].self, from: data) else {
        throw SafeTensorsError.writeFailed(path: journalPath, tempPath: journalPath, operation: "read the commit journal",
                                           errno: EINVAL)
      }
      for p in pairs {
        guard let temp = p["temp"], let path = p["path"] else { continue }
        if access(temp, F_OK) == 0 {
          if rename(temp, path) != 0 {
            throw SafeTensorsError.writeFailed(path: path, tempPath: temp, operation: "rename (recovery)", errno: errno)
          }
          done.append("finished the interrupted save of \(path)")
        }
      }
      fsyncDirectory(dir.path)
      unlink(journalPath)
    }
    // Temporary files of processes that no longer run: an interrupted staging (nothing was renamed).
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? [] {
      guard let r = name.range(of: ".tmp-", options: .backwards), let pid = Int32(name[r.upperBound...]),
            pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
      unlink(dir.path + "/" + name)
      done.append("removed \(name), left by an interrupted save")
    }
    return done
  }

  static func directory(of path: String) -> String {
    let d = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    return d.isEmpty ? "/" : d
  }

  static func fsyncDirectory(_ dir: String) {
    let dfd = open(dir, O_RDONLY | O_CLOEXEC)
    if dfd >= 0 {
      _ = fsync(dfd)
      close(dfd)
    }
  }

  /// `MILAN_TEST_COMMIT_PAUSE_MS`: a pause after the journal and after each rename, so a test can make a SIGKILL
  /// land inside a save (scripts/kill9.sh). Unset in normal use.
  static let pauseMicroseconds: UInt32 = {
    guard let s = ProcessInfo.processInfo.environment["MILAN_TEST_COMMIT_PAUSE_MS"], let ms = UInt32(s) else { return 0 }
    return ms * 1000
  }()

  static func testPause() { if pauseMicroseconds > 0 { usleep(pauseMicroseconds) } }
}

/// Writes all of `bytes` to `fd`, retrying on EINTR and short writes.
private func writeAll(_ fd: Int32, _ bytes: [UInt8], onError: (Int32) throws -> Never) throws {
  try bytes.withUnsafeBytes { buffer in
    var done = 0
    while done < buffer.count {
      let chunk = min(buffer.count - done, 1 << 30)
      #if canImport(Glibc)
      let n = Glibc.write(fd, buffer.baseAddress! + done, chunk)
      #elseif canImport(Musl)
      let n = Musl.write(fd, buffer.baseAddress! + done, chunk)
      #else
      let n = Darwin.write(fd, buffer.baseAddress! + done, chunk)
      #endif
      if n < 0 {
        let err = errno
        if err == EINTR { continue }
        try onError(err)
      }
      if n == 0 { try onError(EIO) }
      done += n
    }
  }
}
