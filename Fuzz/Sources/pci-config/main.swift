// pci-config: the PCI layer's config-space decoding on hostile bytes. A
// device (or a hypervisor) controls every byte of its config space; the
// decoder must end every walk (capability loops, pointers past the end) and
// never trap. Input: one mode byte, then the config space (cut to 256 or
// 4096 bytes as a real read would give), or lspci -xxx text to parse.
import FuzzSupport
import PCI

runFuzzer { data, size in
  var input = FuzzInput(data, size)
  let mode = input.byte()
  switch mode % 4 {
  case 0, 1:
    // Raw config space, conventional (256) or extended (4096), or whatever short read the OS gave.
    let limit = mode % 4 == 0 ? 256 : 4096
    let raw = input.rest()
    let config = ConfigSpace(bytes: Array(raw.prefix(limit)))
    decode(config, resources: nil)
  case 2:
    // Config space plus sysfs resources (start, end, flags per BAR) from the first 6 × 24 bytes.
    var resources: [PCIResource] = []
    for _ in 0..<6 {
      resources.append(
        PCIResource(
          start: input.integer(UInt64.self), end: input.integer(UInt64.self), flags: input.integer(UInt64.self)))
    }
    let config = ConfigSpace(bytes: Array(input.rest().prefix(4096)))
    decode(config, resources: resources)
  default:
    // lspci -xxx / -xxxx text, as the tests' fixtures and `pcitool` read it.
    let text = String(decoding: input.rest(), as: UTF8.self)
    if let config = try? ConfigSpace(lspciHexDump: text) { decode(config, resources: nil) }
  }
  return 0
}

/// Everything pcitool does with a function's config space: the device, its
/// BARs and capabilities, and the lspci-style texts.
func decode(_ config: ConfigSpace, resources: [PCIResource]?) {
  let device = PCIDevice(
    address: PCIAddress(bus: 0, device: 5, function: 0), config: config, resources: resources)
  var sink = 0
  sink &+= device.verboseDescription.utf8.count
  sink &+= device.hexDump(extended: true).utf8.count
  sink &+= device.listingLine.utf8.count
  for cap in device.capabilities.capabilities { sink &+= cap.lspciLines.count }
  for bar in device.bars { sink &+= bar.lspciText.utf8.count }
  // A round trip through lspci's hex dump gives back the same bytes (whole
  // rows only: the parser reads 16-byte rows, as lspci prints them).
  if !config.bytes.isEmpty && config.count % 16 == 0 {
    let again = try? ConfigSpace(lspciHexDump: config.hexDump())
    invariant(again?.bytes == config.bytes, "hex dump round trip changed \(config.count) bytes of config space")
  }
  _ = sink
}
