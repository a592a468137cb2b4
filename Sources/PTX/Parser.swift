/// Recursive-descent parser over `Lexer` tokens (PTX ISA §4 "Syntax", §5 "State Spaces,
/// Types, and Variables", §7 "Abstracting the ABI"). Module-level errors fail the module;
/// an error inside a function body is kept on that function and parsing resumes after it.
struct Parser {
  var tokens: [Token]
  var p = 0

  /// Called now and then on a long parse (every 2^16 tokens of top-level directives).
  var progress: (() -> Void)?
  init(_ source: String, progress: (() -> Void)? = nil) {
    tokens = Lexer.tokenize(source, progress: progress)
    self.progress = progress
  }

  var tok: Token { tokens[p] }
  mutating func next() -> Token {
    let t = tokens[p]
    if p < tokens.count - 1 { p += 1 }
    return t
  }

  /// `sm_NN` or `compute_NN` (with `a` or `f` after), or a `.target` modifier.
  static func isTarget(_ word: String) -> Bool {
    if ["texmode_unified", "texmode_independent", "debug", "map_f64_to_f32"].contains(word) { return true }
    for prefix in ["sm_", "compute_"] where word.hasPrefix(prefix) {
      var digits = Substring(word.dropFirst(prefix.count))
      if let last = digits.last, last == "a" || last == "f" { digits = digits.dropLast() }
      return !digits.isEmpty && digits.count <= 4 && digits.allSatisfy(\.isASCII) && digits.allSatisfy(\.isNumber)
    }
    return false
  }
  func fail(_ expected: String) -> PTXError {
    .parse(line: tok.line, token: tok.text, expected: expected)
  }
  func isPunct(_ c: Character) -> Bool { tok.kind == .punct(c.asciiValue!) }
  mutating func accept(_ c: Character) -> Bool {
    if isPunct(c) {
      _ = next()
      return true
    }
    return false
  }
  mutating func expect(_ c: Character) throws(PTXError) {
    if !accept(c) { throw fail("'\(c)'") }
  }
  mutating func acceptWord(_ w: String) -> Bool {
    if tok.kind == .word && tok.text == w {
      _ = next()
      return true
    }
    return false
  }
  mutating func word(_ what: String) throws(PTXError) -> String {
    guard tok.kind == .word else { throw fail(what) }
    return next().text
  }
  mutating func integer(_ what: String) throws(PTXError) -> Int {
    let neg = accept("-")
    guard case .integer(let v) = tok.kind else { throw fail(what) }
    _ = next()
    return neg ? -Int(truncatingIfNeeded: v) : Int(truncatingIfNeeded: v)
  }

  static let typeWords: Set<String> = [
    ".b8", ".b16", ".b32", ".b64", ".b128", ".u8", ".u16", ".u32", ".u64", ".s8", ".s16", ".s32", ".s64", ".f16",
    ".f16x2", ".bf16", ".bf16x2", ".f32", ".f64", ".pred", ".tf32",
  ]

  // MARK: module

