import Synchronization

/// Name tables shared by every function's lowering.
struct ModuleContext {
  var globalIndex: [String: Int] = [:]
  var sharedIndex: [String: Int] = [:]  // module-level names, and "function::name" for function-level ones
  var functionIndex: [String: Int] = [:]
  /// Functions only declared (`.extern .func f(...);`), with no definition in the module.
  var declaredOnly: Set<String> = []
  var paramLayouts: [(params: [(Int, Int)], returns: [(Int, Int)])] = []
}

/// Generic-address windows for the shared and local state spaces (PTX ISA §6.4.1 "Generic
/// Addressing"). They sit far below the device's allocations (0x7f00_0000_0000 upward).
public enum Memory {
  /// Generic address of shared-space address 0.
  public static let sharedWindow: UInt64 = 0x1000_0000_0000
  /// Generic address of thread 0's local space; thread `i` (linear in its block) starts `i * localStride` above.
  public static let localWindow: UInt64 = 0x2000_0000_0000
  /// Bytes of window each thread's local space gets; its real size is `localBytesPerThread`.
  public static let localStride: UInt64 = 1 << 24
  /// Device address of a cooperative launch's grid workspace (`%envreg1:%envreg2`), which the
  /// launch provides (`gridWorkspaceBytes` bytes): CUDA C++'s `cooperative_groups`
  /// `this_grid().sync()` counts arrivals in its second word (`grid_workspace.barrier`).
  public static let gridWorkspace: UInt64 = 0x3000_0000_0000
  /// Bytes of the grid workspace: `grid_workspace { unsigned wsSize; unsigned barrier; }`, padded.
  static let gridWorkspaceBytes = 16
}

/// A module-scope `.global` or `.const` variable that the device must allocate.
public struct PTXGlobalVariable: Sendable {
  /// The symbol name (`$str`, `myTable`, ...).
  public var name: String
  /// `.global` or `.const`.
  public var space: PTXStateSpace
  /// Bytes to allocate.
  public var size: Int
  /// Required alignment of the allocation.
  public var alignment: Int
  /// Initial contents (`size` bytes, zeros where the PTX gave none); symbol addresses inside
  /// it are zero here and listed in `relocations`.
  public var initializer: [UInt8]
  /// `(offset, symbol, addend)`: 8-byte fields that hold another symbol's address plus addend.
  public var relocations: [(offset: Int, symbol: String, addend: Int64)]
  /// Declared `.extern`: defined elsewhere, so it has no initializer of its own.
  public var isExtern: Bool
}

/// One kernel parameter's place in the packed parameter buffer.
public struct PTXParameter: Sendable, Equatable {
  /// Byte offset in the buffer.
  public var offset: Int
  /// Size in bytes.
  public var size: Int
  /// Alignment (natural, or `.align N`).
  public var alignment: Int
}

/// What the device reports about an `.entry`.
public struct PTXKernelInfo: Sendable {
  /// The entry's (mangled) name.
  public var name: String
  /// Parameters in declaration order.
  public var parameters: [PTXParameter]
  /// Size of the packed parameter buffer.
  public var parameterBytes: Int
  /// Static `.shared` bytes used by the kernel and the functions it calls.
  public var staticSharedBytes: Int
  /// `.local` bytes each thread needs (the entry's depot plus the deepest call chain's).
  public var localBytesPerThread: Int
  /// Bytes of the module's `.const` variables.
  public var constBytes: Int
  /// `.version` of the module.
  public var ptxVersion: (major: Int, minor: Int)
  /// `.target` of the module, e.g. `sm_75`.
  public var target: String
  /// Registers per thread as a compiler would allocate them (CU_FUNC_ATTRIBUTE_NUM_REGS):
  /// the virtual registers the entry declares (`.reg`, ranges expanded), at most what
  /// its bounds allow — see `allocatedRegisters`.
  public var registerCount: Int
  /// The most threads a block of it may have (CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK):
  /// 1024, or less by `.maxntid`/`.reqntid`.
  public var maxThreadsPerBlock: Int = 1024

