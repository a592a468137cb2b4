import VGPU
import VGPUDevice

#if canImport(Glibc)
  import Glibc
#endif

/// The `sim` device: the reference device, served by a thread of the
/// client's own process. The guest library does not carry it; a program
/// that offers `sim` links this module and says so in its options.
extension ReferenceDevice: InProcessDevice {}

extension OpenOptions {
  /// Options whose `sim` is a reference device configured as `configuration`.
  public static func simulator(_ configuration: ReferenceDeviceConfiguration = .init()) -> OpenOptions {
    var options = OpenOptions()
    options.useSimulator(configuration)
    return options
  }

  /// Makes `sim` open a reference device configured as `configuration`.
  public mutating func useSimulator(_ configuration: ReferenceDeviceConfiguration = .init()) {
    simulator = { () throws(VGPUError) -> any InProcessDevice in
      // Every pair is this process's: it may lend the device its memory (2.4).
      var configuration = configuration
      if configuration.owner == nil && configuration.ownersAreLocalProcesses {
        configuration.owner = UInt32(getpid())
      }
      let device: ReferenceDevice
      do throws(DeviceSetupError) { device = try ReferenceDevice(configuration: configuration) } catch {
        throw VGPUError(
          .unavailable, "create the simulated device", device: "sim", found: error.description,
          remedy: "lower its memory size or free memory")
      }
      device.start()
      return device
    }
  }
}
