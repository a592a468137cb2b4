/// Tokens of PTX text (PTX ISA §4 "Syntax"). Words keep their dots, so an opcode with its
/// modifiers (`ld.global.nc.v2.f32`), a directive (`.reg`) and a special register (`%tid.x`)
/// each arrive as one token.
enum TokenKind: Equatable {
  case word
  case integer(UInt64)
  case float32(UInt32)  // 0fXXXXXXXX
  case float64(UInt64)  // 0dXXXXXXXXXXXXXXXX, or a decimal literal
  case string
  case punct(UInt8)
  case invalid
  case eof
}

struct Token {
  var kind: TokenKind
  var text: String
  var line: Int
}

/// Splits PTX text into tokens. Never throws: bad characters become `.invalid` tokens so that
/// a parser can skip a broken function body and go on (per-function recovery).
struct Lexer {
  /// `progress` is called every 2^16 lines (see `PTXModule.init(source:progress:)`).
  static func tokenize(_ source: String, progress: (() -> Void)? = nil) -> [Token] {
    let bytes = Array(source.utf8)
    var tokens: [Token] = []
    tokens.reserveCapacity(bytes.count / 4)
    var i = 0
    var line = 1
    let n = bytes.count

    func isWordStart(_ c: UInt8) -> Bool {
      (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 95 || c == 36 || c == 37 || c == 46
    }
    func isWordChar(_ c: UInt8) -> Bool {
      (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 95 || c == 36 || c == 46
    }
    func skipLine() {
      while i < n && bytes[i] != 10 { i += 1 }
    }

    while i < n {
      let c = bytes[i]
      if c == 10 {
        line += 1
        i += 1
        if line & 0xffff == 0 { progress?() }
        continue
      }
      if c == 32 || c == 9 || c == 13 || c == 12 {
        i += 1
        continue
      }
      if c == 47 && i + 1 < n && bytes[i + 1] == 47 {  // line comment
        skipLine()
        continue
      }
      if c == 47 && i + 1 < n && bytes[i + 1] == 42 {  // block comment
        i += 2
        while i + 1 < n && !(bytes[i] == 42 && bytes[i + 1] == 47) {
          if bytes[i] == 10 { line += 1 }
          i += 1
        }
        i += 2
        continue
      }
      if c == 64 && i + 1 < n && bytes[i + 1] == 64 {  // @@DWARF lines carry debug data only
        skipLine()
        continue
      }
      if c == 34 {  // string
        let start = i
        i += 1
        while i < n && bytes[i] != 34 && bytes[i] != 10 {
          if bytes[i] == 92 { i += 1 }
          i += 1
        }
        i = min(i + 1, n)
        tokens.append(Token(kind: .string, text: String(decoding: bytes[start..<min(i, n)], as: UTF8.self), line: line))
        continue
      }
      if isWordStart(c) && !(c == 46 && i + 1 < n && bytes[i + 1] >= 48 && bytes[i + 1] <= 57) {
        let start = i
        i += 1
        // Cache hints such as `.L2::128B` and `.L1::evict_last` keep their `::` inside the word.
        while i < n
          && (isWordChar(bytes[i])
            || (bytes[i] == 58 && i + 2 < n && bytes[i + 1] == 58 && isWordChar(bytes[i + 2]) && bytes[i - 1] != 58))
        {
          i += bytes[i] == 58 ? 2 : 1
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        // Debug line info: `.loc 1 2 3, function_name ..., inlined_at ...` and `.file 1 "x"` take the rest of the line.
        if text == ".loc" || text == ".file" {
          skipLine()
          continue
        }
        // Directives written without a space between them, `.reg.b16 h;` as CUDA's fp16
        // headers' inline assembly does, are separate words (PTX ISA §4.3: a directive is a
        // dot-prefixed keyword); instruction words (`ld.global.u32`) do not start with a dot.
        if text.utf8.first == 46, text.utf8.dropFirst().contains(46) {
          for part in text.split(separator: ".") { tokens.append(Token(kind: .word, text: "." + part, line: line)) }
          continue
        }
        tokens.append(Token(kind: .word, text: text, line: line))
        continue
      }
      if c >= 48 && c <= 57 || c == 46 {
        let start = i
        while i < n
          && (isWordChar(bytes[i])
            || ((bytes[i] == 43 || bytes[i] == 45) && (bytes[i - 1] | 0x20) == 101 && !isHexPrefixed(bytes, start)))
        {
          i += 1
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        tokens.append(Token(kind: number(text), text: text, line: line))
        continue
      }
      tokens.append(Token(kind: .punct(c), text: String(UnicodeScalar(c)), line: line))
      i += 1
    }
    tokens.append(Token(kind: .eof, text: "end of file", line: line))
    return tokens
  }

  private static func isHexPrefixed(_ b: [UInt8], _ s: Int) -> Bool {
    s + 1 < b.count && b[s] == 48 && (b[s + 1] | 0x20 == 120 || b[s + 1] | 0x20 == 102 || b[s + 1] | 0x20 == 100)
  }

  /// Numbers per PTX ISA §4.5.1: hex `0x`, octal `0…`, binary `0b`, decimal, an optional `U`
  /// suffix; `0f`/`0d` give the exact bits of an f32/f64.
  static func number(_ text: String) -> TokenKind {
    var t = Substring(text)
    let lower = text.lowercased()
    if lower.hasPrefix("0f") && text.count == 10, let v = UInt32(t.dropFirst(2), radix: 16) { return .float32(v) }
    if lower.hasPrefix("0d") && text.count == 18, let v = UInt64(t.dropFirst(2), radix: 16) { return .float64(v) }
    if t.last == "U" || t.last == "u" { t = t.dropLast() }
    if lower.hasPrefix("0x"), let v = UInt64(t.dropFirst(2), radix: 16) { return .integer(v) }
    if lower.hasPrefix("0b"), let v = UInt64(t.dropFirst(2), radix: 2) { return .integer(v) }
    if t.count > 1 && t.first == "0" && t.allSatisfy({ $0 >= "0" && $0 <= "7" }), let v = UInt64(t, radix: 8) {
      return .integer(v)
    }
    if let v = UInt64(t) { return .integer(v) }
    if let d = Double(text) { return .float64(d.bitPattern) }
    return .invalid
  }
}