  /// The registers ptxas would give a function that declares `declared` virtual
  /// registers: no more than `.maxnreg` (or CU_JIT_MAX_REGISTERS, which the linker
  /// turns into it), 255 (the most a thread can address on sm_50 and later), and
  /// what lets its largest block run on one SM's 64 K registers — `.maxntid`'s
  /// threads, else 1024, because every block size up to that launches here.
  /// Virtual registers are SSA names, far more than a compiler allocates: reported
  /// as they are, occupancy answers said 0 blocks fit (CUB divided by it in CuPy's sort).
  static func allocatedRegisters(declared: Int, maxRegisters: Int?, maxThreads: Int) -> Int {
    let threads = (min(max(maxThreads, 1), 1024) + 31) / 32 * 32
    return max(1, min(declared, maxRegisters ?? 255, 255, 65536 / threads))
  }
}

/// A parsed and lowered PTX module.
///
/// Load it with `init(source:)`, read `globals`, allocate them in device memory, tell the module
/// where they are with `bind(globalAddresses:)`, then `launch`. The module is immutable after
/// binding, so launches may run from several threads.
public final class PTXModule: @unchecked Sendable {
  /// `.version` of the module.
  public let version: (major: Int, minor: Int)
  /// The first `.target` word, e.g. `sm_75`.
  public let target: String
  /// The `.global` and `.const` variables the device must allocate, in declaration order.
  public let globals: [PTXGlobalVariable]
  /// Names of the `.entry` functions.
  public let kernelNames: [String]

  struct SharedVar {
    var size: Int
    var align: Int
    var isDynamic: Bool
  }
  let functions: [Result<LoweredFunction, PTXError>]
  let functionNames: [String: Int]
  let shared: [SharedVar]
  var addresses: [UInt64?]
  /// Per kernel, what its launches share (built at the first launch).
  let plans = Mutex<[String: LaunchPlan]>([:])
  let entryLayouts: [String: (params: [PTXParameter], bytes: Int)]

  /// Parses and lowers PTX text. Throws only for module-level errors; a function whose body is
  /// broken is kept as failed and reported by `kernel(named:)` / `launch`. A large module
  /// (CuPy's CUB, hundreds of MiB from a fat binary) takes a while: `progress` is called
  /// now and then, so a device can show it is alive.
  public init(source: String, progress: (() -> Void)? = nil) throws(PTXError) {
    var parser = Parser(source, progress: progress)
    let syntax = try parser.parseModule()
    version = syntax.version
    target = syntax.target

    var ctx = ModuleContext()
    var globals: [PTXGlobalVariable] = []
    var shared: [SharedVar] = []
    for v in syntax.variables {
      switch v.space {
      case .global, .const:
        if let i = ctx.globalIndex[v.name] {
          // A definition wins over an `.extern` declaration of the same name, in either order:
          // cuLinkComplete joins several PTX inputs into one text (PTX ISA §11.3 ".extern").
          if globals[i].isExtern && !v.isExtern { globals[i] = try PTXModule.globalVariable(v) }
          continue
        }
        ctx.globalIndex[v.name] = globals.count
        globals.append(try PTXModule.globalVariable(v))
      case .shared:
        if ctx.sharedIndex[v.name] != nil { continue }
        let (size, align) = Lowering.layout(v)
        ctx.sharedIndex[v.name] = shared.count
        shared.append(SharedVar(size: size, align: align, isDynamic: v.dims?.last == 0))
      default:
        throw .parse(line: v.line, token: v.name, expected: "a module-scope .global, .const or .shared variable")
      }
    }
    // Definitions win over prototypes (`.extern .func f(...);` followed by `.func f(...) {...}`).
    var chosen: [FunctionSyntax] = []
    var names: [String: Int] = [:]
    for f in syntax.functions {
      if let i = names[f.name] {
        if chosen[i].body == nil && chosen[i].error == nil { chosen[i] = f }
      } else {
        names[f.name] = chosen.count
        chosen.append(f)
      }
    }
    for (i, f) in chosen.enumerated() {
      ctx.functionIndex[f.name] = i
      if f.body == nil && f.error == nil { ctx.declaredOnly.insert(f.name) }
      var off = 0
      func place(_ list: [VariableDecl]) -> [(Int, Int)] {
        list.map { d in
          let (size, align) = Lowering.layout(d)
          off = (off + align - 1) / align * align
          defer { off += size }
          return (off, size)
        }
      }
      let returns = place(f.returns)
      let params = place(f.params)
      ctx.paramLayouts.append((params, returns))
      for case .declaration(let d) in f.body ?? [] where d.space == .shared {
        let (size, align) = Lowering.layout(d)
        ctx.sharedIndex["\(f.name)::\(d.name)"] = shared.count
        shared.append(SharedVar(size: size, align: align, isDynamic: d.dims?.last == 0))
      }
    }
    var lowered: [Result<LoweredFunction, PTXError>] = []
    var layouts: [String: (params: [PTXParameter], bytes: Int)] = [:]
    for f in chosen {
      progress?()
      if let e = f.error {
        lowered.append(.failure(.functionInvalid(name: f.name, reason: e.description)))
        continue
      }
      if f.body == nil {
        lowered.append(.failure(.functionInvalid(name: f.name, reason: "declared but not defined in this module")))
        continue
      }
      var l = Lowering(module: ctx, function: f)
      do {
        lowered.append(.success(try l.lower()))
      } catch {
        lowered.append(.failure(.functionInvalid(name: f.name, reason: error.description)))
      }
      if f.isEntry {
        var off = 0
        var params: [PTXParameter] = []
        for p in f.params {
          let (size, align) = Lowering.layout(p)
          off = (off + align - 1) / align * align
          params.append(PTXParameter(offset: off, size: size, alignment: align))
          off += size
        }
        layouts[f.name] = (params, off)
      }
    }
    self.globals = globals
    self.shared = shared
    self.functions = lowered
    self.functionNames = names
    self.kernelNames = chosen.filter(\.isEntry).map(\.name)
    self.entryLayouts = layouts
    self.addresses = Array(repeating: nil, count: globals.count)
  }

