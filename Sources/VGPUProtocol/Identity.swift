/// Who the device says it is: what `cuDeviceGetName`, `cuDeviceGetUuid`,
/// `nvmlDeviceGetPciInfo` and friends will report.
public struct DeviceIdentity: Equatable, Sendable {
  /// At most 63 bytes of UTF-8 (the register holds 64, NUL-padded).
  public var name: String
  public var uuid: [UInt8]
  /// `DDDD:BB:DD.F`, at most 15 bytes.
  public var pciBusID: String
  public var computeCapability: (major: UInt32, minor: UInt32)
  public var memorySize: UInt64
  /// As `cuDriverGetVersion` reports it: 1000 × major + 10 × minor (12080 = 12.8).
  public var cudaDriverVersion: UInt32
  public var multiprocessorCount: UInt32
  /// As NVML's `nvmlSystemGetDriverVersion` reports it, at most 31 bytes.
  public var driverVersion: String

  public init(
    name: String, uuid: [UInt8], pciBusID: String, computeCapability: (major: UInt32, minor: UInt32),
    memorySize: UInt64, cudaDriverVersion: UInt32, multiprocessorCount: UInt32, driverVersion: String
  ) {
    self.name = name
    self.uuid = uuid
    self.pciBusID = pciBusID
    self.computeCapability = computeCapability
    self.memorySize = memorySize
    self.cudaDriverVersion = cudaDriverVersion
    self.multiprocessorCount = multiprocessorCount
    self.driverVersion = driverVersion
  }

  public static func == (a: DeviceIdentity, b: DeviceIdentity) -> Bool {
    a.name == b.name && a.uuid == b.uuid && a.pciBusID == b.pciBusID
      && a.computeCapability == b.computeCapability && a.memorySize == b.memorySize
      && a.cudaDriverVersion == b.cudaDriverVersion && a.multiprocessorCount == b.multiprocessorCount
      && a.driverVersion == b.driverVersion
  }

  /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as nvidia-smi and Ollama print it.
  public var uuidString: String {
    let h = uuid.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }
    let groups = [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].map { h[$0].joined() }
    return "GPU-" + groups.joined(separator: "-")
  }

  public func write(to r: RegisterBlock) {
    Self.writeString(name, to: r, at: Register.name, capacity: 64)
    for i in 0..<16 { (r.base + Register.uuid + i).storeBytes(of: i < uuid.count ? uuid[i] : 0, as: UInt8.self) }
    Self.writeString(pciBusID, to: r, at: Register.pciBusID, capacity: 16)
    r.store32(Register.computeMajor, computeCapability.major)
    r.store32(Register.computeMinor, computeCapability.minor)
    r.store64(Register.memorySize, memorySize)
    r.store32(Register.cudaDriverVersion, cudaDriverVersion)
    r.store32(Register.multiprocessorCount, multiprocessorCount)
    Self.writeString(driverVersion, to: r, at: Register.driverVersion, capacity: 32)
  }

  /// Reads the identity registers; strings stop at the first NUL and at the
  /// field's end, and invalid UTF-8 is replaced, so hostile bytes stay harmless.
  public init(reading r: RegisterBlock) {
    name = Self.readString(r, at: Register.name, capacity: 64)
    uuid = (0..<16).map { (r.base + Register.uuid + $0).load(as: UInt8.self) }
    pciBusID = Self.readString(r, at: Register.pciBusID, capacity: 16)
    computeCapability = (r.load32(Register.computeMajor), r.load32(Register.computeMinor))
    memorySize = r.load64(Register.memorySize)
    cudaDriverVersion = r.load32(Register.cudaDriverVersion)
    multiprocessorCount = r.load32(Register.multiprocessorCount)
    driverVersion = Self.readString(r, at: Register.driverVersion, capacity: 32)
  }

  static func writeString(_ s: String, to r: RegisterBlock, at offset: Int, capacity: Int) {
    let bytes = Array(s.utf8.prefix(capacity - 1))
    for i in 0..<capacity { (r.base + offset + i).storeBytes(of: i < bytes.count ? bytes[i] : 0, as: UInt8.self) }
  }

  static func readString(_ r: RegisterBlock, at offset: Int, capacity: Int) -> String {
    var bytes: [UInt8] = []
    for i in 0..<capacity {
      let b = (r.base + offset + i).load(as: UInt8.self)
      if b == 0 { break }
      bytes.append(b)
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}
