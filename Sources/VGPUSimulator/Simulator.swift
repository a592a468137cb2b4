import VGPU
import VGPUDevice

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