  mutating func parseModule() throws(PTXError) -> ModuleSyntax {
    var m = ModuleSyntax()
    var sawVersion = false
    var reported = 0
    while tok.kind != .eof {
      if p - reported > 0xffff, let progress {
        progress()
        reported = p
      }
      let t = tok
      guard t.kind == .word else { throw fail("a directive") }
      switch t.text {
      case ".version":
        _ = next()
        guard case .float64(let bits) = tok.kind else { throw fail("a version number such as 8.8") }
        let text = next().text
        let parts = text.split(separator: ".")
        // Several inputs joined by cuLinkComplete bring one `.version` each: the newest counts.
        let v = (Int(parts.first ?? "") ?? 0, parts.count > 1 ? Int(parts[1]) ?? 0 : 0)
        if !sawVersion || v > m.version { m.version = v }
        _ = bits
        sawVersion = true
      case ".target":
        _ = next()
        var targets: [String] = []
        repeat {
          // An architecture (sm_90, sm_90a, compute_75) or one of PTX's target modifiers: the
          // engine interprets any architecture, but a word that is none is not PTX.
          guard tok.kind == .word, Self.isTarget(tok.text) else {
            throw fail(
              "a target such as sm_90 or compute_75 (or texmode_unified, texmode_independent, debug, map_f64_to_f32)")
          }
          targets.append(next().text)
        } while accept(",")
        // The first input's target (the kernel's own, when cuLinkComplete joined several).
        if m.target.isEmpty { m.target = targets.first ?? "" }
      case ".address_size":
        _ = next()
        m.addressSize = try integer("32 or 64")
        if m.addressSize != 64 { throw .parse(line: t.line, token: "\(m.addressSize)", expected: "address size 64") }
      case ".pragma":
        _ = next()
        while tok.kind != .eof && !accept(";") { _ = next() }
      case ".section":
        // Debug sections: `.section .debug_info { ... }`.
        _ = next()
        while tok.kind != .eof && !isPunct("{") { _ = next() }
        try skipBalanced()
      default:
        guard sawVersion else { throw fail(".version") }
        try parseTopLevel(&m)
      }
    }
    guard sawVersion else { throw fail(".version") }
    return m
  }

  /// Skips `{ ... }` including nested braces; the current token is `{`.
  mutating func skipBalanced() throws(PTXError) {
    try expect("{")
    var depth = 1
    while depth > 0 {
      if tok.kind == .eof { throw fail("'}'") }
      if isPunct("{") { depth += 1 }
      if isPunct("}") { depth -= 1 }
      _ = next()
    }
  }

  mutating func parseTopLevel(_ m: inout ModuleSyntax) throws(PTXError) {
    var isExtern = false
    while true {
      if acceptWord(".visible") || acceptWord(".weak") || acceptWord(".common") { continue }
      if acceptWord(".extern") {
        isExtern = true
        continue
      }
      break
    }
    let t = tok
    switch t.text {
    case ".entry", ".func":
      _ = next()
      m.functions.append(try parseFunction(isEntry: t.text == ".entry", isExtern: isExtern, line: t.line))
    case ".global", ".const", ".shared", ".local":
      let decls = try parseVariable(isExtern: isExtern)
      m.variables.append(contentsOf: decls)
    case ".alias":
      while tok.kind != .eof && !accept(";") { _ = next() }
    default:
      throw fail("a directive (.entry, .func, .global, ...)")
    }
  }

  // MARK: variables

  /// `<space> [.align N] [.vN] <type> name[<N>|[dims]] [= init] {, name ...} ;`
  mutating func parseVariable(isExtern: Bool, terminated: Bool = true) throws(PTXError) -> [VariableDecl] {
    let line = tok.line
    let spaceWord = try word("a state space")
    guard let space = PTXStateSpace(rawValue: String(spaceWord.dropFirst())) else { throw fail("a state space") }
    var align: Int?
    var vector = 1
    var type = ""
    var pointer = false
    while tok.kind == .word && tok.text.hasPrefix(".") {
      let w = next().text
      switch w {
      case ".align":
        let a = try integer("an alignment")
        if !pointer { align = a }
      case ".v2": vector = 2
      case ".v4": vector = 4
      case ".v8": vector = 8
      case ".ptr": pointer = true
      case ".global", ".const", ".shared", ".local", ".attribute": continue
      default:
        if Parser.typeWords.contains(w) { type = w } else { continue }
      }
    }
    if isPunct("(") {  // `.attribute(.managed)`
      while !accept(")") && tok.kind != .eof { _ = next() }
    }
    guard !type.isEmpty else { throw fail("a type") }
    var decls: [VariableDecl] = []
    repeat {
      let name = try word("a name")
      var d = VariableDecl(space: space, type: type, vector: vector, align: align, name: name, line: line)
      d.isExtern = isExtern
      if accept("<") {
        d.rangeCount = try integer("a register count")
        try expect(">")
      }
      while accept("[") {
        if accept("]") {
          d.dims = (d.dims ?? []) + [0]
        } else {
          d.dims = (d.dims ?? []) + [try integer("an array size")]
          try expect("]")
        }
      }
      if accept("=") { d.initializer = try parseInitializer() }
      decls.append(d)
    } while terminated && accept(",")
    if terminated { try expect(";") }
    return decls
  }

