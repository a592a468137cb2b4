import Foundation
import PCI

/// A device captured from a real (or QEMU-emulated) machine: its config bytes,
/// the OS's resource table, and what lspci said about it.
struct Fixture: CustomStringConvertible {
  var name: String
  var address: PCIAddress
  var config: ConfigSpace
  var resources: [PCIResource]
  var lspciVerbose: String

  var description: String { name }

  var device: PCIDevice { PCIDevice(address: address, config: config, resources: resources) }

  static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

  /// Every `*.hex` under Fixtures/, with its companions.
  static func all() throws -> [Fixture] {
    var result: [Fixture] = []
    for dir in ["host", "qemu-q35"] {
      let folder = root.appendingPathComponent(dir)
      for file in try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted() where file.hasSuffix(".hex")
      {
        result.append(try load(dir + "/" + String(file.dropLast(4))))
      }
    }
    return result
  }

  /// `host/0000-00-05.0` → the files `host/0000-00-05.0.{hex,resource,lspci-vv.txt}`.
  static func load(_ stem: String) throws -> Fixture {
    func text(_ ext: String) throws -> String {
      try String(contentsOf: root.appendingPathComponent(stem + ext), encoding: .utf8)
    }
    let base = stem.split(separator: "/").last!
    let addressText = base.prefix(12).replacingOccurrences(of: "-", with: ":")
    return Fixture(
      name: stem, address: try PCIAddress(parsing: addressText),
      config: try ConfigSpace(lspciHexDump: try text(".hex")),
      resources: PCIResource.parseSysfs(try text(".resource")), lspciVerbose: try text(".lspci-vv.txt"))
  }
}

extension PCIResource {
  /// Parses a captured `/sys/bus/pci/devices/*/resource`: one line per
  /// resource, three hex numbers each (drivers/pci/pci-sysfs.c, resource_show).
  static func parseSysfs(_ text: String) -> [PCIResource] {
    text.split(separator: "\n").compactMap { line in
      let f = line.split(separator: " ").map { UInt64($0.dropFirst(2), radix: 16) }
      guard f.count == 3, let s = f[0], let e = f[1], let fl = f[2] else { return nil }
      return PCIResource(start: s, end: e, flags: fl)
    }
  }
}
