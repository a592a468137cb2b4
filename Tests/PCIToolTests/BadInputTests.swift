import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Issue 15: "Bad input everywhere (CLI, environment, device names, images)
/// gives one clear line and a defined exit status." Every executable of ours
/// — pcitool (each subcommand), vgpu-mediator, vgpu-bench and the tools/
/// scripts that take arguments — is run as a user runs it with bad command
/// lines and bad environments. Each case states the exit status (1 the
/// operation failed, 2 the command line or environment is wrong), and every
/// case checks that standard error is exactly one non-empty line, that it
/// starts with the program's name and names what was wrong, and that no
/// process trapped, crashed or hung (README "Errors and exit status").
/// The shims' side (VGPU_DEVICE, VGPU_DEBUG, module images) is
/// ShimTests/ShimBadInputTests.
@Suite struct BadInputTests {
  enum Tool: Sendable, CustomStringConvertible {
    case pcitool, mediator, bench
    /// A script under tools/, run with PATH=/usr/bin:/bin: swift is not
    /// there, so a script that reached its build step before checking its
    /// arguments fails here (127) instead of building.
    case script(String)

    var description: String {
      switch self {
      case .pcitool: "pcitool"
      case .mediator: "vgpu-mediator"
      case .bench: "vgpu-bench"
      case .script(let path): path
      }
    }
    /// The name the line starts with.
    var prefix: String {
      switch self {
      case .script(let path): String(path.split(separator: "/").last!)
      default: description
      }
    }
    var executable: String {
      switch self {
      case .script(let path): Paths.packageRoot.appendingPathComponent(path).path
      default: MediatorProcess.binaries.appendingPathComponent(description).path
      }
    }
  }

  struct Case: Sendable, CustomTestStringConvertible {
    var tool: Tool
    var arguments: [String]
    var environment: [String: String] = [:]
    var status: Int32
    /// Words the line contains (case-insensitively): what was wrong, or what to do.
    var says: [String]

