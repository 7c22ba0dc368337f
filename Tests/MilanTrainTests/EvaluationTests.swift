// `milan eval` end to end on the tiny image folder (a checkpoint pretrained on it with the CLIP fixture teacher):
// every row is produced and scored, the table and the JSON report are complete; semantic-aware probing keeps the
// patches the teacher attends to most.
import Foundation
import MilanModels
import MilanTensor
import MilanTestSupport
import MilanTrain
import Testing

@Suite(.serialized) struct EvaluationTests {
  @Test func evaluatesACheckpointAgainstBaselines() throws {
    let pre = tempDir("eval-pre")
    defer { try? FileManager.default.removeItem(at: pre) }
    _ = try Pretrainer(folderConfig(pre), teacher: try clipFixtureTeacher(), log: { _ in }).run()
    var c = EvaluationConfig(checkpoint: pre.path)  // the run's teacher was in memory: its baseline is skipped
    c.teacherPath = "/nonexistent/teacher.onnx"   // an explicit teacher file must exist
    #expect(throws: TeacherFileError.self) { _ = try Evaluation.run(c, log: { _ in }) }
    c.teacherPath = nil
    c.trainImages = 7
    c.testImages = 7
    c.probe.epochs = 5
    c.probe.warmupEpochs = 1
    c.probe.blr = 16
    let lines = Lines()
    // One corrupt file among 7: stops at the default limit, is skipped and counted with a looser one.
    #expect(throws: (any Error).self) { _ = try Evaluation.run(c, log: { lines.add($0) }) }
    c.maxUnreadableFraction = 0.2
    let r = try Evaluation.run(c, log: { lines.add($0) })
    #expect(lines.all.contains { $0.contains("records no teacher file") })
    #expect(r.rows.map(\.name.first) == ["M", "r", "r"], "\(r.rows.map(\.name))")  // MILAN, random, raw pixels
    for row in r.rows {
      for v in [row.knnTop1, row.probeTop1, row.probeTop5] {
        #expect(v.map { $0 >= 0 && $0 <= 1 } == true, "\(row.name): \(String(describing: v))")
      }
      #expect(row.probeTop5! >= row.probeTop1!)
    }
    #expect(r.unreadableImages == 2 && r.trainImages == 7 && r.testImages == 7)  // once per split
    #expect(r.table.split(separator: "\n").count == 2 + r.rows.count)
    let decoded = try JSONDecoder().decode(EvaluationReport.self, from: JSONEncoder().encode(r))
    #expect(decoded.rows.count == r.rows.count && decoded.rows[0].knnTop1 == r.rows[0].knnTop1)
  }

  @Test func topPatchesFollowTheTeachersAttention() {
    let attn = Tensor(shape: [2, 6], values: [0.1, 0.4, 0.05, 0.3, 0.1, 0.05, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    let keep = Features.topPatches(attn, fraction: 0.5)
    #expect(keep.shape == [2, 3])
    #expect(Array(keep.values[0..<3]) == [1, 3, 0])   // ties broken by position
    #expect(Array(keep.values[3..<6]) == [0, 1, 2])
  }
}
