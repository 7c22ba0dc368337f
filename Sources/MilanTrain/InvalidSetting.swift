/// A setting (a flag, a configuration field, a file a command was pointed at) that a command other than pretraining
/// cannot work with. The message starts with the command and names the flag or file: "embed: ...", "eval: ...".
public struct InvalidSetting: Error, CustomStringConvertible, Equatable {
  public let message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}
