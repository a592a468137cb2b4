import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// One `KEY{attribute}OP"value"` of a udev rule line.
struct UdevToken: Equatable {
  var key: String
  var attribute: String?
  var op: String
  var value: String

  var isMatch: Bool { op == "==" || op == "!=" }
}

/// Parses udev rules as systemd-udevd (252) reads them, strictly: every line is
/// a comment, empty, or comma-separated tokens with known keys and operators.
enum UdevRules {
  static let matchKeys: Set<String> = [
    "ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS", "ATTR", "ATTRS",
    "SYSCTL", "ENV", "CONST", "TAG", "TAGS", "TEST", "PROGRAM", "RESULT", "NAME", "SYMLINK",
  ]
  static let assignKeys: Set<String> = [
    "ATTR", "SYSCTL", "ENV", "TAG", "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "RUN", "IMPORT",
    "OPTIONS", "LABEL", "GOTO", "PROGRAM",
  ]
  static let keysWithAttribute: Set<String> = [
    "ATTR", "ATTRS", "SYSCTL", "ENV", "TEST", "RUN", "IMPORT", "SECLABEL", "CONST",
  ]

  struct ParseError: Error, CustomStringConvertible {
    var line: Int
    var why: String
    var description: String { "line \(line): \(why)" }
  }

  /// The rule lines (comments and blanks dropped), with their line numbers.
  static func parse(_ text: String) throws -> [(line: Int, tokens: [UdevToken])] {
    var rules: [(Int, [UdevToken])] = []
    for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.isEmpty || line.hasPrefix("#") { continue }
      rules.append((index + 1, try tokens(line, number: index + 1)))
    }
    return rules
  }

  static func tokens(_ line: String, number: Int) throws -> [UdevToken] {
    func fail(_ why: String) -> ParseError { ParseError(line: number, why: why) }
    var result: [UdevToken] = []
    var s = Substring(line)
    while true {
      s = s.drop { $0 == " " || $0 == "\t" }
      if s.isEmpty { break }
      let key = String(s.prefix { $0.isUppercase || $0 == "_" })
      guard !key.isEmpty else { throw fail("expected a key at '\(s)'") }
      s = s.dropFirst(key.count)
      var attribute: String?
      if s.first == "{" {
        guard let close = s.firstIndex(of: "}") else { throw fail("unclosed { after \(key)") }
        attribute = String(s[s.index(after: s.startIndex)..<close])
        s = s[s.index(after: close)...]
      }
      guard let op = ["==", "!=", "+=", "-=", ":=", "="].first(where: { s.hasPrefix($0) }) else {
        throw fail("expected an operator after \(key)")
      }
      s = s.dropFirst(op.count)
      guard s.first == "\"" else { throw fail("the value of \(key) must be in double quotes") }
      s = s.dropFirst()
      guard let end = s.firstIndex(of: "\"") else { throw fail("unterminated value of \(key)") }
      let token = UdevToken(key: key, attribute: attribute, op: op, value: String(s[..<end]))
      s = s[s.index(after: end)...]
      guard (token.isMatch ? matchKeys : assignKeys).contains(key) else {
        throw fail("\(key) does not take \(op)")
      }
      if attribute != nil, !keysWithAttribute.contains(key) { throw fail("\(key) takes no {attribute}") }
      if ["ATTR", "ATTRS", "ENV", "SYSCTL"].contains(key), attribute?.isEmpty ?? true {
        throw fail("\(key) needs an {attribute}")
      }
      if key == "RUN", let a = attribute, !["builtin", "program"].contains(a) { throw fail("RUN{\(a)} is unknown") }
      if key == "MODE", Int(token.value, radix: 8) == nil { throw fail("MODE \(token.value) is not octal") }
      result.append(token)
      s = s.drop { $0 == " " || $0 == "\t" }
      if s.isEmpty { break }
      guard s.first == "," else { throw fail("expected ',' before '\(s)'") }
      s = s.dropFirst()
    }
    guard !result.isEmpty else { throw fail("empty rule") }
    return result
  }
}

/// What udevd would do for one event, by a small evaluator of the keys the
/// vGPU rules use (matches first, then assignments, as udevd orders tokens).
struct UdevEvent {
  var action = "add"
  var subsystem: String
  var kernel: String
  var attributes: [String: String] = [:]
  /// Attributes of the parent device, for ATTRS.
  var parentAttributes: [String: String] = [:]

