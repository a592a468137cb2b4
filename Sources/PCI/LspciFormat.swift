/// Text in the manner of pciutils' `lspci`, so that people (and tests) can put
/// the two side by side. Layouts follow lspci.c / ls-caps.c of pciutils 3.x.
extension PCIDevice {
  /// One line, exactly as `lspci -nn -D` prints it.
  public var listingLine: String {
    let cls = names.classTextWithNumbers ?? "Class [\(hex(classCode, width: 4))]"
    let dev = names.deviceTextWithNumbers ?? "Device [\(id)]"
    return "\(address) \(cls): \(dev)" + (revision != 0 ? " (rev \(hex(revision, width: 2)))" : "")
  }

  /// lspci's title line without numbers: `0000:00:05.0 Unassigned class [ffff]: Red Hat, Inc. Virtio 1.0 RNG (rev 01)`.
  var terseTitle: String {
    let cls = names.classText ?? "Class \(hex(classCode, width: 4))"
    let dev = names.deviceText ?? "Device \(hex(vendorID, width: 4)):\(hex(deviceID, width: 4))"
    return "\(address) \(cls): \(dev)" + (revision != 0 ? " (rev \(hex(revision, width: 2)))" : "")
  }

  /// The title line of `lspci -D -v`: the terse title plus the prog-if.
  public var titleLine: String {
    guard progIf != 0 || names.progIf != nil else { return terseTitle }
    return terseTitle + " (prog-if \(hex(progIf, width: 2))" + (names.progIf.map { " [\($0)]" } ?? "") + ")"
  }

  /// Config space as `lspci -D -xxx` (256 bytes) or `-xxxx` (all that could be read) prints it.
  public func hexDump(extended: Bool) -> String {
    terseTitle + "\n" + config.hexDump(limit: extended ? nil : 256)
  }

  /// The decoded device, in the manner of `lspci -vv -s ADDR`, plus the facts a
  /// driver needs that lspci leaves out (IOMMU group or its absence).
  public var verboseDescription: String {
    var out = [titleLine]
    if let s = names.subsystemText { out.append("\tSubsystem: \(s)") }
    if let cmd = config.command, let st = config.status {
      func f(_ v: UInt16, _ bit: UInt16) -> String { v & bit != 0 ? "+" : "-" }
      out.append(
        "\tControl: I/O\(f(cmd, 0x1)) Mem\(f(cmd, 0x2)) BusMaster\(f(cmd, 0x4)) SpecCycle\(f(cmd, 0x8)) "
          + "MemWINV\(f(cmd, 0x10)) VGASnoop\(f(cmd, 0x20)) ParErr\(f(cmd, 0x40)) Stepping\(f(cmd, 0x80)) "
          + "SERR\(f(cmd, 0x100)) FastB2B\(f(cmd, 0x200)) DisINTx\(f(cmd, 0x400))")
      let devsel = ["fast", "medium", "slow", "??"][Int((st >> 9) & 0x3)]
      out.append(
        "\tStatus: Cap\(f(st, 0x10)) 66MHz\(f(st, 0x20)) UDF\(f(st, 0x40)) FastB2B\(f(st, 0x80)) "
          + "ParErr\(f(st, 0x100)) DEVSEL=\(devsel) >TAbort\(f(st, 0x800)) <TAbort\(f(st, 0x1000)) "
          + "<MAbort\(f(st, 0x2000)) >SERR\(f(st, 0x4000)) <PERR\(f(st, 0x8000)) INTx\(f(st, 0x8))")
    }
    if let cmd = config.command, cmd & 0x4 != 0, let latency = config.u8(0x0d) {
      // Min_Gnt / Max_Lat are in units of 250 ns, type 0 headers only (PCI 3.0 §6.2.4).
      let minGnt = config.headerType == 0 ? Int(config.u8(0x3e) ?? 0) : 0
      let maxLat = config.headerType == 0 ? Int(config.u8(0x3f) ?? 0) : 0
      var line = "\tLatency: \(latency)"
      if minGnt != 0 || maxLat != 0 {
        let parts = (minGnt != 0 ? ["\(minGnt * 250)ns min"] : []) + (maxLat != 0 ? ["\(maxLat * 250)ns max"] : [])
        line += " (" + parts.joined(separator: ", ") + ")"
      }
      if let cacheLine = config.u8(0x0c), cacheLine != 0 { line += ", Cache Line Size: \(Int(cacheLine) * 4) bytes" }
      out.append(line)
    }
    if let pin = config.u8(0x3d), pin != 0 || irq != nil {
      let letter = pin >= 1 && pin <= 4 ? String(UnicodeScalar(UInt8(0x40) + pin)) : "?"
      out.append("\tInterrupt: pin \(letter) routed to IRQ \(irq ?? 0)")
    }
    if let numaNode { out.append("\tNUMA node: \(numaNode)") }
    out.append("\tIOMMU group: " + (iommuGroup.map(String.init) ?? "none (no IOMMU enabled for this device)"))
    for bar in bars { out.append("\tRegion \(bar.index): " + bar.lspciText) }
    for cap in capabilities.capabilities { out.append(contentsOf: cap.lspciLines) }
    for problem in capabilities.problems {
      let at = problem.isExtended ? hex(problem.offset, width: 3) : hex(problem.offset, width: 2)
      let what =
        switch problem.kind {
        case .looped: "<chain looped>"
        case .broken: "<chain broken>"
        case .outOfRange: "<chain points out of range>"
        case .unreadable: "<access denied>"
        }
      out.append("\tCapabilities: [\(at)] \(what)")
    }
    out.append("\tKernel driver in use: " + (driver ?? "none"))
    return out.joined(separator: "\n") + "\n"
  }
}

