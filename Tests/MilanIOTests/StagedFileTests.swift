import Foundation
import MilanIO
import Testing

/// Staged writes: nothing reaches the destination before `commit`, and a set commits only when every file staged.
@Suite struct StagedFileTests {
  func scratch(_ name: String) throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("milan-staged-\(name)-\(getpid())")
    try? FileManager.default.removeItem(at: dir)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
  }

  @Test func stageThenCommitOrDiscard() throws {
    let dir = try scratch("single")
    defer { try? FileManager.default.removeItem(at: dir) }
    let dest = dir.appendingPathComponent("a.json")
    try Data("old".utf8).write(to: dest)
    let staged = try StagedFile.stage(Data("new".utf8), at: dest)
    #expect(try Data(contentsOf: dest) == Data("old".utf8), "destination changed before commit")
    #expect(FileManager.default.fileExists(atPath: staged.tempPath))
    staged.discard()
    #expect(!FileManager.default.fileExists(atPath: staged.tempPath))
    #expect(try Data(contentsOf: dest) == Data("old".utf8))
    try StagedFile.stage(Data("new".utf8), at: dest).commit()
    #expect(try Data(contentsOf: dest) == Data("new".utf8))
  }

  @Test func aSetWithOneUnwritableFileChangesNothing() throws {
    let dir = try scratch("set")
    defer { try? FileManager.default.removeItem(at: dir) }
    let a = dir.appendingPathComponent("a.bin"), b = dir.appendingPathComponent("sub/b.bin")  // sub/ does not exist
    try Data([1]).write(to: a)
    do {
      try StagedFile.commitAll([
        { try StagedFile.stage([[2, 2]], at: a) },
        { try StagedFile.stage([[3]], at: b) },
      ])
      Issue.record("staging into a missing folder succeeded")
    } catch let e as SafeTensorsError {
      #expect(e.description.contains("sub/b.bin") && e.description.contains("open failed"), "\(e)")
    }
    #expect(try Data(contentsOf: a) == Data([1]), "a.bin was replaced although b.bin failed")
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["a.bin"], "temporary files left")
  }
}