    var testDescription: String {
      let env = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value) " }.joined()
      return env
        + ([tool.description] + arguments.map { $0.isEmpty || $0.contains(" ") ? "'\($0)'" : $0 })
        .joined(separator: " ")
    }
  }

  static func pcitool(_ arguments: [String], _ status: Int32, says: [String], env: [String: String] = [:]) -> Case {
    Case(tool: .pcitool, arguments: arguments, environment: env, status: status, says: says)
  }
  static func mediator(_ arguments: [String], _ status: Int32, says: [String], env: [String: String] = [:]) -> Case {
    // A socket of its own in the scratch folder: a case that wrongly starts serving cannot take another's.
    let socket = arguments.contains {
      ["--vm", "--ivshmem-socket", "--shared-bar", "--socket", "--vm-bar"].contains($0)
    }
    return Case(
      tool: .mediator,
      arguments: arguments + (socket ? [] : ["--socket", BadInput.path("mediator-\(UUID().uuidString).sock")]),
      environment: env, status: status, says: says)
  }
  static func bench(_ arguments: [String], _ status: Int32, says: [String], env: [String: String] = [:]) -> Case {
    Case(tool: .bench, arguments: arguments, environment: env, status: status, says: says)
  }
  static func script(_ path: String, _ arguments: [String], _ status: Int32, says: [String]) -> Case {
    Case(tool: .script(path), arguments: arguments, status: status, says: says)
  }

  static let huge = "99999999999999999999"

  // MARK: pcitool

  static let pcitoolCases: [Case] = {
    var cases: [Case] = [
      pcitool(["bogus"], 2, says: ["bogus", "--help"]),
      pcitool(["--bogus"], 2, says: ["--bogus", "--help"]),
      pcitool(["list", "--bogus"], 2, says: ["--bogus"]),
      pcitool(["list", "extra"], 2, says: ["extra"]),
      pcitool(["show", "00:05.0", "extra"], 2, says: ["extra"]),
      pcitool(["probe", "sim", "extra"], 2, says: ["extra"]),
      // PCI addresses and vendor:device IDs that are not.
      pcitool(["show", "zz:zz.z"], 2, says: ["zz:zz.z"]),
      pcitool(["show", "0000:00:05.9"], 2, says: ["0000:00:05.9"]),
      pcitool(["show", "1:2:3:4"], 2, says: ["1:2:3:4"]),
      pcitool(["show", ""], 2, says: ["''"]),
      pcitool(["dump", "zz:zz.z"], 2, says: ["zz:zz.z"]),
      pcitool(["dump", "0000:00:05.9", "--extended"], 2, says: ["0000:00:05.9"]),
      pcitool(["show", "1af4:"], 2, says: ["1af4:"]),
      pcitool(["show", ":1110"], 2, says: [":1110"]),
      pcitool(["show", "1af4:zzzz"], 2, says: ["1af4:zzzz"]),
      pcitool(["show", "12345:1110"], 2, says: ["12345:1110"]),
      // Well formed, but nothing there.
      pcitool(["show", "ffff:ff:1f.7"], 1, says: ["ffff:ff:1f.7"]),
      pcitool(["dump", "ffff:ff:1f.7"], 1, says: ["ffff:ff:1f.7"]),
      pcitool(["status", "ffff:ff:1f.7"], 1, says: ["ffff:ff:1f.7"]),
      pcitool(["status", "zz:zz.z"], 2, says: ["zz:zz.z"]),
      pcitool(["status"], 2, says: ["missing", "address"]),
      // bind and unbind, on an empty sysfs tree (nothing real is touched).
      pcitool(["bind"], 2, says: ["missing"]),
      pcitool(["bind", "00:05.0"], 2, says: ["missing", "driver"]),
      pcitool(["bind", "zz:zz.z", "vfio-pci"], 2, says: ["zz:zz.z"]),
      pcitool(["bind", "00:05.0", "../vfio-pci"], 2, says: ["../vfio-pci", "driver"]),
      pcitool(["bind", "00:05.0", ""], 2, says: ["driver"]),
      pcitool(["bind", "00:05.0", "vfio-pci", "--timeout", "-5"], 2, says: ["--timeout"]),
      pcitool(["bind", "00:05.0", "vfio-pci", "--timeout", "abc"], 2, says: ["--timeout", "abc"]),
      pcitool(["bind", "00:05.0", "vfio-pci", "--timeout", huge], 2, says: ["--timeout"]),
      pcitool(["unbind"], 2, says: ["missing"]),
      pcitool(["unbind", "1:2:3:4"], 2, says: ["1:2:3:4"]),
      pcitool(["unbind", "0000:00:05.0"], 1, says: ["0000:00:05.0"]),
      // Numbers that are not, or out of range.
      pcitool(["probe", "sim", "--timeout", "0"], 2, says: ["--timeout"]),
      pcitool(["probe", "sim", "--timeout", "-1"], 2, says: ["--timeout"]),
      pcitool(["probe", "sim", "--timeout", "abc"], 2, says: ["--timeout", "abc"]),
      pcitool(["probe", "sim", "--timeout", ""], 2, says: ["--timeout"]),
      pcitool(["probe", "sim", "--timeout", huge], 2, says: ["--timeout"]),
      pcitool(["probe", "sim", "--timeout", "nan"], 2, says: ["--timeout"]),
      pcitool(["probe", "sim", "--timeout"], 2, says: ["--timeout"]),
      pcitool(["selftest", "sim", "--threads", "0"], 2, says: ["--threads"]),
      pcitool(["selftest", "sim", "--threads", "-1"], 2, says: ["--threads"]),
      pcitool(["selftest", "sim", "--threads", "abc"], 2, says: ["--threads", "abc"]),
      pcitool(["selftest", "sim", "--threads", ""], 2, says: ["--threads"]),
      pcitool(["selftest", "sim", "--threads", huge], 2, says: ["--threads"]),
      pcitool(["selftest", "sim", "--threads", "65"], 2, says: ["--threads"]),
      pcitool(["top", "sim", "--interval", "0"], 2, says: ["--interval"]),
      pcitool(["top", "sim", "--interval", "abc"], 2, says: ["--interval", "abc"]),
      pcitool(["top", "sim", "--interval", huge], 2, says: ["--interval"]),
      pcitool(["top", "sim", "--sort", "bogus"], 2, says: ["--sort", "bogus"]),
      pcitool(["bench", "sim", "--quick", "--timeout", "abc"], 2, says: ["--timeout"]),
      pcitool(["bench", "sim", "--bogus"], 2, says: ["--bogus"]),
      // The hidden helpers, as the tests and bench start them.
      pcitool(["_pingpong"], 2, says: ["missing"]),
      pcitool(["_pingpong", BadInput.path("missing")], 1, says: [BadInput.path("missing")]),
      pcitool(["_pingpong", BadInput.path("regular")], 1, says: [BadInput.path("regular")]),
      pcitool(["_wakeups", "sim", "--rounds", "0"], 2, says: ["--rounds"]),
      pcitool(["_wakeups", "sim", "--pause-ms", "-1"], 2, says: ["--pause-ms"]),
      pcitool(["_wakeups", "sim", "--pause-ms", "99999999999"], 2, says: ["--pause-ms"]),
      pcitool(["_wakeups", "sim", "--rounds", huge], 2, says: ["--rounds"]),
      pcitool(["_edu-dma"], 2, says: ["missing"]),
      pcitool(["_edu-dma", "zz:zz.z"], 2, says: ["zz:zz.z"]),
      pcitool(["_edu-dma", "ffff:ff:1f.7"], 1, says: ["ffff:ff:1f.7"]),
    ]
    // Every bad device name, on the command line and in VGPU_DEVICE, for
    // each command that opens a vGPU.
    for d in BadInput.deviceNames {
      let name = d.name.trimmingCharacters(in: .whitespaces)
      cases.append(pcitool(["probe", d.name, "--timeout", "1"], d.status, says: [name]))
      cases.append(
        pcitool(["probe", "--timeout", "1"], d.status, says: [name, "VGPU_DEVICE"], env: ["VGPU_DEVICE": d.name]))
    }
    for d in BadInput.deviceNames where ["foo:bar", "unix:", "shm:" + BadInput.path("garbage")].contains(d.name) {
      cases += [
        pcitool(["selftest", d.name, "--timeout", "1"], d.status, says: [d.name]),
        pcitool(
          ["selftest", "--timeout", "1"], d.status, says: [d.name, "VGPU_DEVICE"], env: ["VGPU_DEVICE": d.name]),
        pcitool(["bench", d.name, "--quick", "--timeout", "1"], d.status, says: [d.name]),
        pcitool(["top", d.name, "--once", "--timeout", "1"], d.status, says: [d.name]),
        pcitool(
          ["top", "--once", "--timeout", "1"], d.status, says: [d.name, "VGPU_DEVICE"], env: ["VGPU_DEVICE": d.name]),
        pcitool(["_wakeups", d.name, "--rounds", "1", "--timeout", "1"], d.status, says: [d.name]),
      ]
    }
    // The PTX engine's variables, read where `sim` runs the device in this process.
    for (variable, value) in BadInput.engineVariables {
      cases.append(pcitool(["probe", "sim"], 2, says: [variable, value], env: [variable: value]))
      cases.append(pcitool(["selftest", "sim"], 2, says: [variable, value], env: [variable: value]))
    }
    return cases
  }()

  // MARK: vgpu-mediator

  static let mediatorCases: [Case] = {
    var cases: [Case] = [
      mediator(["--bogus"], 2, says: ["--bogus", "--help"]),
      mediator(["extra"], 2, says: ["extra"]),
      mediator(["--memory", "abc"], 2, says: ["--memory", "abc"]),
      mediator(["--memory", "0"], 2, says: ["--memory"]),
      mediator(["--memory", "-1"], 2, says: ["--memory"]),
      mediator(["--memory", ""], 2, says: ["--memory"]),
      mediator(["--memory", huge], 2, says: ["--memory"]),
      mediator(["--memory", "99999999999T"], 2, says: ["--memory"]),
      mediator(["--memory"], 2, says: ["--memory"]),
      mediator(["--backend", "bogus"], 2, says: ["--backend", "bogus"]),
      mediator(["--gpu", "-1"], 2, says: ["--gpu"]),
      mediator(["--gpu", "abc"], 2, says: ["--gpu", "abc"]),
      mediator(["--gpu", huge], 2, says: ["--gpu"]),
      mediator(["--queue-pairs", "0"], 2, says: ["--queue-pairs"]),
      mediator(["--queue-pairs", huge], 2, says: ["--queue-pairs"]),
      mediator(["--max-clients", "0"], 2, says: ["--max-clients", "1-65536"]),
      mediator(["--max-clients", "65537"], 2, says: ["--max-clients", "1-65536"]),
      mediator(["--max-clients", "abc"], 2, says: ["--max-clients", "abc"]),
      mediator(["--max-clients", huge], 2, says: ["--max-clients"]),
      mediator(["--serving-threads", "65"], 2, says: ["--serving-threads 65", "1-64", "0 for a thread per process"]),
      mediator(["--serving-threads", "-1"], 2, says: ["--serving-threads"]),
      mediator(["--serving-threads", "two"], 2, says: ["--serving-threads", "two"]),
      mediator(["--shared-bar", "--serving-threads", "2"], 2, says: ["--serving-threads", "--queue-pairs"]),
      mediator(["--shared-bar", "--serving-priority", "realtime"], 2, says: ["--serving-priority", "--shared-bar"]),
      mediator(
        ["--serving-priority", "fast"], 2, says: ["--serving-priority 'fast'", "normal, nice:N", "realtime[:P]"]),
      mediator(["--serving-priority", "nice:-21"], 2, says: ["'nice:-21'", "-20 to 19"]),
      mediator(["--serving-priority", "nice"], 2, says: ["'nice'"]),
      mediator(["--serving-priority", "realtime:0"], 2, says: ["'realtime:0'", "1 to 99"]),
      mediator(["--serving-priority", "realtime:x"], 2, says: ["'realtime:x'"]),
      mediator(
        ["--serving-threads", "0", "--serving-priority", "nice:5"], 2, says: ["--serving-threads 0", "has none"]),
      mediator(
        ["--vm-bar", "/dev/shm/x,socket=/tmp/x.sock", "--serving-threads", "2"], 2,
        says: ["--serving-threads", "--vm-bar"]),
      mediator(
        ["--vm-bar", "/dev/shm/x,socket=/tmp/x.sock", "--serving-priority", "nice:-5"], 2,
        says: ["--serving-priority", "--vm-bar"]),
      mediator(["--depth", "3"], 2, says: ["--depth"]),
      mediator(["--depth", "0"], 2, says: ["--depth"]),
      mediator(["--slot-size", "1000"], 2, says: ["--slot-size"]),
      mediator(["--slot-size", "abc"], 2, says: ["--slot-size"]),
      mediator(["--slots", "0"], 2, says: ["--slots"]),
      mediator(["--slots", "-3"], 2, says: ["--slots"]),
      mediator(["--cuda-driver-version", "12"], 2, says: ["--cuda-driver-version"]),
      mediator(["--cuda-driver-version", "x.y"], 2, says: ["--cuda-driver-version"]),
      mediator(["--kernel-budget", "-1"], 2, says: ["--kernel-budget"]),
      mediator(["--kernel-budget", "abc"], 2, says: ["--kernel-budget", "abc"]),
      mediator(["--log-level", "loud"], 2, says: ["--log-level", "loud"]),
      mediator(["--metrics-listen", "nonsense"], 2, says: ["--metrics-listen", "nonsense"]),
      mediator(["--metrics-listen", ":99999"], 2, says: ["--metrics-listen"]),
      mediator(["--allow-uid", "abc"], 2, says: ["--allow-uid", "abc"]),
      // Options that conflict.
      mediator(["--vectors", "4"], 2, says: ["--vectors", "--ivshmem-socket"]),
      mediator(["--path", BadInput.path("bar")], 2, says: ["--path"]),
      mediator(["--vm", "--socket", BadInput.path("s.sock")], 2, says: ["--socket", "--vm"]),
      // --host-window: a VM's page-locked window, whole pages; not for host processes.
      mediator(["--host-window", "64M"], 2, says: ["--host-window", "--vm"]),
      mediator(["--shared-bar", "--host-window", "64M"], 2, says: ["--host-window", "--vm"]),
      mediator(["--vm", "--host-window", "lots"], 2, says: ["--host-window 'lots'", "such as 256M"]),
      mediator(["--vm", "--host-window", "0"], 2, says: ["--host-window '0'", "whole 4 KiB pages"]),
      mediator(["--vm", "--host-window", "1000"], 2, says: ["--host-window '1000'", "whole 4 KiB pages"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",window=lots"], 2, says: ["window=lots", "whole 4 KiB pages"]),
      mediator(
        ["--vm-bar", BadInput.path("v1"), "--host-window", "64M"], 2, says: ["--host-window", "window=SIZE"]),
      mediator(["--shared-bar", "--vm", "--path", BadInput.path("bar")], 2, says: ["--shared-bar", "--vm"]),
      mediator(["--shared-bar", "--max-clients", "4"], 2, says: ["--max-clients", "--queue-pairs"]),
      mediator(
        ["--ivshmem-socket", BadInput.path("i.sock"), "--path", BadInput.path("bar2"), "--vectors", "0"], 2,
        says: ["--vectors"]),
      // --vm-bar: each VM's PATH[,socket=SOCKET][,memory=SIZE][,name=NAME], and what it cannot go with.
      mediator(["--vm-bar", ""], 2, says: ["--vm-bar", "BAR file comes first", "PATH[,socket="]),
      mediator(["--vm-bar", "memory=1G"], 2, says: ["BAR file comes first", "memory=1G"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",sock=x"], 2, says: ["unknown key 'sock'", "PATH[,socket="]),
      mediator(["--vm-bar", BadInput.path("v1") + ",socket"], 2, says: ["'socket' is not KEY=VALUE"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",socket="], 2, says: ["socket= has no value"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",memory=lots"], 2, says: ["memory=lots", "not a size"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",name=a b"], 2, says: ["name=a b", "letters, digits"]),
      mediator(["--vm-bar", BadInput.path("v1") + ",name=a,name=b"], 2, says: ["name= is given twice"]),
      mediator(
        ["--vm-bar", BadInput.path("v1"), "--vm-bar", BadInput.path("v1") + ",name=other"], 2,
        says: ["BAR file \(BadInput.path("v1"))", "a file of its own"]),
      mediator(
        ["--vm-bar", BadInput.path("v1") + ",socket=s", "--vm-bar", BadInput.path("v2") + ",socket=s"], 2,
        says: ["the socket s", "of its own"]),
      mediator(
        ["--vm-bar", BadInput.path("a/vm"), "--vm-bar", BadInput.path("b/vm")], 2,
        says: ["the name 'vm'", "name="]),
      mediator(
        ["--memory", "4G", "--vm-bar", BadInput.path("v1") + ",memory=8G"], 2,
        says: ["memory= (8192 MiB)", "--memory 4G", "which all VMs share"]),
      mediator(["--vm-bar", BadInput.path("v1"), "--path", BadInput.path("v2")], 2, says: ["--vm-bar", "--path"]),
      mediator(
        ["--vm-bar", BadInput.path("v1"), "--ivshmem-socket", BadInput.path("i.sock")], 2,
        says: ["--vm-bar", "--ivshmem-socket"]),
      mediator(["--vm-bar", BadInput.path("v1"), "--vm"], 2, says: ["--vm-bar", "--vm"]),
      mediator(
        ["--vm-bar", BadInput.path("v1"), "--socket", BadInput.path("s.sock")], 2, says: ["--socket", "--vm-bar"]),
      mediator(["--vm-bar", BadInput.path("v1"), "--vectors", "4"], 2, says: ["--vectors", "socket="]),
      // Well formed, but not usable.
      mediator(["--vm-bar", BadInput.path("regular")], 1, says: [BadInput.path("regular"), "not a vGPU BAR"]),
      mediator(["--allow-group", "no-such-group-vgpu"], 1, says: ["no-such-group-vgpu"]),
      mediator(["--socket", BadInput.path("missing") + "/deeper/x.sock"], 1, says: ["--socket"]),
      mediator(["--socket", BadInput.path("regular")], 1, says: [BadInput.path("regular"), "not a socket"]),
      mediator(["--socket", BadInput.path("directory")], 1, says: [BadInput.path("directory"), "not a socket"]),
      mediator(["--vm", "--path", BadInput.path("missing") + "/deeper/bar"], 1, says: ["deeper/bar"]),
      mediator(["--vm", "--path", BadInput.path("directory")], 1, says: [BadInput.path("directory")]),
      mediator(["--vm", "--path", BadInput.path("regular")], 1, says: [BadInput.path("regular"), "not a vGPU BAR"]),
      mediator(
        ["--shared-bar", "--path", BadInput.path("garbage")], 1, says: [BadInput.path("garbage"), "not a vGPU BAR"]),
      mediator(
        ["--ivshmem-socket", BadInput.path("regular"), "--path", BadInput.path("bar3")], 1,
        says: [BadInput.path("regular"), "not a socket"]),
      mediator(
        ["--backend", "cuda", "--cuda-library", BadInput.path("missing")], 1, says: [BadInput.path("missing")]),
      mediator(
        ["--backend", "cuda", "--cuda-library", BadInput.path("garbage")], 1, says: [BadInput.path("garbage")]),
    ]
    for (variable, value) in BadInput.engineVariables {
      cases.append(mediator([], 2, says: [variable, value], env: [variable: value]))
    }
    return cases
  }()

  // MARK: vgpu-bench

  static let benchCases: [Case] = {
    var cases: [Case] = [
      bench(["--bogus"], 2, says: ["--bogus", "--help"]),
      bench(["extra"], 2, says: ["extra"]),
      bench(["--max-size", "abc"], 2, says: ["--max-size", "abc"]),
      bench(["--max-size", "0"], 2, says: ["--max-size"]),
      bench(["--max-size", "-1"], 2, says: ["--max-size"]),
      bench(["--max-size", ""], 2, says: ["--max-size"]),
      bench(["--max-size", huge], 2, says: ["--max-size"]),
      bench(["--max-size", "99999999999G"], 2, says: ["--max-size"]),
      bench(["--discovery-runs", "0"], 2, says: ["--discovery-runs"]),
      bench(["--discovery-runs", "abc"], 2, says: ["--discovery-runs", "abc"]),
      bench(["--discovery-runs", huge], 2, says: ["--discovery-runs"]),
      bench(["--mediator", BadInput.path("missing")], 2, says: ["--mediator", BadInput.path("missing")]),
      bench(["--mediator", BadInput.path("regular")], 2, says: ["--mediator", BadInput.path("regular")]),
      bench(["--out", BadInput.path("regular") + "/sub", "--quick"], 1, says: [BadInput.path("regular") + "/sub"]),
      bench(["--only-idle", "--only-engine"], 2, says: ["--only-idle", "--only-engine"]),
      bench(["--only-scale", "--only-engine"], 2, says: ["--only-scale", "--only-engine"]),
      bench(["--only-copies", "--only-engine"], 2, says: ["--only-copies", "--only-engine"]),
      bench(["--sizes", "abc"], 2, says: ["--sizes", "abc"]),
      bench(["--sizes", "64K,,1M"], 2, says: ["--sizes", "64K,,1M"]),
      bench(["--sizes", "0"], 2, says: ["--sizes"]),
      // The internal modes, as the suite starts them.
      bench(["_bogus"], 2, says: ["_bogus"]),
      bench(["_nops"], 2, says: ["_nops"]),
      bench(["_nops", "sim", "abc", "1"], 2, says: ["_nops"]),
      bench(["_direct-nops"], 2, says: ["_direct-nops"]),
      bench(["_pingpong"], 2, says: ["_pingpong"]),
      bench(["_client", "foo:bar"], 1, says: ["foo:bar"]),
      bench(["_copy-sweep"], 2, says: ["_copy-sweep"]),
      bench(["_copy-sweep", "sim", "abc"], 2, says: ["_copy-sweep"]),
    ]
    for (variable, value) in BadInput.engineVariables {
      cases.append(bench(["--quick"], 2, says: [variable, value], env: [variable: value]))
    }
    return cases
  }()

  // MARK: tools/

  static let scriptCases: [Case] = [
    script("tools/fuzz", [], 2, says: ["TARGET"]),
    script("tools/fuzz", ["bogus-target"], 2, says: ["bogus-target"]),
    script("tools/fuzz", ["all", "abc"], 2, says: ["abc"]),
    script("tools/fuzz", ["all", "-5"], 2, says: ["-5"]),
    script("tools/test", ["--sanitize"], 2, says: ["--sanitize"]),
    script("tools/test", ["--sanitize", "bogus"], 2, says: ["bogus"]),
    script("tools/test", ["--fuzz-smoke", "--sanitize", "address"], 2, says: ["--fuzz-smoke", "--sanitize"]),
    script("tools/hostile-run", ["abc"], 2, says: ["SECONDS"]),
    script("tools/hostile-run", ["10", "abc"], 2, says: ["SEED"]),
    script("tools/hostile-run", ["-5"], 2, says: ["SECONDS"]),
    script("tools/hostile-run", ["10", "20", "30"], 2, says: ["30"]),
    script("tools/bench", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/bench", ["--max-size"], 2, says: ["--max-size"]),
    script("tools/bench", ["extra"], 2, says: ["extra"]),
    script("tools/gpu-check", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/gpu-check", ["--gpu"], 2, says: ["--gpu"]),
    script("tools/gpu-check", ["--gpu", "abc"], 2, says: ["--gpu"]),
    script("tools/gpu-check", ["--config", "bogus"], 2, says: ["--config"]),
    script("tools/gpu-check", ["--budget", "-1"], 2, says: ["--budget"]),
    script("tools/build-shims", ["bogus"], 2, says: ["bogus"]),
    script("tools/gen-selftest-ptx", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/install-udev", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/install-udev", ["--address"], 2, says: ["--address"]),
    script("tools/install-udev", ["--address", "zz:zz.z"], 2, says: ["zz:zz.z"]),
    script("tools/install-udev", ["--user"], 2, says: ["--user"]),
    script("tools/install-udev", ["--remove", "--user", "nobody"], 2, says: ["--remove"]),
    script("tools/vgpu-shims", [], 2, says: ["install"]),
    script("tools/vgpu-shims", ["bogus"], 2, says: ["bogus"]),
    script("tools/vgpu-shims", ["install"], 2, says: ["--service"]),
    script("tools/vgpu-shims", ["install", "--service"], 2, says: ["--service"]),
    script("tools/vgpu-shims", ["install", "--service", "a b"], 2, says: ["a b"]),
    script("tools/vgpu-shims", ["install", "--service", "x", "--bogus"], 2, says: ["--bogus"]),
    script("tools/setup", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/vm/e2e", ["--bogus"], 2, says: ["--bogus"]),
    script("tools/vm/capture-pci-fixtures", ["--bogus"], 2, says: ["--bogus"]),
  ]

  static let allCases = pcitoolCases + mediatorCases + benchCases + scriptCases

  /// The test's environment without the variables the cases set.
  static let baseEnvironment: [String: String] = {
    var env = ProcessInfo.processInfo.environment
    for v in ["VGPU_DEVICE", "VGPU_DEBUG", "VGPU_PTX_ENGINE", "VGPU_PTX_THREADS"] { env[v] = nil }
    // bind, unbind and status look at a sysfs without devices and an empty /dev: nothing real is touched.
    try? FileManager.default.createDirectory(
      atPath: BadInput.path("sysfs/bus/pci/devices"), withIntermediateDirectories: true)
    try? FileManager.default.createDirectory(atPath: BadInput.path("dev"), withIntermediateDirectories: true)
    env["PCITOOL_SYSFS_ROOT"] = BadInput.path("sysfs")
    env["PCITOOL_DEV_ROOT"] = BadInput.path("dev")
    return env
  }()

  @Test(arguments: allCases) func oneLineAndADefinedStatus(_ c: Case) throws {
    var env = Self.baseEnvironment
    if case .script = c.tool {
      env["PATH"] = "/usr/bin:/bin"
    }
    env.merge(c.environment) { $1 }
    // In the scratch folder: a case that wrongly ran would write there (vgpu-bench's
    // default --out is docs/bench, relative), never into the package.
    let r = try BadInput.run(c.tool.executable, c.arguments, environment: env, seconds: 60, directory: BadInput.scratch)
    #expect(r.crash == nil, "crashed or hung (\(r.crash ?? "")): \(r)")
    #expect(r.status == c.status, "exit status \(r.status), not \(c.status): \(r)")
    let lines = r.errorLines
    #expect(lines.count == 1, "\(lines.count) lines on stderr, not one: \(r)")
    guard let line = lines.first else { return }
    #expect(line.contains(c.tool.prefix), "the line does not name \(c.tool.prefix): \(line)")
    for word in c.says {
      #expect(line.localizedCaseInsensitiveContains(word), "the line does not say '\(word)': \(line)")
    }
  }

  /// tools/bench checks its arguments itself before building: every option
  /// vgpu-bench's --help lists is one it knows (else a valid one would be refused).
  @Test func toolsBenchKnowsEveryOptionOfVGPUBench() throws {
    let help = try BadInput.run(Tool.bench.executable, ["--help"])
    #expect(help.status == 0, "\(help)")
    // The OPTIONS section's own lines (two spaces in; continuation lines are further in).
    let section = help.stdout.components(separatedBy: "OPTIONS:").last ?? ""
    let options = Set(
      section.split(separator: "\n").filter { $0.hasPrefix("  -") }.flatMap {
        $0.split(whereSeparator: { " ,".contains($0) }).filter { $0.hasPrefix("--") }.map(String.init)
      })
    #expect(options.count >= 10, "\(help.stdout)")
    let script = try String(contentsOf: Paths.packageRoot.appendingPathComponent("tools/bench"), encoding: .utf8)
    for option in options {
      #expect(script.contains(option), "tools/bench does not know vgpu-bench's \(option)")
    }
  }
}

extension BadInput {
  /// The PTX engine's variables with values that are not settings.
  static let engineVariables: [(String, String)] = [
    ("VGPU_PTX_ENGINE", "bogus"), ("VGPU_PTX_THREADS", "abc"), ("VGPU_PTX_THREADS", "0"),
    ("VGPU_PTX_THREADS", "-1"), ("VGPU_PTX_THREADS", "99999999"),
  ]
}
