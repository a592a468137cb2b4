import ArgumentParser
import Foundation
import PCI

/// Exit statuses: 0 done, 1 the operation failed, 2 the command line was wrong.
enum ExitStatus: Int32 {
  case failure = 1
  case usage = 2
}

/// An error to print as one line and exit with its status.
struct ToolError: Error, CustomStringConvertible {
  var status: ExitStatus
  var description: String
}

struct PCITool: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "pcitool",
    abstract: "Find, inspect and diagnose PCI devices — the vGPU at 0000:00:05.0 first of all.",
    discussion: """
      DEVICE arguments of list, show and dump take a PCI address, DDDD:BB:DD.F or \
      BB:DD.F (hex, as lspci prints them), or a vendor:device ID such as 1af4:1110, \
      which selects every matching function.

      probe, selftest, bench and top talk to a vGPU: their DEVICE is sim (a simulated \
      device in this process), unix:PATH (vgpu-mediator's socket: a BAR of this \
      process's own), shm:PATH (a VM's BAR file served by vgpu-mediator --vm) or a \
      PCI address. Without one they use $VGPU_DEVICE if set, \
      else 0000:00:05.0 if it is an ivshmem function (1af4:1110), else sim, and \
      say which and why.

      Exit status: 0 on success, 1 when the operation failed (e.g. no such device), \
      2 when the command line is wrong. Errors are one line on standard error.

      Examples:
        pcitool list                  every function, exactly like `lspci -nn -D`
        pcitool show 00:05.0          decoded BARs, capabilities, driver, IOMMU group
        pcitool show 1af4:1110 --json the ivshmem devices, for scripts
        pcitool dump 0000:00:05.0     config space as hex, like `lspci -xxx`
        pcitool probe sim             handshake and print the vGPU's identity
        pcitool selftest              a checked workload on the default vGPU
        pcitool bench unix:/run/vgpu/vgpu0.sock  latency and bandwidth vs baselines
        pcitool top                   who uses the vGPU, live (memory, launches/s, copy MB/s)
        pcitool status 00:05.0        driver, IOMMU group, /dev/vfio, usable backends
        pcitool bind 00:05.0 vfio-pci bind through driver_override (root; rolls back on failure)
      """,
    subcommands: [
      List.self, Show.self, Dump.self, Probe.self, Selftest.self, Bench.self, Top.self, Bind.self, Unbind.self,
      BindingStatusCommand.self, PingPongChild.self, EduDMA.self, WakeupsProbe.self,
    ]
  )
}

struct JSONOption: ParsableArguments {
  @Flag(name: .long, help: "Print JSON instead of text, for scripts.")
  var json = false
}

extension PCITool {
  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "List every PCI function, one line each, exactly as `lspci -nn -D` does.",
      discussion: "With --json, an array of the same devices with every decoded fact (see `pcitool show --help`).")

    @OptionGroup var output: JSONOption

    func run() throws {
      let devices = try openBus().devices()
      if output.json {
        try printJSON(devices)
      } else {
        for d in devices { print(d.listingLine) }
      }
    }
  }

  struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Decode devices in the manner of `lspci -vv -s DEVICE`.",
      discussion: """
        Prints identity and names, BARs (address, size, 32/64-bit, prefetchable), \
        the capability and extended capability lists (power management, MSI, MSI-X \
        with its table and PBA location, PCI Express, virtio structures), the kernel \
        driver, the IOMMU group and the NUMA node. Broken capability chains are \
        reported, never followed forever. Without DEVICE, every device is shown.
        """)

    @Argument(help: "A PCI address (0000:00:05.0, 00:05.0) or vendor:device ID (1af4:1110).")
    var device: String?

    @OptionGroup var output: JSONOption

    func run() throws {
      let devices = try select(device)
      if output.json {
        // One address gives one object; an ID or no argument, an array.
        if let device, PCIAddress.isAddress(device) { try printJSON(devices[0]) } else { try printJSON(devices) }
      } else {
        print(devices.map(\.verboseDescription).joined(separator: "\n"))
      }
    }
  }

  struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print config space as hex, in the manner of `lspci -xxx` (or `-xxxx` with --extended).",
      discussion: """
        Without root, Linux lets only the first 64 bytes be read; the dump then \
        shows what could be read. Without DEVICE, every device is dumped.
        """)

    @Argument(help: "A PCI address (0000:00:05.0, 00:05.0) or vendor:device ID (1af4:1110).")
    var device: String?

    @Flag(name: .long, help: "Include the PCI Express extended space (4096 bytes) where it can be read.")
    var extended = false

    @OptionGroup var output: JSONOption

    func run() throws {
      let devices = try select(device)
      if output.json {
        struct Dumped: Encodable {
          var address: String
          var size: Int
          var hex: String
        }
        try printJSON(
          devices.map { d in
            let bytes = extended ? d.config.bytes : Array(d.config.bytes.prefix(256))
            return Dumped(
              address: d.address.description, size: bytes.count, hex: bytes.map { String(format: "%02x", $0) }.joined())
          })
      } else {
        for d in devices { print(d.hexDump(extended: extended)) }
      }
    }
  }
}

extension PCIAddress {
  /// True when `text` names one address rather than a vendor:device ID.
  static func isAddress(_ text: String) -> Bool { (try? PCIAddress(parsing: text)) != nil }
}

func openBus() throws -> PCIBus {
  do { return try PCIBus() } catch { throw ToolError(status: .failure, description: error.description) }
}

/// The devices a DEVICE argument names, or all of them.
func select(_ selector: String?) throws -> [PCIDevice] {
  let bus = try openBus()
  guard let selector else { return bus.devices() }
  do { return try bus.devices(selectedBy: selector) } catch {
    if case .invalidSelector = error { throw ToolError(status: .usage, description: error.description) }
    throw ToolError(status: .failure, description: error.description)
  }
}

func printJSON<T: Encodable>(_ value: T) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
  let data = try encoder.encode(value)
  FileHandle.standardOutput.write(data)
  FileHandle.standardOutput.write(Data("\n".utf8))
}

@main
enum Main {
  static func main() {
    do {
      var command = try PCITool.parseAsRoot()
      try command.run()
    } catch let error as ToolError {
      fail(error.description, status: error.status.rawValue)
    } catch {
      let code = PCITool.exitCode(for: error)
      if code == .success {
        print(PCITool.fullMessage(for: error))
        exit(0)
      }
      if code == .validationFailure {
        fail(PCITool.message(for: error) + " (see 'pcitool --help')", status: ExitStatus.usage.rawValue)
      }
      fail(PCITool.message(for: error), status: ExitStatus.failure.rawValue)
    }
  }

  static func fail(_ message: String, status: Int32) -> Never {
    let line = message.split(separator: "\n").joined(separator: "; ")
    FileHandle.standardError.write(Data("pcitool: \(line)\n".utf8))
    exit(status)
  }
}
