import VGPUProtocol

/// Why a module image was refused. Line numbers start at 1.
public enum ModuleImageError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The image is larger than `ModuleImage.maxBytes`.
  case tooLarge(byteCount: Int, limit: Int)
  /// The line is not valid UTF-8.
  case notUTF8(line: Int)
  /// The first line is not `vgpu-module <version>`.
  case badMagic(line: Int, found: String)
  /// The first line names a version other than 1.
  case unsupportedVersion(line: Int, found: String)
  /// A line that is not blank, a comment or `kernel <name>`.
  case syntax(line: Int, found: String)
  /// `kernel <name>` names no built-in kernel.
  case unknownKernel(line: Int, name: String)
  /// The kernel was already listed on `firstLine`.
  case duplicateKernel(line: Int, name: String, firstLine: Int)
  /// More than `ModuleImage.maxKernels` kernels.
  case tooManyKernels(line: Int, limit: Int)

  public var description: String {
    switch self {
    case .tooLarge(let count, let limit):
      return "Module image is \(count) bytes; at most \(limit) bytes are accepted."
    case .notUTF8(let line):
      return "Module image line \(line): not valid UTF-8."
    case .badMagic(let line, let found):
      return "Module image line \(line): expected '\(ModuleImage.magic) 1', found '\(found)'."
    case .unsupportedVersion(let line, let found):
      return "Module image line \(line): '\(found)' is an unsupported version; this device reads version 1."
    case .syntax(let line, let found):
      return "Module image line \(line): expected 'kernel <name>', a '#' comment or a blank line, found '\(found)'."
    case .unknownKernel(let line, let name):
      let known = BuiltinKernel.allCases.map(\.rawValue).joined(separator: ", ")
      return "Module image line \(line): unknown kernel '\(name)'; known kernels: \(known)."
    case .duplicateKernel(let line, let name, let firstLine):
      return "Module image line \(line): kernel '\(name)' is already listed on line \(firstLine)."
    case .tooManyKernels(let line, let limit):
      return "Module image line \(line): more than \(limit) kernels."
    }
  }
}

/// A module image: what `cuModuleLoadData` hands the device, naming the built-in kernels the
/// module provides (the reference device cannot run PTX or cubins; it runs `BuiltinKernel`s).
///
/// Format, version 1:
/// - UTF-8 text, at most `maxBytes` (64 KiB), lines separated by `\n` (a trailing `\r` is
///   ignored);
/// - the first line is exactly `vgpu-module 1`;
/// - every further line is blank, a comment (first non-blank character `#`), or
///   `kernel <name>` with `<name>` a `BuiltinKernel` raw value, e.g. `kernel vector_add`
///   (spaces or tabs separate the two words);
/// - at most `maxKernels` (64) kernels, none listed twice.
///
/// ```
/// vgpu-module 1
/// # element-wise helpers
/// kernel fill
/// kernel vector_add
/// ```
public struct ModuleImage: Sendable, Equatable {
  /// The first word of every image.
  public static let magic = BuiltinModuleImage.magic
  /// The only version this device reads.
  public static let version = 1
  /// Largest accepted image, in bytes.
  public static let maxBytes = BuiltinModuleImage.maxBytes
  /// Most kernels one image may name.
  public static let maxKernels = 64

  /// The kernels, in the order the image lists them.
  public var kernels: [BuiltinKernel]

  public init(kernels: [BuiltinKernel]) {
    self.kernels = kernels
  }

  /// Parses and validates an image.
  public init(parsing bytes: UnsafeRawBufferPointer) throws(ModuleImageError) {
    try self.init(parsing: bytes, maxKernels: Self.maxKernels)
  }

  /// The parser with an adjustable kernel limit: with only a handful of distinct built-in
  /// kernels, the duplicate check fires long before 64, so tests lower the limit to reach it.
  init(parsing bytes: UnsafeRawBufferPointer, maxKernels: Int) throws(ModuleImageError) {
    guard bytes.count <= Self.maxBytes else {
      throw .tooLarge(byteCount: bytes.count, limit: Self.maxBytes)
    }
    var kernels: [BuiltinKernel] = []
    var firstLines: [BuiltinKernel: Int] = [:]
    var lineNumber = 0
    var start = 0
    while start < bytes.count || lineNumber == 0 {
      lineNumber += 1
      var end = start
      while end < bytes.count, bytes[end] != UInt8(ascii: "\n") { end += 1 }
      var lineEnd = end
      if lineEnd > start, bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
      guard let line = String(validating: bytes[start..<lineEnd], as: UTF8.self) else {
        throw .notUTF8(line: lineNumber)
      }
      start = end + 1

      let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      if lineNumber == 1 {
        guard line == "\(Self.magic) \(Self.version)" else {
          let rest = line.dropFirst(Self.magic.count + 1)
          if line.hasPrefix("\(Self.magic) "), !rest.isEmpty, rest.allSatisfy({ $0.isASCII && $0.isNumber }) {
            throw .unsupportedVersion(line: 1, found: Self.excerpt(line))
          }
          throw .badMagic(line: 1, found: Self.excerpt(line))
        }
        continue
      }
      if words.isEmpty || words[0].hasPrefix("#") { continue }
      guard words.count == 2, words[0] == "kernel" else {
        throw .syntax(line: lineNumber, found: Self.excerpt(line))
      }
      guard let kernel = BuiltinKernel(rawValue: String(words[1])) else {
        throw .unknownKernel(line: lineNumber, name: Self.excerpt(String(words[1])))
      }
      if let first = firstLines[kernel] {
        throw .duplicateKernel(line: lineNumber, name: kernel.rawValue, firstLine: first)
      }
      guard kernels.count < maxKernels else {
        throw .tooManyKernels(line: lineNumber, limit: maxKernels)
      }
      firstLines[kernel] = lineNumber
      kernels.append(kernel)
    }
    self.kernels = kernels
  }

  /// The image text naming `kernels`; `ModuleImage(parsing:)` reads it back.
  public static func text(kernels: [BuiltinKernel]) -> String {
    var text = "\(magic) \(version)\n"
    for kernel in kernels { text += "kernel \(kernel.rawValue)\n" }
    return text
  }

  /// A line as quoted in an error: at most 80 characters, so a hostile image cannot make
  /// error messages large.
  private static func excerpt(_ s: String) -> String {
    s.count <= 80 ? s : String(s.prefix(77)) + "..."
  }
}
