// Image datasets: the ImageNet-style folder `root/<class>/<image>` (classes are the sorted sub-folder names, as
// torchvision's ImageFolder) and, through the same protocol, IDX files. Images are decoded on demand.
import Foundation

/// A labelled collection of images that can be decoded one at a time (from any thread).
public protocol ImageDataset: Sendable {
  var count: Int { get }
  var classNames: [String] { get }
  func label(_ i: Int) -> Int
  /// Decodes image `i`; throws ImageDecodeError for an unreadable or corrupt file.
  func load(_ i: Int) throws -> DecodedImage
  /// Names image `i` in messages (a path, or "IDX image 17").
  func describe(_ i: Int) -> String
}

public enum ImageFolderError: Error, CustomStringConvertible, Equatable {
  case notADirectory(String)
  case noClasses(String)
  case noImages(String)
  case emptyClasses(root: String, classes: [String])

  public var description: String {
    switch self {
    case .emptyClasses(let root, let classes):
      return "image folder \(root): no .jpg, .jpeg or .png file in the class folder(s) \(classes.joined(separator: ", ")) "
        + "(remove them or add images; torchvision's ImageFolder refuses them too)"
    case .notADirectory(let p): return "image folder \(p) does not exist or is not a directory"
    case .noClasses(let p): return "image folder \(p) has no class sub-folders (expected root/<class>/<image>.jpg|png)"
    case .noImages(let p): return "image folder \(p) has class folders but no .jpg, .jpeg or .png files in them"
    }
  }
}

public struct ImageFolder: ImageDataset {
  public static let extensions: Set<String> = ["jpg", "jpeg", "png"]

  public let root: URL
  public let classNames: [String]
  public let paths: [String]
  public let labels: [Int]
  /// Regular files skipped because of their extension (torchvision's ImageFolder ignores them too).
  public let ignoredFiles: [String]
  /// Entries not walked, with the reason: symlink loops, folders that cannot be listed, special files.
  public let skippedEntries: [String]

  public init(root: URL) throws {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
      throw ImageFolderError.notADirectory(root.path)
    }
    let entries = try fm.contentsOfDirectory(atPath: root.path).sorted()
    let classes = entries.filter { name in
      var d: ObjCBool = false
      return !name.hasPrefix(".") && fm.fileExists(atPath: root.appendingPathComponent(name).path, isDirectory: &d)
        && d.boolValue
    }
    guard !classes.isEmpty else { throw ImageFolderError.noClasses(root.path) }
    var paths: [String] = [], labels: [Int] = [], ignored: [String] = [], skipped: [String] = [], empty: [String] = []
    for (label, name) in classes.enumerated() {
      var files: [String] = []
      Self.walk(root.appendingPathComponent(name), files: &files, ignored: &ignored, skipped: &skipped, visited: [])
      if files.isEmpty { empty.append(name) }
      for f in files.sorted() {
        paths.append(f)
        labels.append(label)
      }
    }
    guard !paths.isEmpty else { throw ImageFolderError.noImages(root.path) }
    guard empty.isEmpty else { throw ImageFolderError.emptyClasses(root: root.path, classes: empty) }
    self.root = root
    classNames = classes
    self.paths = paths
    self.labels = labels
    ignoredFiles = ignored.sorted()
    skippedEntries = skipped.sorted()
  }

  /// Walks `dir` as torchvision's `os.walk(followlinks=True)` does — symlinked files and folders are followed — but
  /// a folder already on the current path (a symlink loop) is skipped and reported instead of walked forever, and
  /// only regular files are taken (a FIFO named x.jpg would block its reader). A name with an image extension whose
  /// target is missing (a dangling link) is kept: loading it fails, and it is skipped and counted like a corrupt file.
  static func walk(_ dir: URL, files: inout [String], ignored: inout [String], skipped: inout [String],
                   visited: Set<String>) {
    let real = dir.resolvingSymlinksInPath().path
    guard !visited.contains(real) else {
      skipped.append("\(dir.path): a symlink loop (it leads back to \(real))")
      return
    }
    let names: [String]
    do {
      names = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
    } catch {
      skipped.append("\(dir.path): cannot be listed (\((error as NSError).localizedDescription))")
      return
    }
    let inside = visited.union([real])
    for name in names {
      let url = dir.appendingPathComponent(name)
      var st = stat()
      guard stat(url.path, &st) == 0 else {
        // A dangling link (or a race): an image name is kept and fails at load; anything else is ignored.
        if extensions.contains(url.pathExtension.lowercased()) { files.append(url.path) } else { ignored.append(url.path) }
        continue
      }
      switch st.st_mode & S_IFMT {
      case S_IFDIR:
        walk(url, files: &files, ignored: &ignored, skipped: &skipped, visited: inside)
      case S_IFREG:
        if extensions.contains(url.pathExtension.lowercased()) { files.append(url.path) } else { ignored.append(url.path) }
      default:
        skipped.append("\(url.path): not a regular file")
      }
    }
  }

  public var count: Int { paths.count }
  public func label(_ i: Int) -> Int { labels[i] }
  public func load(_ i: Int) throws -> DecodedImage { try ImageDecoder.decode(file: URL(fileURLWithPath: paths[i])) }
  public func describe(_ i: Int) -> String { paths[i] }
}

extension IDXDataset: ImageDataset {
  public var classNames: [String] { (0..<((labels?.max() ?? 0) + 1)).map(String.init) }
  public func label(_ i: Int) -> Int { labels?[i] ?? 0 }
  public func load(_ i: Int) throws -> DecodedImage {
    DecodedImage(width: cols, height: rows, channels: 1, pixels: Array(image(i)))
  }
  public func describe(_ i: Int) -> String { "IDX image \(i)" }
}

/// Opens `path` as IDX (a folder with train-images-idx3-ubyte[.gz]) or as an image folder.
public enum DatasetLoader {
  /// Whether `path` holds IDX files (train-images-idx3-ubyte, optionally gzipped).
  public static func isIDX(_ path: String) -> Bool {
    ["", ".gz"].contains { FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("train-images-idx3-ubyte" + $0)) }
  }

  /// `split` "train" or "test": IDX train-* / t10k-* files, or the image folder's train/ and val/ (or test/)
  /// sub-folders; a folder without them is used as it is for either split.
  public static func open(_ path: String, split: String = "train") throws -> any ImageDataset {
    let dir = URL(fileURLWithPath: path)
    let prefix = split == "train" ? "train" : "t10k"
    for suffix in [".gz", ""] {
      let images = dir.appendingPathComponent("\(prefix)-images-idx3-ubyte\(suffix)")
      if FileManager.default.fileExists(atPath: images.path) {
        let labels = dir.appendingPathComponent("\(prefix)-labels-idx1-ubyte\(suffix)")
        return try IDXDataset(images: images,
                              labels: FileManager.default.fileExists(atPath: labels.path) ? labels : nil)
      }
    }
    for name in split == "train" ? ["train"] : ["val", "test"] {
      let sub = dir.appendingPathComponent(name)
      var isDir: ObjCBool = false
      if FileManager.default.fileExists(atPath: sub.path, isDirectory: &isDir), isDir.boolValue {
        return try ImageFolder(root: sub)
      }
    }
    return try ImageFolder(root: dir)
  }
}