  struct Result: Equatable {
    var env: [String: String] = [:]
    var written: [String: String] = [:]
    var run: [String] = []
    var group: String?
    var mode: String?
  }

  func apply(_ rules: [(line: Int, tokens: [UdevToken])], program: (String) -> Bool) -> Result {
    var r = Result()
    func substitute(_ s: String) -> String {
      s.replacingOccurrences(of: "%k", with: kernel).replacingOccurrences(of: "$kernel", with: kernel)
    }
    func glob(_ pattern: String, _ value: String) -> Bool {
      pattern.split(separator: "|", omittingEmptySubsequences: false).contains { fnmatch(String($0), value, 0) == 0 }
    }
    var i = 0
    while i < rules.count {
      let tokens = rules[i].tokens
      i += 1
      let matched = tokens.filter(\.isMatch).allSatisfy { t in
        let actual: String?
        switch t.key {
        case "ACTION": actual = action
        case "SUBSYSTEM": actual = subsystem
        case "KERNEL": actual = kernel
        case "ATTR": actual = attributes[t.attribute!]
        case "ATTRS": actual = attributes[t.attribute!] ?? parentAttributes[t.attribute!]
        case "ENV": actual = r.env[t.attribute!] ?? ""
        case "PROGRAM": return program(substitute(t.value)) == (t.op == "==")
        default:
          Issue.record("the evaluator does not know \(t.key)")
          return false
        }
        let hit = actual.map { glob(t.value, $0) } ?? false
        return t.op == "==" ? hit : !hit
      }
      guard matched else { continue }
      for t in tokens where !t.isMatch {
        switch (t.key, t.attribute) {
        case ("ENV", let name?): r.env[name] = t.value
        case ("ATTR", let name?): r.written[name] = t.value
        case ("RUN", let kind): r.run.append((kind == "builtin" ? "builtin: " : "") + substitute(t.value))
        case ("GROUP", _): r.group = t.value
        case ("MODE", _): r.mode = t.value
        case ("GOTO", _):
          if let target = rules.firstIndex(where: {
            $0.tokens.first == UdevToken(key: "LABEL", op: "=", value: t.value)
          }) {
            i = target
          }
        default: break
        }
      }
    }
    return r
  }
}

@Suite struct UdevRulesTests {
  static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
  static let rulesPath = repository.appendingPathComponent("udev/70-vgpu.rules").path
  static let helper = repository.appendingPathComponent("udev/vgpu-vfio-group").path
  static let installer = repository.appendingPathComponent("tools/install-udev").path

  static func rules(_ path: String = rulesPath) throws -> [(line: Int, tokens: [UdevToken])] {
    try UdevRules.parse(String(contentsOfFile: path, encoding: .utf8))
  }

  /// A sysfs tree with IOMMU groups: 7 holds the vGPU, 3 a virtio NIC.
  static func groups() throws -> SysfsFixture {
    let f = try SysfsFixture()
    try f.addDriver("virtio-pci")
    try f.addDevice("0000:00:05.0", group: 7)
    try f.addDevice("0000:00:03.0", id: ("0x1af4", "0x1041"), driver: "virtio-pci", group: 3)
    return f
  }

  static func sh(_ command: String, environment: [String: String] = [:]) throws -> PCIToolTests.Output {
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    return try PCIToolTests.run(URL(fileURLWithPath: "/bin/sh"), ["-c", command], environment: env)
  }

  /// PROGRAM runs the repository's helper on the fixture tree.
  static func program(_ f: SysfsFixture) -> (String) -> Bool {
    { command in
      let local = command.replacingOccurrences(of: "/usr/local/lib/vgpu/vgpu-vfio-group", with: helper)
      return (try? sh(local, environment: ["VGPU_SYSFS_ROOT": f.sysfs]).status) == 0
    }
  }

