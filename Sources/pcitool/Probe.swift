import ArgumentParser
import Foundation
import VGPU
import VGPUProtocol

extension PCITool {
  struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Open a vGPU, handshake, and print what it says about itself.",
      discussion: """
        Prints the identity the CUDA and NVML shims will report (name, UUID, PCI bus \
        ID, compute capability, memory, driver versions), free and total memory, the \
        protocol version and features, and the queue pairs, depth and staging slots \
        this client got. When the device cannot be opened, the one-line error says \
        what was tried, what was found and what to do, and the exit status is 1.
        """)

    @OptionGroup var target: DeviceArgument
    @OptionGroup var output: JSONOption

    func run() throws {
      let choice = try target.chosen()
      let device = try openDevice(choice, timeout: target.timeout)
      defer { device.close() }
      let memory: (free: UInt64, total: UInt64)
      do { memory = try device.memoryInfo() } catch { throw ToolError(error) }
      let report = ProbeReport(device.info, memory: memory, choice: choice)
      if output.json {
        try printJSON(report)
      } else {
        print(report.text)
      }
    }
  }
}

/// What `probe` prints, as text or JSON.
struct ProbeReport: Encodable {
  var device: String
  var choice: String
  /// How the BAR is reached: sim, shm file, or the PCI backend (vfio/uio/sysfs) and why.
  var backend: String
  /// How the client and the device wake each other (futex; ivshmem doorbell + MSI-X; polling).
  var wakeups: String
  var name: String
  var uuid: String
  var pciBusID: String
  var computeCapability: String
  var memoryBytes: UInt64
  var memoryGiB: Double
  var multiprocessors: UInt32
  var driverVersion: String
  var cudaDriverVersion: String
  var cudaDriverVersionNumber: UInt32
  var memoryFree: UInt64
  var memoryTotal: UInt64
  var protocolVersion: String
  var features: [String]
  var queuePairsHeld: Int
  var queuePairsOnDevice: Int
  var queueDepth: Int
  var stagingSlotSize: Int
  var stagingSlots: Int

  init(_ info: DeviceInfo, memory: (free: UInt64, total: UInt64), choice: DeviceChoice) {
    let id = info.identity
    device = info.spec.description
    self.choice = choice.reason
    backend = info.backend
    wakeups = info.wakeups
    name = id.name
    uuid = id.uuidString
    pciBusID = id.pciBusID
    computeCapability = "\(id.computeCapability.major).\(id.computeCapability.minor)"
    memoryBytes = id.memorySize
    memoryGiB = Double(id.memorySize) / Double(1 << 30)
    multiprocessors = id.multiprocessorCount
    driverVersion = id.driverVersion
    cudaDriverVersion = "\(id.cudaDriverVersion / 1000).\(id.cudaDriverVersion % 1000 / 10)"
    cudaDriverVersionNumber = id.cudaDriverVersion
    memoryFree = memory.free
    memoryTotal = memory.total
    protocolVersion = "\(info.protocolVersion.major).\(info.protocolVersion.minor)"
    features = Self.names(info.features)
    queuePairsHeld = info.queuePairs
    queuePairsOnDevice = info.queuePairsOnDevice
    queueDepth = info.queueDepth
    stagingSlotSize = info.stagingSlotSize
    stagingSlots = info.stagingSlotsPerQueue
  }

  static func names(_ features: FeatureBits) -> [String] {
    let known: [(FeatureBits, String)] = [
      (.eventSuppression, "event-suppression"), (.streams, "streams"), (.processList, "process-list"),
      (.functionInfo, "function-info"), (.kernelImages, "kernel-images"), (.processActivity, "process-activity"),
      (.cooperativeLaunch, "cooperative-launch"), (.guestHeartbeat, "guest-heartbeat"),
      (.sharedHostMemory, "shared-host-memory"), (.hostWindow, "host-window"),
      (.coalescedCompletions, "coalesced-completions"),
      // Bit 1: no 2.0 device sets it (1.x's text image of built-in kernels).
      (.retiredBuiltinKernels, "retired-builtin-kernels"),
    ]
    var names = known.filter { features.contains($0.0) }.map(\.1)
    let unknown = features.subtracting(FeatureBits(known.map(\.0)))
    if !unknown.isEmpty { names.append("0x" + String(unknown.rawValue, radix: 16)) }
    return names
  }

  var text: String {
    let rows: [(String, String)] = [
      ("Device", "\(device) (\(choice))"),
      ("Backend", backend),
      ("Wake-ups", wakeups),
      ("Name", name),
      ("UUID", uuid),
      ("PCI bus ID", pciBusID),
      ("Compute capability", computeCapability),
      ("Memory", String(format: "%.2f GiB (%llu bytes)", memoryGiB, memoryBytes)),
      ("Multiprocessors", "\(multiprocessors)"),
      ("Driver version", driverVersion),
      ("CUDA driver version", "\(cudaDriverVersion) (\(cudaDriverVersionNumber))"),
      ("Memory free/total", "\(bytesText(memoryFree)) free of \(bytesText(memoryTotal))"),
      ("Protocol", "\(protocolVersion), features: \(features.isEmpty ? "none" : features.joined(separator: ", "))"),
      ("Queue pairs", "\(queuePairsHeld) held / \(queuePairsOnDevice) on device"),
      ("Queue depth", "\(queueDepth)"),
      ("Staging", "\(bytesText(UInt64(stagingSlotSize))) × \(stagingSlots) slots per queue pair"),
    ]
    return rows.map { padded($0.0 + ":", 21) + $0.1 }.joined(separator: "\n")
  }
}
