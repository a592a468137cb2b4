import ArgumentParser
import DeviceAccess
import Foundation

/// Options bind and unbind share.
struct BindOptions: ParsableArguments {
  @Flag(name: .long, help: "Go on even if a process has the device open or its network interface is up.")
  var force = false

  @Option(name: .long, help: "Seconds to wait for the kernel to bind or unbind (each step).")
  var timeout: Double = 2

  @OptionGroup var output: JSONOption

  func validate() throws {
    guard timeout >= 0, timeout <= 600 else { throw ValidationError("--timeout must be between 0 and 600 seconds") }
  }
}

/// How bind, unbind and status find sysfs; see ``HostEnvironment/fromToolEnvironment(_:)`` (the environment variables are for tests).
private let sysfsDiscussion = """
  The sysfs and /dev roots can be moved with PCITOOL_SYSFS_ROOT and \
  PCITOOL_DEV_ROOT; that is for tests on fixture trees, not for use.
  """

extension PCITool {
  struct Bind: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Bind a device to a driver through driver_override, as driverctl does.",
      discussion: """
        Loads the driver's module if the driver is not there yet (modprobe), \
        writes DRIVER to driver_override, unbinds the current driver, asks the \
        kernel to probe (drivers_probe, then the driver's bind), and checks the \
        driver link. If the driver does not take the device, the old override \
        and driver are put back and the output says so. The override stays, so \
        the device keeps this driver until `pcitool unbind`. A device that a \
        process holds open (its /dev/vfio group, config or resource files) or \
        whose network interface is up is refused unless --force. Needs root.

        Exit status: 0 bound (or already bound), 1 refused or failed (after a \
        rollback), 2 bad command line. With --json, the report of an attempted \
        bind is printed even when it fails.

        \(sysfsDiscussion)

        Example: pcitool bind 0000:00:05.0 vfio-pci
        """)

    @Argument(help: "The PCI address, DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @Argument(help: "The driver, as /sys/bus/pci/drivers names it: vfio-pci, uio_pci_generic, virtio-pci, ...")
    var driver: String

    @OptionGroup var options: BindOptions

    func validate() throws {
      guard !driver.isEmpty, !driver.contains("/"), driver != ".", driver != "..", !driver.contains("\n") else {
        throw ValidationError("'\(driver)' is not a driver name")
      }
    }

    func run() throws {
      let host = HostEnvironment.fromToolEnvironment()
      let device = try PCIFunctionSysfs.find(address, host: host)
      let binder = Binder(
        host: host, kernel: host.hostKernel(), timeout: options.timeout, force: options.force,
        commandLine: "pcitool bind \(device.address) \(driver)")
      try finish(try binder.bind(device, to: driver), json: options.output.json)
    }
  }

  struct Unbind: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Clear a device's driver_override and unbind it from its driver.",
      discussion: """
        The device is left without a driver; `echo ADDRESS > \
        /sys/bus/pci/drivers_probe` gives it back to its default driver. A \
        device in use is refused unless --force; a failed unbind puts the \
        override back. Needs root.

        Exit status: 0 unbound (or nothing to do), 1 refused or failed, 2 bad \
        command line.

        \(sysfsDiscussion)
        """)

    @Argument(help: "The PCI address, DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @OptionGroup var options: BindOptions

    func run() throws {
      let host = HostEnvironment.fromToolEnvironment()
      let device = try PCIFunctionSysfs.find(address, host: host)
      let binder = Binder(
        host: host, kernel: host.hostKernel(), timeout: options.timeout, force: options.force,
        commandLine: "pcitool unbind \(device.address)")
      try finish(try binder.unbind(device), json: options.output.json)
    }
  }

  struct BindingStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "status",
      abstract: "Say how a device is bound and which mapping backends (vfio, uio, sysfs) would work for you.",
      discussion: """
        Prints the address, vendor:device and names, the driver and \
        driver_override, the IOMMU group and the other devices in it with \
        their drivers, /dev/vfio/N and /dev/vfio/vfio with owner, group and \
        mode, the processes using the device, and for each backend whether it \
        would work for the current user, and if not, why and what to do.

        \(sysfsDiscussion)
        """)

    @Argument(help: "The PCI address, DDDD:BB:DD.F or BB:DD.F.")
    var address: String

    @OptionGroup var output: JSONOption

    func run() throws {
      let device = try PCIFunctionSysfs.find(address, host: HostEnvironment.fromToolEnvironment())
      let status = BindingStatus(device)
      if output.json { try printJSON(status) } else { print(status.text) }
    }
  }
}

/// Prints a bind or unbind report; a failed one also becomes the one-line error.
private func finish(_ report: BindReport, json: Bool) throws {
  if json {
    try printJSON(report)
  } else {
    for step in report.steps { print("\(report.address): \(step)") }
  }
  if !report.ok {
    throw ToolError(status: .failure, description: report.error ?? "\(report.command) \(report.address) failed")
  }
}
