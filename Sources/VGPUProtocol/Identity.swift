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
    Self.writeString(name, to: r, at: Register.name)
    let u = r.bytes(Register.uuid)
    for i in u.indices { u[i] = i < uuid.count ? uuid[i] : 0 }
    Self.writeString(pciBusID, to: r, at: Register.pciBusID)
    r.store(Register.computeMajor, computeCapability.major)
    r.store(Register.computeMinor, computeCapability.minor)
    r.store(Register.memorySize, memorySize)
    r.store(Register.cudaDriverVersion, cudaDriverVersion)
    r.store(Register.multiprocessorCount, multiprocessorCount)
    Self.writeString(driverVersion, to: r, at: Register.driverVersion)
  }

  /// Reads the identity registers; strings stop at the first NUL and at the
  /// field's end, and invalid UTF-8 is replaced, so hostile bytes stay harmless.
  public init(reading r: RegisterBlock) {
    name = Self.readString(r, at: Register.name)
    uuid = Array(r.bytes(Register.uuid))
    pciBusID = Self.readString(r, at: Register.pciBusID)
    computeCapability = (r.load(Register.computeMajor), r.load(Register.computeMinor))
    memorySize = r.load(Register.memorySize)
    cudaDriverVersion = r.load(Register.cudaDriverVersion)
    multiprocessorCount = r.load(Register.multiprocessorCount)
    driverVersion = Self.readString(r, at: Register.driverVersion)
  }

  static func writeString(_ s: String, to r: RegisterBlock, at field: RegisterBytes) {
    let bytes = Array(s.utf8.prefix(field.count - 1))
    let out = r.bytes(field)
    for i in out.indices { out[i] = i < bytes.count ? bytes[i] : 0 }
  }

  static func readString(_ r: RegisterBlock, at field: RegisterBytes) -> String {
    String(decoding: r.bytes(field).prefix { $0 != 0 }, as: UTF8.self)
  }
}
