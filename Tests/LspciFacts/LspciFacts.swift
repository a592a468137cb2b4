import PCI

/// The facts that `lspci -vv` states about a device and that this project must
/// agree on: BAR addresses and sizes, capability offsets and names, and where
/// the MSI-X table and PBA live. Read from lspci's text, or taken from our model.
public struct LspciFacts: Equatable, CustomStringConvertible {
  public struct Region: Equatable {
    public var index: Int
    /// As lspci writes it: `4000200000`, `c000`, `<unassigned>`.
    public var address: String
    public var size: String?
  }
  public struct Cap: Equatable {
    public var offset: Int
    public var isExtended: Bool
    /// lspci's text after the offset; for our model, the capability's name.
    public var text: String
  }

  public var regions: [Region] = []
  public var capabilities: [Cap] = []
  /// "BAR=0 offset=00008000" pairs, table then PBA, per MSI-X capability.
  public var msix: [String] = []
  /// virtio structure lines "BAR=0 offset=00002000 size=00000001 ...".
  public var virtio: [String] = []

  public init() {}

  public var description: String {
    "regions: \(regions)\ncapabilities: \(capabilities)\nmsix: \(msix)\nvirtio: \(virtio)"
  }

  /// Parses the text of `lspci -vv -s ADDR` for one device.
  public init(lspciVerbose text: String) {
    for raw in text.split(separator: "\n") {
      // Depth matters: SR-IOV's VF regions are indented one level deeper.
      let depth = raw.prefix(while: { $0 == "\t" }).count
      let line = raw.dropFirst(depth)
      if depth == 1, line.hasPrefix("Region "), let colon = line.firstIndex(of: ":") {
        let index = Int(line.dropFirst("Region ".count).prefix(while: \.isNumber)) ?? -1
        let words = line[line.index(after: colon)...].split(separator: " ")
        // "Memory at X (...)" / "I/O ports at X"
        guard let at = words.firstIndex(of: "at"), at + 1 < words.count else { continue }
        var size: String? = nil
        if let s = words.first(where: { $0.hasPrefix("[size=") }) { size = String(s.dropFirst(6).dropLast()) }
        regions.append(Region(index: index, address: String(words[at + 1]), size: size))
      } else if depth == 1, line.hasPrefix("Capabilities: ["), let close = line.firstIndex(of: "]") {
        let inside = line[line.index(line.startIndex, offsetBy: 15)..<close]
        let offsetText = inside.split(separator: " ").first ?? ""
        guard let offset = Int(offsetText, radix: 16) else { continue }
        let rest = String(line[line.index(after: close)...].dropFirst())
        if rest.hasPrefix("<") { continue }  // <access denied>, <chain looped>: not a capability
        capabilities.append(Cap(offset: offset, isExtended: offsetText.count == 3, text: rest))
      } else if depth == 2, line.hasPrefix("Vector table: ") || line.hasPrefix("PBA: ") {
        msix.append(String(line.split(separator: ": ", maxSplits: 1)[1]))
      } else if depth == 2, line.hasPrefix("BAR=") {
        virtio.append(String(line))
      }
    }
  }

  /// The same facts, from our decoder's model (not from our text output).
  public init(device: PCIDevice) {
    for bar in device.bars {
      let address: String
      if bar.isBroken {
        address = "<broken-64-bit-slot>"
      } else if bar.address != 0 || (bar.kind == .io && !bar.isDisabled) {
        let digits = String(bar.address, radix: 16)
        let width = bar.kind == .io ? 4 : 8
        address = String(repeating: "0", count: max(0, width - digits.count)) + digits
      } else {
        address = bar.isIgnored ? "<ignored>" : "<unassigned>"
      }
      regions.append(Region(index: bar.index, address: address, size: bar.size == 0 ? nil : BAR.sizeText(bar.size)))
    }
    for cap in device.capabilities.capabilities {
      capabilities.append(Cap(offset: cap.offset, isExtended: cap.isExtended, text: cap.name))
      if let m = cap.msix {
        for loc in [m.table, m.pendingBitArray].compactMap({ $0 }) {
          let o = String(loc.offset, radix: 16)
          msix.append("BAR=\(loc.bar) offset=" + String(repeating: "0", count: max(0, 8 - o.count)) + o)
        }
      }
      if cap.virtio != nil { virtio.append(String(cap.lspciLines[1].dropFirst(2))) }
    }
  }

  /// Whether `other` (lspci's facts) agrees with these (ours): same regions,
  /// same capability offsets in order, each lspci text starting with our name.
  public func mismatches(against lspci: LspciFacts) -> [String] {
    var problems: [String] = []
    if regions != lspci.regions { problems.append("regions: ours \(regions), lspci \(lspci.regions)") }
    let ours = capabilities.map { "\($0.isExtended ? "ext " : "")\(String($0.offset, radix: 16))" }
    let theirs = lspci.capabilities.map { "\($0.isExtended ? "ext " : "")\(String($0.offset, radix: 16))" }
    if ours != theirs {
      problems.append("capability offsets: ours \(ours), lspci \(theirs)")
    } else {
      for (a, b) in zip(capabilities, lspci.capabilities) {
        let rest = b.text.dropFirst(a.text.count)
        if !b.text.hasPrefix(a.text) || !(rest.isEmpty || rest.first == ":" || rest.first == " ") {
          problems.append("capability at \(String(a.offset, radix: 16)): ours '\(a.text)', lspci '\(b.text)'")
        }
      }
    }
    if msix != lspci.msix { problems.append("MSI-X: ours \(msix), lspci \(lspci.msix)") }
    if virtio != lspci.virtio { problems.append("virtio: ours \(virtio), lspci \(lspci.virtio)") }
    return problems
  }
}