extension BAR {
  /// `Memory at f0000000 (32-bit, non-prefetchable) [size=4K]`, as lspci -vv prints a region.
  public var lspciText: String {
    var s: String
    switch kind {
    case .io:
      s =
        "I/O ports at "
        + (address != 0 || !isDisabled ? hex(address, width: 4) : isIgnored ? "<ignored>" : "<unassigned>")
      if isVirtual { s += " [virtual]" } else if isDisabled { s += " [disabled]" }
    case .memory:
      s = "Memory at "
      s +=
        isBroken
        ? "<broken-64-bit-slot>" : address != 0 ? hex(address, width: 8) : isIgnored ? "<ignored>" : "<unassigned>"
      s += " (\((memoryType ?? .bits32).rawValue), \(prefetchable ? "" : "non-")prefetchable)"
      if isVirtual { s += " [virtual]" } else if isDisabled { s += " [disabled]" }
    }
    if size != 0 { s += " [size=\(Self.sizeText(size))]" }
    return s
  }

  /// lspci's size notation: the largest of K, M, G, T that divides exactly.
  public static func sizeText(_ bytes: UInt64) -> String {
    var x = bytes
    var unit = 0
    let units = ["", "K", "M", "G", "T"]
    while unit < units.count - 1, x % 1024 == 0 {
      x /= 1024
      unit += 1
    }
    return "\(x)\(units[unit])"
  }
}

extension Capability {
  /// The `Capabilities: [..] ...` line and its detail lines.
  public var lspciLines: [String] {
    let head =
      isExtended
      ? "\tCapabilities: [\(hex(offset, width: 3)) v\(version ?? 0)] " : "\tCapabilities: [\(hex(offset, width: 2))] "
    func flag(_ b: Bool) -> String { b ? "+" : "-" }
    if let pm = powerManagement {
      var lines = [head + "Power Management version \(pm.version)"]
      if let state = pm.powerState { lines.append("\t\tStatus: D\(state)") }
      return lines
    }
    if let msi {
      return [
        head
          + "MSI: Enable\(flag(msi.enabled)) Count=\(msi.count)/\(msi.maxCount) Maskable\(flag(msi.perVectorMasking)) 64bit\(flag(msi.is64Bit))"
      ]
    }
    if let msix {
      var lines = [
        head + "MSI-X: Enable\(flag(msix.enabled)) Count=\(msix.vectorCount) Masked\(flag(msix.functionMasked))"
      ]
      if let t = msix.table { lines.append("\t\tVector table: BAR=\(t.bar) offset=\(hex(t.offset, width: 8))") }
      if let p = msix.pendingBitArray { lines.append("\t\tPBA: BAR=\(p.bar) offset=\(hex(p.offset, width: 8))") }
      return lines
    }
    if let express {
      return [
        head + "Express (v\(express.version)) \(express.portTypeName), IntMsgNum \(express.interruptMessageNumber)"
      ]
    }
    if !isExtended && id == 0x09 {
      guard let virtio else {
        return [head + "Vendor Specific Information: Len=\(hex(vendorLength ?? 0, width: 2)) <?>"]
      }
      var detail: String
      if virtio.configType == 8 {
        detail =
          "\t\tBAR=\(virtio.bar) offset=\(hex(virtio.offset, width: 16)) size=\(hex(virtio.length, width: 16)) id=\(virtio.id)"
      } else {
        detail = "\t\tBAR=\(virtio.bar) offset=\(hex(virtio.offset, width: 8)) size=\(hex(virtio.length, width: 8))"
      }
      if let m = virtio.notifyMultiplier { detail += " multiplier=\(hex(m, width: 8))" }
      return [head + "Vendor Specific Information: VirtIO: \(virtio.configTypeName)", detail]
    }
    return [head + name]
  }
}
