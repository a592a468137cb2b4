import Foundation
import LspciFacts
import Testing

/// pcitool against lspci, live, on whatever machine runs the tests.
@Suite(.serialized) struct PCIToolTests {
  struct Output {
    var status: Int32
    var stdout: String
    var stderr: String
  }

  /// The built pcitool sits next to the test bundle in the build folder.
  static let pcitool: URL = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("pcitool")
  }()

  static func run(_ executable: URL, _ arguments: [String], environment: [String: String]? = nil) throws -> Output {
    let p = Process()
    p.executableURL = executable
    p.arguments = arguments
    if let environment { p.environment = environment }
    let out = Pipe()
    let err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read before waiting: a full pipe would otherwise block the child.
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Output(
      status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
      stderr: String(decoding: e, as: UTF8.self))
  }

  static func pcitool(_ arguments: String...) throws -> Output { try run(pcitool, arguments) }

  static func lspci(_ arguments: String...) throws -> String {
    let path = ["/usr/bin/lspci", "/usr/sbin/lspci", "/bin/lspci", "/sbin/lspci"].first {
      FileManager.default.isExecutableFile(atPath: $0)
    }
    guard let path else {
      Issue.record("lspci is not installed: run tools/setup (it installs pciutils)")
      return ""
    }
    let r = try run(URL(fileURLWithPath: path), arguments)
    #expect(r.status == 0, "lspci \(arguments) failed: \(r.stderr)")
    return r.stdout
  }

  static func addresses() throws -> [String] {
    try lspci("-D").split(separator: "\n").map { String($0.prefix(while: { $0 != " " })) }
  }

  @Test func listIsExactlyLspciNND() throws {
    let ours = try Self.pcitool("list")
    #expect(ours.status == 0)
    #expect(ours.stderr.isEmpty)
    let theirs = try Self.lspci("-nn", "-D")
    #expect(!theirs.isEmpty)
    #expect(ours.stdout == theirs)
  }

  @Test func listJSONHasTheSameDevices() throws {
    let r = try Self.pcitool("list", "--json")
    #expect(r.status == 0)
    let devices = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
    #expect(devices.compactMap { $0["address"] as? String } == (try Self.addresses()))
    for d in devices {
      #expect(d["vendorID"] is String && d["bars"] is [Any] && d["capabilities"] is [Any])
      #expect(d.keys.contains("iommuGroup") && d.keys.contains("driver") && d.keys.contains("numaNode"))
    }
  }

  @Test func showStatesWhatLspciVVStatesForEveryDevice() throws {
    let all = try Self.addresses()
    #expect(!all.isEmpty)
    for address in all {
      let ours = try Self.pcitool("show", address)
      #expect(ours.status == 0, "\(address): \(ours.stderr)")
      let theirs = LspciFacts(lspciVerbose: try Self.lspci("-vv", "-D", "-s", address))
      let mine = LspciFacts(lspciVerbose: ours.stdout)
      #expect(mine.mismatches(against: theirs) == [], "\(address)")
    }
  }

  @Test func showJSONCarriesTheSameFactsAsLspci() throws {
    for address in try Self.addresses() {
      let r = try Self.pcitool("show", address, "--json")
      #expect(r.status == 0)
      let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
      let theirs = LspciFacts(lspciVerbose: try Self.lspci("-vv", "-D", "-s", address))
      let caps = json["capabilities"] as? [[String: Any]] ?? []
      #expect(caps.compactMap { $0["offset"] as? Int } == theirs.capabilities.map(\.offset), "\(address)")
      let bars = json["bars"] as? [[String: Any]] ?? []
      #expect(bars.compactMap { $0["index"] as? Int } == theirs.regions.map(\.index), "\(address)")
      for (bar, region) in zip(bars, theirs.regions) {
        let size = (bar["size"] as? UInt64) ?? 0
        #expect(region.size == (size == 0 ? nil : sizeText(size)), "\(address) BAR \(region.index)")
        #expect(UInt64(region.address, radix: 16) == bar["address"] as? UInt64, "\(address) BAR \(region.index)")
      }
      let tables = caps.compactMap { $0["msix"] as? [String: Any] }.flatMap { m in
        ["table", "pendingBitArray"].compactMap { m[$0] as? [String: Any] }.map {
          "BAR=\($0["bar"] as? Int ?? -1) offset=" + String(format: "%08x", $0["offset"] as? Int ?? -1)
        }
      }
      #expect(tables == theirs.msix, "\(address)")
    }
  }

  func sizeText(_ bytes: UInt64) -> String {
    var x = bytes
    var unit = 0
    while unit < 4, x % 1024 == 0 {
      x /= 1024
      unit += 1
    }
    return "\(x)" + ["", "K", "M", "G", "T"][unit]
  }

  @Test func showOfTheVGPUSlotPrintsVirtioAndMSIXLikeLspci() throws {
    guard (try Self.addresses()).contains("0000:00:05.0") else { return }
    let theirs = try Self.lspci("-vv", "-D", "-s", "0000:00:05.0")
    let ours = try Self.pcitool("show", "0000:00:05.0").stdout
    // The detail lines lspci prints for virtio structures and MSI-X, verbatim.
    let details = theirs.split(separator: "\n").filter {
      $0.contains("VirtIO:") || $0.contains("BAR=") || $0.contains("Vector table") || $0.contains("PBA:")
    }
    for line in details { #expect(ours.contains(line), "missing: \(line)") }
  }

  @Test func dumpIsLspciXXX() throws {
    for address in try Self.addresses() {
      #expect(try Self.pcitool("dump", address).stdout == (try Self.lspci("-xxx", "-D", "-s", address)))
      #expect(try Self.pcitool("dump", "--extended", address).stdout == (try Self.lspci("-xxxx", "-D", "-s", address)))
    }
  }

  @Test func nonsenseIsAUsageError() throws {
    let r = try Self.pcitool("show", "nonsense")
    #expect(r.status == 2)
    #expect(r.stdout.isEmpty)
    #expect(r.stderr.split(separator: "\n").count == 1)
    #expect(r.stderr.contains("'nonsense'") && r.stderr.contains("DDDD:BB:DD.F"))
  }

  @Test func absentDeviceFailsAndNamesThePresentOnes() throws {
    let r = try Self.pcitool("show", "0000:ff:1f.7")
    #expect(r.status == 1)
    #expect(r.stderr.split(separator: "\n").count == 1)
    #expect(r.stderr.contains("0000:ff:1f.7"))
    for address in try Self.addresses() { #expect(r.stderr.contains(address)) }
    #expect(try Self.pcitool("dump", "ffff:ffff").status == 1)
  }

  @Test(arguments: [["bogus"], ["show", "--frobnicate"], ["list", "extra"], ["dump", "00:05.0", "00:06.0"]])
  func badCommandLinesExitTwoWithOneLine(arguments: [String]) throws {
    let r = try Self.run(Self.pcitool, arguments)
    #expect(r.status == 2)
    #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
  }

  @Test func helpTeaches() throws {
    let r = try Self.pcitool("--help")
    #expect(r.status == 0)
    for word in ["list", "show", "dump", "DDDD:BB:DD.F", "Exit status"] { #expect(r.stdout.contains(word)) }
  }
}