  static func globalVariable(_ v: VariableDecl) throws(PTXError) -> PTXGlobalVariable {
    let elemType = TypeCode.parse(v.type.dropFirst()) ?? (TypeCode.b | 0)
    let elem = TypeCode.bytes(elemType)
    var (size, align) = Lowering.layout(v)
    if v.dims?.last == 0 {  // `x[] = {...}`: the initializer gives the count
      size = v.initializer.count * elem
    }
    var bytes = [UInt8](repeating: 0, count: size)
    var relocations: [(Int, String, Int64)] = []
    for (k, item) in v.initializer.enumerated() {
      let off = k * elem
      guard off + elem <= size else {
        throw .parse(line: v.line, token: v.name, expected: "at most \(size / max(elem, 1)) initializer values")
      }
      var bits: UInt64
      switch item {
      case .bits(let b):
        bits = b
        if TypeCode.kind(elemType) == TypeCode.f {
          let d = Double(Int64(bitPattern: b))
          bits = elem == 8 ? d.bitPattern : UInt64(Float(d).bitPattern)
        }
      case .f32(let b): bits = elem == 8 ? Double(Float(bitPattern: b)).bitPattern : UInt64(b)
      case .f64(let b): bits = elem == 4 ? UInt64(Float(Double(bitPattern: b)).bitPattern) : b
      case .symbol(let s, let addend):
        relocations.append((off, s, addend))
        bits = 0
      }
      for j in 0..<elem { bytes[off + j] = UInt8(truncatingIfNeeded: bits >> (8 * UInt64(j))) }
    }
    return PTXGlobalVariable(
      name: v.name, space: v.space, size: size, alignment: align, initializer: bytes,
      relocations: relocations.map { (offset: $0.0, symbol: $0.1, addend: $0.2) }, isExtern: v.isExtern)
  }

  /// Tells the module where the device allocated each global (by name). Call once after
  /// loading and before the first launch; kernels that use an unbound global fail to launch.
  public func bind(globalAddresses: [String: UInt64]) {
    for (i, g) in globals.enumerated() { addresses[i] = globalAddresses[g.name] }
    plans.withLock { $0.removeAll() }  // their templates hold the old addresses
  }

  /// The device address bound to a global, if any.
  public func address(ofGlobal name: String) -> UInt64? {
    guard let i = globals.firstIndex(where: { $0.name == name }) else { return nil }
    return addresses[i]
  }

