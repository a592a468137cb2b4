#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

extension BlockRunner {
  /// Formats a device `printf` (CUDA C Programming Guide, "Formatted Output"): `vprintf(fmt, args)`
  /// where `args` packs each argument aligned to its size, floats promoted to double.
  mutating func formatPrintf(format: UInt64, args: UInt64) -> String {
    let fmt = Array(cString(format).utf8)
    var out = ""
    var off: UInt64 = 0
    var k = 0
    func next(_ size: Int) -> UInt64 {
      off = (off + UInt64(size) - 1) / UInt64(size) * UInt64(size)
      defer { off += UInt64(size) }
      guard args != 0, let p = generic(args &+ off, size, write: false) else { return 0 }
      return load(p, UInt8(size))
    }
    while k < fmt.count {
      let c = fmt[k]
      guard c == UInt8(ascii: "%") else {
        var j = k
        while j < fmt.count && fmt[j] != UInt8(ascii: "%") { j += 1 }
        out += String(decoding: fmt[k..<j], as: UTF8.self)
        k = j
        continue
      }
      var j = k + 1
      var spec = "%"
      if j < fmt.count && fmt[j] == UInt8(ascii: "%") {
        out += "%"
        k = j + 1
        continue
      }
      while j < fmt.count, "-+ #0".utf8.contains(fmt[j]) {
        spec.append(Character(UnicodeScalar(fmt[j])))
        j += 1
      }
      func number() {
        if j < fmt.count && fmt[j] == UInt8(ascii: "*") {
          spec += String(Int32(truncatingIfNeeded: next(4)))
          j += 1
          return
        }
        while j < fmt.count && fmt[j] >= 48 && fmt[j] <= 57 {
          spec.append(Character(UnicodeScalar(fmt[j])))
          j += 1
        }
      }
      number()
      if j < fmt.count && fmt[j] == UInt8(ascii: ".") {
        spec += "."
        j += 1
        number()
      }
      var long = 0
      while j < fmt.count, "hlLqjzt".utf8.contains(fmt[j]) {
        if fmt[j] == UInt8(ascii: "l") || fmt[j] == UInt8(ascii: "L") || fmt[j] == UInt8(ascii: "q")
          || fmt[j] == UInt8(ascii: "j") || fmt[j] == UInt8(ascii: "z")
        {
          long += 1
        }
        j += 1
      }
      guard j < fmt.count else {
        out += String(decoding: fmt[k...], as: UTF8.self)
        break
      }
      let conv = fmt[j]
      j += 1
      let ch = Character(UnicodeScalar(conv))
      switch ch {
      case "d", "i":
        let v = long > 0 ? Int64(bitPattern: next(8)) : Int64(Int32(truncatingIfNeeded: next(4)))
        out += cFormat(spec + "lld", v)
      case "u", "x", "X", "o":
        let v = long > 0 ? next(8) : next(4)
        out += cFormat(spec + "ll" + String(ch), v)
      case "c":
        out += cFormat(spec + "c", Int32(truncatingIfNeeded: next(4)))
      case "f", "F", "e", "E", "g", "G", "a", "A":
        out += cFormat(spec + String(ch), Double(bitPattern: next(8)))
      case "p":
        out += cFormat(spec + "p", UInt(next(8)))
      case "s":
        let s = cString(next(8))
        out += s.withCString { cFormat(spec + "s", $0) }
      default:
        out += String(decoding: fmt[k..<j], as: UTF8.self)
      }
      k = j
    }
    return out
  }
}

func cFormat(_ spec: String, _ arg: CVarArg) -> String {
  var buf = [CChar](repeating: 0, count: 512)
  let n = withVaList([arg]) { va in vsnprintf(&buf, buf.count, spec, va) }
  if n >= buf.count {
    buf = [CChar](repeating: 0, count: Int(n) + 1)
    _ = withVaList([arg]) { va in vsnprintf(&buf, buf.count, spec, va) }
  }
  return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
