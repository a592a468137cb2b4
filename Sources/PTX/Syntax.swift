/// The parsed (not yet lowered) form of a PTX module. Names are still strings here; lowering
/// (Lowering.swift) resolves them to slots, offsets and instruction indices.
enum SyntaxOperand: Equatable {
  case word(String)  // register, symbol, label, special register or function name
  case int(UInt64)  // negative literals are stored in two's complement
  case f32(UInt32)
  case f64(UInt64)
  case not(String)  // `!%p`
  case address(base: String?, offset: Int64)  // `[base+off]`, `[imm]`
  case vector([SyntaxOperand])  // `{%f1, %f2}`
  case pair(String, String)  // `%r|%p`
  case list([SyntaxOperand])  // `(param0, param1)` in call
  case symbolOffset(String, Int64)  // `sym+4`
  case sink  // `_`
}

struct SyntaxInstruction {
  var guardName: String?
  var guardNegated = false
  var opcode: String
  var operands: [SyntaxOperand]
  var line: Int
}

/// The state spaces of PTX ISA §5.1.
public enum PTXStateSpace: String, Sendable {
  case reg, sreg, const, global, local, param, shared
}

/// One initializer element: a number's bytes, or a symbol whose address is filled in at bind time.
enum InitItem {
  case bits(UInt64)
  case f32(UInt32)
  case f64(UInt64)
  case symbol(String, Int64)
}

struct VariableDecl {
  var space: PTXStateSpace
  var type: String  // ".b8", ".f32", ...
  var vector = 1
  var align: Int?
  var name: String
  var rangeCount: Int?  // `%r<N>`
  var dims: [Int]?  // nil: scalar; [0]: unsized (`[]`)
  var initializer: [InitItem] = []
  var isExtern = false
  var line: Int
}

enum Statement {
  case instruction(SyntaxInstruction)
  case label(String)
  case open
  case close
  case declaration(VariableDecl)
}

struct FunctionSyntax {
  var name: String
  var isEntry: Bool
  var isExtern: Bool
  var params: [VariableDecl] = []
  var returns: [VariableDecl] = []
  var body: [Statement]?
  var error: PTXError?
  var line: Int
  /// `.maxnreg N`: the most registers per thread the compiler may use (PTX ISA §11.4.1).
  var maxRegisters: Int?
  /// `.maxntid` / `.reqntid`: the most threads a block launches with (the product of the dimensions).
  var maxThreads: Int?
}

struct ModuleSyntax {
  var version: (Int, Int) = (0, 0)
  var target = ""
  var addressSize = 64
  var variables: [VariableDecl] = []
  var functions: [FunctionSyntax] = []
}