  mutating func parseInitializer() throws(PTXError) -> [InitItem] {
    var items: [InitItem] = []
    if accept("{") {
      if accept("}") { return items }
      repeat { items += try parseInitializer() } while accept(",")
      try expect("}")
      return items
    }
    let neg = accept("-")
    switch tok.kind {
    case .integer(let v):
      _ = next()
      items.append(.bits(neg ? 0 &- v : v))
    case .float32(let b):
      _ = next()
      items.append(.f32(neg ? b ^ 0x8000_0000 : b))
    case .float64(let b):
      _ = next()
      items.append(.f64(neg ? b ^ (1 << 63) : b))
    case .word:
      var name = next().text
      if (name == "generic" || name == "global") && accept("(") {
        name = try word("a symbol")
        try expect(")")
      }
      var off: Int64 = 0
      if accept("+") { off = Int64(try integer("an offset")) }
      items.append(.symbol(name, off))
    default:
      throw fail("an initializer value")
    }
    return items
  }

  // MARK: functions

  mutating func parseParamList() throws(PTXError) -> [VariableDecl] {
    var params: [VariableDecl] = []
    try expect("(")
    if accept(")") { return params }
    repeat {
      params += try parseVariable(isExtern: false, terminated: false)
    } while accept(",")
    try expect(")")
    return params
  }

  mutating func parseFunction(isEntry: Bool, isExtern: Bool, line: Int) throws(PTXError) -> FunctionSyntax {
    var returns: [VariableDecl] = []
    if !isEntry && isPunct("(") { returns = try parseParamList() }
    let name = try word("a function name")
    var f = FunctionSyntax(name: name, isEntry: isEntry, isExtern: isExtern, line: line)
    f.returns = returns
    if isPunct("(") { f.params = try parseParamList() }
    // Performance directives: .maxntid 256, 1, 1 / .reqntid / .minnctapersm / .maxnreg / .noreturn / .pragma
    while tok.kind == .word && tok.text.hasPrefix(".") {
      let directive = next().text
      // Kept: the bounds a compiler allocates registers by (PTX ISA §11.4
      // "Performance-Tuning Directives"); the rest are hints an interpreter ignores.
      if directive == ".maxnreg", case .integer(let n) = tok.kind {
        f.maxRegisters = min(f.maxRegisters ?? Int.max, Int(clamping: n))
      } else if directive == ".maxntid" || directive == ".reqntid" {
        var product = 1
        while case .integer(let n) = tok.kind {
          _ = next()
          product =
            product.multipliedReportingOverflow(by: max(1, Int(clamping: n))).overflow
            ? Int.max : product * max(1, Int(clamping: n))
          if !accept(",") { break }
        }
        f.maxThreads = min(f.maxThreads ?? Int.max, product)
      }
      while tok.kind != .eof && !isPunct("{") && !isPunct(";") && !(tok.kind == .word && tok.text.hasPrefix(".")) {
        _ = next()
      }
      if tok.kind == .string { _ = next() }
    }
    if accept(";") { return f }
    guard isPunct("{") else { throw fail("'{' or ';' after function header") }
    let bodyStart = p
    do {
      f.body = try parseBody()
    } catch {
      f.error = error
      f.body = nil
      p = bodyStart
      try skipBalanced()
    }
    return f
  }