  /// A global's initial bytes with its relocations resolved against the bound addresses.
  public func initialBytes(ofGlobal name: String) throws(PTXError) -> [UInt8] {
    guard let g = globals.first(where: { $0.name == name }) else { throw .functionNotFound(name: name) }
    var bytes = g.initializer
    for r in g.relocations {
      guard let base = address(ofGlobal: r.symbol) else { throw .unboundSymbol(name: r.symbol) }
      let v = base &+ UInt64(bitPattern: r.addend)
      for j in 0..<min(8, bytes.count - r.offset) {
        bytes[r.offset + j] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(j)))
      }
    }
    return bytes
  }

  func lowered(_ name: String) throws(PTXError) -> (Int, LoweredFunction) {
    guard let i = functionNames[name] else { throw .functionNotFound(name: name) }
    switch functions[i] {
    case .success(let f): return (i, f)
    case .failure(let e): throw e
    }
  }

  /// Functions reachable from `root` (itself first); fails if any of them failed to load.
  func reachable(_ root: Int) throws(PTXError) -> [Int] {
    var seen: [Int] = [root]
    var k = 0
    while k < seen.count {
      let f: LoweredFunction
      switch functions[seen[k]] {
      case .success(let l): f = l
      case .failure(let e): throw e
      }
      for c in f.callees where !seen.contains(c) { seen.append(c) }
      k += 1
    }
    return seen
  }

  /// Shared-space layout of a kernel: static variables in declaration order, dynamic arrays after them.
  func sharedLayout(_ funcs: [Int]) -> (offsets: [Int: UInt64], staticBytes: Int, dynamicBase: Int) {
    var used = Set<Int>()
    for i in funcs { if case .success(let f) = functions[i] { used.formUnion(f.sharedSymbols) } }
    var offsets: [Int: UInt64] = [:]
    var off = 0
    var maxAlign = 16
    for i in used.sorted() where !shared[i].isDynamic {
      let a = shared[i].align
      off = (off + a - 1) / a * a
      offsets[i] = UInt64(off)
      off += shared[i].size
    }
    let staticBytes = off
    for i in used.sorted() where shared[i].isDynamic { maxAlign = max(maxAlign, shared[i].align) }
    let dyn = (off + maxAlign - 1) / maxAlign * maxAlign
    for i in used where shared[i].isDynamic { offsets[i] = UInt64(dyn) }
    return (offsets, staticBytes, dyn)
  }

  /// Deepest `.local` need and frame need along any call chain from `root` (a recursive
  /// chain counts each function once; deeper recursion fails at run time).
  func stackNeeds(_ root: Int) -> (localBytes: Int, frameSlots: Int) {
    func walk(_ i: Int, _ path: Set<Int>) -> (Int, Int) {
      guard case .success(let f) = functions[i] else { return (0, 0) }
      var best = (0, 0)
      for c in f.callees where !path.contains(c) {
        let r = walk(c, path.union([c]))
        best = (max(best.0, r.0), max(best.1, r.1))
      }
      return ((f.localBytes + 15) / 16 * 16 + best.0, f.frameSlots + best.1)
    }
    return walk(root, [root])
  }

  /// Metadata for an `.entry`: parameter layout, shared/local/const sizes, registers.
  public func kernel(named name: String) throws(PTXError) -> PTXKernelInfo {
    let (index, f) = try lowered(name)
    guard let layout = entryLayouts[name] else { throw .functionNotFound(name: name) }
    let funcs = try reachable(index)
    let shared = sharedLayout(funcs)
    let stack = stackNeeds(index)
    return PTXKernelInfo(
      name: name, parameters: layout.params, parameterBytes: layout.bytes, staticSharedBytes: shared.staticBytes,
      localBytesPerThread: stack.localBytes,
      constBytes: globals.filter { $0.space == .const }.reduce(0) { $0 + $1.size }, ptxVersion: version,
      target: target,
      registerCount: PTXKernelInfo.allocatedRegisters(
        declared: f.registerCount, maxRegisters: f.maxRegisters, maxThreads: f.maxThreads ?? 1024),
      maxThreadsPerBlock: min(1024, f.maxThreads ?? 1024))
  }
}