  @Test func everyLineIsAValidRule() throws {
    let rules = try Self.rules()
    #expect(rules.count >= 7)
    let labels = rules.compactMap { $0.tokens.first { $0.key == "LABEL" }?.value }
    for (line, tokens) in rules {
      for t in tokens where t.key == "GOTO" {
        #expect(labels.contains(t.value), "line \(line): GOTO \(t.value) has no LABEL")
      }
      for t in tokens where t.key == "GROUP" { #expect(t.value == "vgpu") }
      for t in tokens where t.key == "MODE" { #expect(t.value == "0660") }
    }
  }

  @Test func theParserRejectsBrokenRules() {
    for bad in [
      "ACTION==add", "FOO==\"x\"", "ATTR==\"x\"", "GROUP==\"vgpu\"", "MODE=\"rw\"", "KERNEL==\"x\" SUBSYSTEM==\"y\"",
      "ACTION==\"add", "RUN{shell}+=\"x\"",
    ] {
      #expect(throws: UdevRules.ParseError.self, "\(bad)") { try UdevRules.tokens(bad, number: 1) }
    }
  }

  /// udev's own parser: `udevadm verify` (systemd 253+), or else, as root,
  /// `udevadm test` in a private mount namespace with the rules in a tmpfs
  /// /run/udev/rules.d and a device that does not exist: udevadm loads and
  /// checks every rules file, then fails to open the device, touching nothing.
  /// UDEVADM names a udevadm outside PATH (e.g. from `apt-get download udev`
  /// and `dpkg -x`); without any udevadm the test has nothing to run.
  @Test func udevadmAcceptsTheRules() throws {
    let found = try Self.sh("command -v udevadm").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    let udevadm = ProcessInfo.processInfo.environment["UDEVADM"] ?? found
    guard !udevadm.isEmpty, FileManager.default.isExecutableFile(atPath: udevadm) else { return }
    if try Self.sh("'\(udevadm)' verify --help").status == 0 {
      let r = try Self.sh("'\(udevadm)' verify --resolve-names=never '\(Self.rulesPath)'")
      #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
      return
    }
    guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else { return }
    let script = """
      mount -t tmpfs none /run && mkdir -p /run/udev/rules.d && cp '\(Self.rulesPath)' /run/udev/rules.d/ && \
      SYSTEMD_LOG_LEVEL=debug '\(udevadm)' test --action=add /sys/devices/vgpu-does-not-exist 2>&1
      """
    let r = try PCIToolTests.run(
      URL(fileURLWithPath: "/usr/bin/unshare"), ["-m", "--propagation", "private", "/bin/sh", "-c", script])
    #expect(r.stdout.contains("Reading rules file: /run/udev/rules.d/70-vgpu.rules"), "\(r.stdout)\(r.stderr)")
    let complaints = r.stdout.split(separator: "\n").filter {
      $0.contains("70-vgpu.rules:") && !$0.contains("Unknown group 'vgpu'")  // made by tools/install-udev
    }
    #expect(complaints.isEmpty, "\(complaints)")
  }

  @Test func anIvshmemFunctionIsBoundToVFIOThroughDriverOverride() throws {
    let f = try Self.groups()
    let rules = try Self.rules()
    let add = UdevEvent(
      subsystem: "pci", kernel: "0000:00:05.0", attributes: ["vendor": "0x1af4", "device": "0x1110"]
    ).apply(rules, program: Self.program(f))
    #expect(add.written == ["driver_override": "vfio-pci"])
    #expect(add.run.first == "builtin: kmod load vfio-pci")
    #expect(add.run.last?.contains("echo 0000:00:05.0 > /sys/bus/pci/drivers_probe") == true)
    // The same ID at another address too; on "change", nothing.
    let elsewhere = UdevEvent(
      subsystem: "pci", kernel: "0000:00:07.0", attributes: ["vendor": "0x1af4", "device": "0x1110"]
    ).apply(rules, program: Self.program(f))
    #expect(elsewhere.written == ["driver_override": "vfio-pci"])
    var change = UdevEvent(
      subsystem: "pci", kernel: "0000:00:05.0", attributes: ["vendor": "0x1af4", "device": "0x1110"])
    change.action = "change"
    #expect(change.apply(rules, program: Self.program(f)) == UdevEvent.Result())
  }

  @Test func otherDevicesAreLeftAloneEvenAtTheVGPUAddress() throws {
    let f = try Self.groups()
    // What this very machine has at 0000:00:05.0: a virtio RNG.
    let rng = UdevEvent(subsystem: "pci", kernel: "0000:00:05.0", attributes: ["vendor": "0x1af4", "device": "0x1044"])
      .apply(try Self.rules(), program: Self.program(f))
    #expect(rng == UdevEvent.Result())
  }

  @Test func theVFIONodesGoToGroupVGPU() throws {
    let f = try Self.groups()
    let rules = try Self.rules()
    let container = UdevEvent(subsystem: "misc", kernel: "vfio").apply(rules, program: Self.program(f))
    #expect(container.group == "vgpu" && container.mode == "0660")
    for kernel in ["7", "noiommu-7"] {
      let group = UdevEvent(subsystem: "vfio", kernel: kernel).apply(rules, program: Self.program(f))
      #expect(group.group == "vgpu" && group.mode == "0660", "\(kernel)")
    }
    // A group without a vGPU keeps the kernel's root-only default.
    let other = UdevEvent(subsystem: "vfio", kernel: "3").apply(rules, program: Self.program(f))
    #expect(other.group == nil && other.mode == nil)
    let cdev = UdevEvent(
      subsystem: "vfio-dev", kernel: "vfio0", parentAttributes: ["vendor": "0x1af4", "device": "0x1110"]
    ).apply(rules, program: Self.program(f))
    #expect(cdev.group == "vgpu" && cdev.mode == "0660")
  }

  @Test func theGroupHelperLooksForTheVGPUInTheGroup() throws {
    let f = try Self.groups()
    let env = ["VGPU_SYSFS_ROOT": f.sysfs]
    #expect(try Self.sh("'\(Self.helper)' 7", environment: env).status == 0)
    #expect(try Self.sh("'\(Self.helper)' noiommu-7", environment: env).status == 0)
    #expect(try Self.sh("'\(Self.helper)' 3", environment: env).status == 1)
    #expect(try Self.sh("'\(Self.helper)' 3 0000:00:03.0", environment: env).status == 0)
    #expect(try Self.sh("'\(Self.helper)' 42", environment: env).status == 1)
    #expect(try Self.sh("'\(Self.helper)'", environment: env).status == 2)
  }

  @Test func installUdevIsIdempotentTakesAnAddressAndRemoves() throws {
    let dest = FileManager.default.temporaryDirectory.appendingPathComponent("install-udev-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dest) }
    let env = ["DESTDIR": dest]
    let installed = dest + "/etc/udev/rules.d/70-vgpu.rules"
    let helper = dest + "/usr/local/lib/vgpu/vgpu-vfio-group"

    let first = try Self.sh("'\(Self.installer)'", environment: env)
    #expect(first.status == 0, "\(first.stderr)")
    #expect(
      try String(contentsOfFile: installed, encoding: .utf8) == String(contentsOfFile: Self.rulesPath, encoding: .utf8))
    #expect(FileManager.default.isExecutableFile(atPath: helper))
    let again = try Self.sh("'\(Self.installer)'", environment: env)
    #expect(again.status == 0)
    #expect(again.stdout.contains("is up to date"))

    // --address turns on the by-address rule: then whatever sits there is bound.
    #expect(try Self.sh("'\(Self.installer)' --address 0000:00:05.0", environment: env).status == 0)
    let f = try Self.groups()
    let rules = try Self.rules(installed)
    let rng = UdevEvent(subsystem: "pci", kernel: "0000:00:05.0", attributes: ["vendor": "0x1af4", "device": "0x1044"])
      .apply(rules, program: Self.program(f))
    #expect(rng.written == ["driver_override": "vfio-pci"])
    #expect(try String(contentsOfFile: installed, encoding: .utf8).contains("vgpu-vfio-group %k 0000:00:05.0\""))

    #expect(try Self.sh("'\(Self.installer)' --address 5.0", environment: env).status == 2)
    #expect(try Self.sh("'\(Self.installer)' --bogus", environment: env).status == 2)

    let removed = try Self.sh("'\(Self.installer)' --remove", environment: env)
    #expect(removed.status == 0, "\(removed.stderr)")
    #expect(!FileManager.default.fileExists(atPath: installed) && !FileManager.default.fileExists(atPath: helper))
    #expect(try Self.sh("'\(Self.installer)' --remove", environment: env).stdout.contains("was not installed"))
  }
}
