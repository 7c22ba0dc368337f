// The `milan` command line. Thin: each subcommand parses options, builds a configuration and calls the library.
// Under mpirun (Open MPI) the training and feature-extraction commands run data-parallel: every rank runs the same
// command; a rank that fails aborts the job (the others may be waiting for it in a collective).
import ArgumentParser
import Foundation
import MilanTensor
import MilanTrain

@main
struct Milan: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "milan",
    abstract: "MILAN in Swift: masked image pretraining on language-assisted representations.",
    version: "0.1.0",
    subcommands: [Info.self, Inspect.self, Convert.self, Pretrain.self, Step.self, Eval.self, Knn.self, Linprobe.self,
                  Finetune.self, Embed.self, Ablate.self, Report.self])

  static func main() {
    var command: ParsableCommand
    do { command = try parseAsRoot() } catch { fail(error) }
    do {
      try command.run()
      ProcessGroup.ifCreated?.finalize()
    } catch {
      // A flag ArgumentParser could not read gets the usage lines; a value the command refused after reading its
      // flags gets its message alone (the message names the flag).
      if let v = error as? ValidationError { fail(error, message: "Error: \(v.message)") }
      fail(error)
    }
  }

  /// --help and --version end with status 0 as ArgumentParser prints them; every error — a bad flag, a bad value, a
  /// bad file, a failed run — prints its message and ends with status 1 (ArgumentParser's own default for usage
  /// errors would be 64). Under mpirun the failing rank aborts the others.
  static func fail(_ error: Error, message: String? = nil) -> Never {
    if let g = ProcessGroup.ifCreated, g.usesMPI, g.size > 1, !(error is CleanExit) {
      FileHandle.standardError.write(Data("rank \(g.rank): \(message ?? fullMessage(for: error))\n".utf8))
      g.abort(1)
    }
    if error is CleanExit || exitCode(for: error) == .success { exit(withError: error) }
    FileHandle.standardError.write(Data(((message ?? fullMessage(for: error)) + "\n").utf8))
    Foundation.exit(1)
  }
}

/// Options of the commands that compute (and may run under mpirun).
struct RuntimeOptions: ParsableArguments {
  @Option(help: "Worker threads of this process (default: the cores it may use, split evenly among the processes mpirun started on this machine; MILAN_THREADS also sets it).")
  var threads: Int?

  /// Applies --threads and joins the run's processes (MPI under mpirun; one process otherwise).
  func start() throws -> ProcessGroup {
    if let threads {
      guard threads > 0 else { throw ValidationError("--threads must be positive") }
      Parallel.threads = threads
    }
    let g = try ProcessGroup.current()
    if g.size > 1 {
      var host = [CChar](repeating: 0, count: 256)
      gethostname(&host, host.count)
      let names = try g.allGather(Data(String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                                                 as: UTF8.self).utf8)).map { String(decoding: $0, as: UTF8.self) }
      var perHost: [(String, Int)] = []
      for n in names {
        if let i = perHost.firstIndex(where: { $0.0 == n }) { perHost[i].1 += 1 } else { perHost.append((n, 1)) }
      }
      say("data-parallel: \(g.size) processes (Open MPI) on " + perHost.map { "\($0.0) (\($0.1))" }.joined(separator: ", ")
        + ", \(Parallel.threads) thread(s) each")
    }
    return g
  }
}

/// Writes a line to standard output unbuffered, so progress appears as it happens even when piped to a file. Under
/// mpirun only rank 0 speaks.
func say(_ line: String) {
  if let g = ProcessGroup.ifCreated, g.rank != 0 { return }
  FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
