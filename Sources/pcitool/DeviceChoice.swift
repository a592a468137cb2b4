import ArgumentParser
import Foundation
import PCI
import PTX
import VGPU
import VGPUSimulator

/// Which vGPU a command talks to, and why: the DEVICE argument if given, else
/// `VGPU_DEVICE`, else the ivshmem function at 0000:00:05.0 if there is one,
/// else the simulated device.
struct DeviceChoice: Encodable {
  /// A device string for `Device.open` (see `DeviceSpec`).
  var device: String
  /// Why this one, for people: "given on the command line", ...
  var reason: String

  /// Where a VM puts the vGPU, and the vendor:device ID of the QEMU ivshmem
  /// function that carries its BAR.
  static let defaultAddress = "0000:00:05.0"
  static let ivshmem = PCIDeviceID(vendor: 0x1af4, device: 0x1110)
  static let onCommandLine = "given on the command line"

  static func choose(_ argument: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
    -> DeviceChoice
  {
    if let argument { return DeviceChoice(device: argument, reason: onCommandLine) }
    if let env = environment["VGPU_DEVICE"], !env.isEmpty {
      return DeviceChoice(device: env, reason: "VGPU_DEVICE=\(env)")
    }
    let notSet = "VGPU_DEVICE is not set and"
    let bus: PCIBus
    do { bus = try PCIBus() } catch {
      return DeviceChoice(device: "sim", reason: "\(notSet) the PCI bus cannot be read (\(error.description))")
    }
    guard let found = try? bus.devices(selectedBy: defaultAddress).first else {
      return DeviceChoice(device: "sim", reason: "\(notSet) there is no PCI device at \(defaultAddress)")
    }
    let what = "\(found.names.deviceText ?? "device") (\(found.id))"
    if found.id == ivshmem {
      return DeviceChoice(
        device: defaultAddress, reason: "\(notSet) \(defaultAddress) is \(article(what)), which carries the vGPU BAR")
    }
    return DeviceChoice(device: "sim", reason: "\(notSet) \(defaultAddress) is \(article(what)), not a vGPU")
  }

  /// The line commands print before they start.
  var line: String { "using \(device): \(reason)" }

  private static func article(_ s: String) -> String {
    guard let first = s.first?.lowercased() else { return s }
    return ("aeio".contains(first) ? "an " : "a ") + s
  }
}

/// The vGPU commands' DEVICE argument and the options they share.
struct DeviceArgument: ParsableArguments {
  @Argument(
    help: ArgumentHelp(
      "sim, unix:PATH (vgpu-mediator's socket), shm:PATH or a PCI address (default: $VGPU_DEVICE, else 0000:00:05.0 if it is a vGPU, else sim).",
      valueName: "device"))
  var device: String?

  @Option(name: .long, help: "Seconds to wait for the handshake and for each command.")
  var timeout: Double = 2

  func validate() throws {
    guard timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be between 0 and 3600 seconds") }
  }

  var choice: DeviceChoice { DeviceChoice.choose(device) }

  /// The choice, refused (exit 2) before anything is opened when it is not a device
  /// name, or when it is `sim` (the PTX engine runs in this process) and
  /// VGPU_PTX_ENGINE or VGPU_PTX_THREADS is not a setting.
  func chosen(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> DeviceChoice {
    let choice = self.choice
    do { _ = try DeviceSpec(parsing: choice.device) } catch { throw ToolError(error, choice: choice) }
    if choice.device == "sim", let problem = PTXLaunchOptions.environmentProblem(environment) {
      throw ToolError(status: .usage, description: problem)
    }
    return choice
  }
}

/// Opens a device; a VGPUError becomes a ToolError (a wrong device string is a usage error).
func openDevice(_ choice: DeviceChoice, timeout: Double, options: OpenOptions? = nil) throws -> Device {
  do { return try Device.open(choice.device, options: options ?? openOptions(timeout: timeout)) } catch {
    throw ToolError(error, choice: choice)
  }
}

/// The library's defaults with the command's deadline.
func openOptions(timeout: Double, threads: Int = 1) -> OpenOptions {
  // `sim` is offered: pcitool links the reference device.
  var options = OpenOptions.simulator()
  options.timeout = .milliseconds(Int64((timeout * 1000).rounded()))
  // One queue pair per thread that submits at once, as far as the device has them.
  options.queuePairs = max(options.queuePairs, threads)
  return options
}

extension ToolError {
  /// `choice`: where the device name came from, said when it was not the command line
  /// (a name from VGPU_DEVICE is otherwise hard to trace).
  init(_ error: VGPUError, choice: DeviceChoice? = nil) {
    var text = error.description
    if let choice, choice.reason != DeviceChoice.onCommandLine { text += " (\(choice.reason))" }
    self.init(status: error.kind == .invalidArgument ? .usage : .failure, description: text)
  }
}

// MARK: Formatting shared by probe, selftest and bench

/// Exact sizes: `16 MiB`, `16 MiB + 3 B`, `1000 B`.
func exactBytesText(_ n: Int) -> String {
  for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] where n >= 1 << shift {
    let (q, r) = (n >> shift, n & ((1 << shift) - 1))
    if r == 0 { return "\(q) \(unit)" }
    if r < 1024 { return "\(q) \(unit) + \(r) B" }
  }
  return "\(n) B"
}

/// `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s`.
func durationText(nanoseconds ns: Double) -> String {
  switch ns {
  case ..<1_000: return String(format: "%.0f ns", ns)
  case ..<1_000_000: return String(format: "%.2f µs", ns / 1_000)
  case ..<1_000_000_000: return String(format: "%.2f ms", ns / 1_000_000)
  default: return String(format: "%.2f s", ns / 1_000_000_000)
  }
}

/// Pads `s` on the right to `width` characters (at least one space follows).
func padded(_ s: String, _ width: Int) -> String {
  s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}
