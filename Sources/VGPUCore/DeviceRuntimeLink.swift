// CUDA's device runtime library (`libcudadevrt.a`) as a cuLink* input.
//
// numba-cuda links it for a kernel that uses `cg.this_grid().sync()` (with
// CU_JIT_INPUT_LIBRARY), and CUDA C++ compiled with `-rdc=true` needs it for
// the same calls. It is an `ar` archive of host objects whose device code is
// SASS, which the PTX engine cannot run; the engine provides the functions a
// PTX kernel calls from it instead (Sources/PTX/DeviceRuntime.swift). So the
// linker accepts the library, adds nothing of it to the image, and checks at
// cuLinkComplete that every function the PTX declares `.extern` and no input
// defines is one the engine provides: another one is refused there, named.

/// CUDA's device runtime as the linker sees it.
enum DeviceRuntimeLibrary {
  /// The device-runtime functions the PTX engine provides (the names of
  /// `DeviceRuntimeFunction` in Sources/PTX/DeviceRuntime.swift; the shim does
  /// not link the engine, so the list is kept in both places).
  static let provided: Set<String> = [
    "cudaCGGetIntrinsicHandle", "cudaCGSynchronize", "cudaCGSynchronizeGrid", "cudaCGGetSize", "cudaCGGetRank",
  ]

  /// Whether a link input is CUDA's device runtime library: an `ar` archive
  /// (magic `!<arch>\n`) that is named libcudadevrt.a (cudadevrt.lib on
  /// Windows) or has a member named cuda_device_runtime.o, the only member of
  /// CUDA 12.9's and 13.x's libcudadevrt.a (GNU ar keeps names over 15
  /// characters in the `//` member, which is searched too). Any other archive
  /// is an ordinary library, which needs a real device linker.
  static func recognizes(_ bytes: [UInt8], name: String) -> Bool {
    let magic = Array("!<arch>\n".utf8)
    guard bytes.count >= magic.count, Array(bytes[..<magic.count]) == magic else { return false }
    let file = name.split(separator: "/").last.map(String.init) ?? name
    if file == "libcudadevrt.a" || file == "cudadevrt.lib" { return true }
    let member = Array("cuda_device_runtime".utf8)
    // Member headers (60 bytes each): name @0 (16), size @48 (10, decimal), "`\n" @58.
    var offset = magic.count
    var members = 0
    while offset + 60 <= bytes.count && members < 64 {
      let header = bytes[offset..<offset + 60]
      let nameField = Array(header.prefix(16))
      let digits = header.dropFirst(48).prefix(10).filter { $0 != UInt8(ascii: " ") }
      guard let size = Int(String(decoding: digits, as: UTF8.self)), size >= 0, offset + 60 + size <= bytes.count
      else { return false }
      let body = offset + 60
      if nameField.starts(with: member) { return true }
      if nameField.starts(with: Array("// ".utf8)) {
        // The long-name table: names separated by "/\n".
        let table = bytes[body..<body + size]
        if table.count >= member.count {
          for i in table.startIndex...(table.endIndex - member.count)
          where table[i..<i + member.count].elementsEqual(member) {
            return true
          }
        }
      }
      offset = body + size + (size & 1)  // members start on even offsets
      members += 1
    }
    return false
  }

  /// The functions `ptx` declares `.extern .func` that it does not define
  /// (`.func` or `.entry` without `.extern`), in order of first declaration.
  /// Comments are skipped; a declaration's return list `(...)` before the
  /// name is skipped.
  static func undefinedFunctions(_ ptx: [UInt8]) -> [String] {
    var declared: [String] = []
    var defined: Set<String> = []
    var externSeen = false  // `.extern` since the last `;`, `{` or `}`
    var expecting: Bool? = nil  // after `.func`/`.entry`: whether that header is extern
    var depth = 0  // parentheses while skipping a return list
    var i = 0
    let n = ptx.count
    func isWord(_ c: UInt8) -> Bool {
      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x5f || c == 0x24
        || c == 0x2e || c == 0x25
    }
    while i < n {
      let c = ptx[i]
      if c == UInt8(ascii: "/"), i + 1 < n, ptx[i + 1] == UInt8(ascii: "/") {
        while i < n && ptx[i] != 0x0a { i += 1 }
        continue
      }
      if c == UInt8(ascii: "/"), i + 1 < n, ptx[i + 1] == UInt8(ascii: "*") {
        i += 2
        while i + 1 < n && !(ptx[i] == UInt8(ascii: "*") && ptx[i + 1] == UInt8(ascii: "/")) { i += 1 }
        i += 2
        continue
      }
      if c == UInt8(ascii: ";") || c == UInt8(ascii: "{") || c == UInt8(ascii: "}") {
        externSeen = false
        expecting = nil
        depth = 0
        i += 1
        continue
      }
      if expecting != nil && c == UInt8(ascii: "(") {
        depth += 1
        i += 1
        continue
      }
      if expecting != nil && c == UInt8(ascii: ")") {
        depth = max(0, depth - 1)
        i += 1
        continue
      }
      if isWord(c) {
        var j = i
        while j < n && isWord(ptx[j]) { j += 1 }
        let word = String(decoding: ptx[i..<j], as: UTF8.self)
        i = j
        if let isExtern = expecting, depth == 0, !word.hasPrefix(".") {
          if isExtern {
            if !declared.contains(word) { declared.append(word) }
          } else {
            defined.insert(word)
          }
          expecting = nil
        } else if word == ".extern" {
          externSeen = true
        } else if (word == ".func" || word == ".entry") && expecting == nil {
          expecting = externSeen
          depth = 0
        }
        continue
      }
      i += 1
    }
    return declared.filter { !defined.contains($0) }
  }
}