  mutating func parseBody() throws(PTXError) -> [Statement] {
    var out: [Statement] = []
    try expect("{")
    out.append(.open)
    var depth = 1
    while depth > 0 {
      let t = tok
      switch t.kind {
      case .eof: throw fail("'}'")
      case .punct(UInt8(ascii: "{")):
        _ = next()
        depth += 1
        out.append(.open)
      case .punct(UInt8(ascii: "}")):
        _ = next()
        depth -= 1
        out.append(.close)
      case .punct(UInt8(ascii: "@")):
        out.append(.instruction(try parseInstruction()))
      case .word:
        if t.text.hasPrefix(".") {
          switch t.text {
          case ".reg", ".local", ".shared", ".param", ".const", ".global":
            for d in try parseVariable(isExtern: false) { out.append(.declaration(d)) }
          case ".pragma":
            while tok.kind != .eof && !accept(";") { _ = next() }
          default:
            throw fail("a declaration or instruction")
          }
        } else if tokens[p + 1].kind == .punct(UInt8(ascii: ":")) {
          _ = next()
          _ = next()
          if tok.kind == .word && tok.text == ".callprototype" {  // `proto: .callprototype (...) _ (...);`
            while tok.kind != .eof && !accept(";") { _ = next() }
          } else if tok.kind == .word && tok.text == ".branchtargets" {
            while tok.kind != .eof && !accept(";") { _ = next() }
          } else {
            out.append(.label(t.text))
          }
        } else {
          out.append(.instruction(try parseInstruction()))
        }
      default:
        throw fail("an instruction")
      }
    }
    return out
  }

  // MARK: instructions

  mutating func parseInstruction() throws(PTXError) -> SyntaxInstruction {
    let line = tok.line
    var guardName: String?
    var neg = false
    if accept("@") {
      neg = accept("!")
      guardName = try word("a guard predicate")
    }
    let op = try word("an opcode")
    var ins = SyntaxInstruction(guardName: guardName, guardNegated: neg, opcode: op, operands: [], line: line)
    if accept(";") { return ins }
    repeat { ins.operands.append(try parseOperand()) } while accept(",")
    try expect(";")
    return ins
  }

  mutating func parseSigned() throws(PTXError) -> Int64 {
    let neg = accept("-")
    guard case .integer(let v) = tok.kind else { throw fail("an integer") }
    _ = next()
    return neg ? 0 &- Int64(bitPattern: v) : Int64(bitPattern: v)
  }

  mutating func parseOperand() throws(PTXError) -> SyntaxOperand {
    if accept("[") {
      var base: String?
      var off: Int64 = 0
      if tok.kind == .word {
        base = next().text
        if accept("+") {
          off = try parseSigned()
        } else if accept("-") {
          off = 0 &- (try parseSigned())
        }
      } else {
        off = try parseSigned()
      }
      // `[tensorMap, {coordinates}]`: the tensor operand of the bulk tensor copies (PTX ISA
      // "cp.async.bulk.tensor"), parsed so that the instruction is refused by name.
      if accept(",") {
        var parts: [SyntaxOperand] = [.address(base: base, offset: off)]
        repeat { parts.append(try parseOperand()) } while accept(",")
        try expect("]")
        return .list(parts)
      }
      try expect("]")
      return .address(base: base, offset: off)
    }
    if accept("{") {
      var elems: [SyntaxOperand] = []
      repeat { elems.append(try parseOperand()) } while accept(",")
      try expect("}")
      return .vector(elems)
    }
    if accept("(") {
      var elems: [SyntaxOperand] = []
      if accept(")") { return .list([]) }
      repeat { elems.append(try parseOperand()) } while accept(",")
      try expect(")")
      return .list(elems)
    }
    if accept("!") { return .not(try word("a predicate")) }
    let neg = accept("-")
    switch tok.kind {
    case .integer(let v):
      _ = next()
      return .int(neg ? 0 &- v : v)
    case .float32(let b):
      _ = next()
      return .f32(neg ? b ^ 0x8000_0000 : b)
    case .float64(let b):
      _ = next()
      return .f64(neg ? b ^ (1 << 63) : b)
    case .word:
      if neg { throw fail("a number after '-'") }
      let w = next().text
      if w == "_" { return .sink }
      if accept("|") { return .pair(w, try word("a predicate")) }
      if accept("+") { return .symbolOffset(w, try parseSigned()) }
      return .word(w)
    default:
      throw fail("an operand")
    }
  }
}
