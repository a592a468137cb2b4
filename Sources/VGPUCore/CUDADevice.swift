import ShimCore
import VGPU
import VGPUProtocol

#if canImport(Glibc)
  import Glibc
#endif

// Devices: there is one, ordinal 0, once cuInit has found it.

/// cuDeviceGetCount(int *count): 1 with a device, 0 without — never a
/// made-up one. Before cuInit, CUDA_ERROR_NOT_INITIALIZED (count 0).
@_cdecl("vgpucore_cuDeviceGetCount")
public func vgpucore_cuDeviceGetCount(_ count: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let count else { return CUDA_ERROR_INVALID_VALUE }
  count.pointee = 0
  guard cuInitCalled.load(ordering: .acquiring) else { return CUDA_ERROR_NOT_INITIALIZED }
  // cuInit said why there is none, if there is none.
  if case .success = ShimRuntime.shared.device() { count.pointee = 1 }
  return CUDA_SUCCESS
}

/// cuDeviceGet(CUdevice *device, int ordinal)
@_cdecl("vgpucore_cuDeviceGet")
public func vgpucore_cuDeviceGet(_ device: UnsafeMutablePointer<Int32>?, _ ordinal: Int32) -> Int32 {
  guard let device else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(ordinal, "cuDeviceGet") { _ in
    device.pointee = 0
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetName(char *name, int len, CUdevice dev): the name, cut to
/// `len - 1` bytes, NUL-terminated.
@_cdecl("vgpucore_cuDeviceGetName")
public func vgpucore_cuDeviceGetName(_ name: UnsafeMutablePointer<CChar>?, _ length: Int32, _ dev: Int32) -> Int32 {
  guard let name, length > 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceGetName") { device in
    copyCString(device.info.identity.name, to: name, capacity: Int(length))
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetUuid(CUuuid *uuid, CUdevice dev): 16 bytes.
@_cdecl("vgpucore_cuDeviceGetUuid")
public func vgpucore_cuDeviceGetUuid(_ uuid: UnsafeMutableRawPointer?, _ dev: Int32) -> Int32 {
  guard let uuid else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceGetUuid") { device in
    let bytes = device.info.identity.uuid
    for i in 0..<16 { uuid.storeBytes(of: i < bytes.count ? bytes[i] : 0, toByteOffset: i, as: UInt8.self) }
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetUuid_v2: differs from cuDeviceGetUuid only for MIG instances.
@_cdecl("vgpucore_cuDeviceGetUuid_v2")
public func vgpucore_cuDeviceGetUuid_v2(_ uuid: UnsafeMutableRawPointer?, _ dev: Int32) -> Int32 {
  vgpucore_cuDeviceGetUuid(uuid, dev)
}

/// cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
@_cdecl("vgpucore_cuDeviceTotalMem_v2")
public func vgpucore_cuDeviceTotalMem_v2(_ bytes: UnsafeMutablePointer<Int>?, _ dev: Int32) -> Int32 {
  guard let bytes else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceTotalMem") { device in
    bytes.pointee = Int(clamping: device.info.identity.memorySize)
    return CUDA_SUCCESS
  }
}

/// cuDeviceTotalMem(unsigned int *bytes, CUdevice dev): the CUDA 2.x entry
/// point, 32 bits wide; larger sizes are clamped to 4 GiB - 1.
@_cdecl("vgpucore_cuDeviceTotalMem")
public func vgpucore_cuDeviceTotalMem(_ bytes: UnsafeMutablePointer<UInt32>?, _ dev: Int32) -> Int32 {
  guard let bytes else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceTotalMem") { device in
    bytes.pointee = UInt32(clamping: device.info.identity.memorySize)
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
@_cdecl("vgpucore_cuDeviceGetAttribute")
public func vgpucore_cuDeviceGetAttribute(_ value: UnsafeMutablePointer<Int32>?, _ attribute: Int32, _ dev: Int32)
  -> Int32
{
  guard let value else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceGetAttribute") { device in
    guard var v = deviceAttribute(attribute, device.info.identity) else { return CUDA_ERROR_INVALID_VALUE }
    // Cooperative launches (grid-wide sync) with a device that runs them (protocol 2.2).
    if attribute == 95 && device.info.features.contains(.cooperativeLaunch) { v = 1 }
    value.pointee = v
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev): as NVIDIA's
/// driver writes it, `DDDD:BB:DD.F` in upper-case hex (13 bytes with the NUL).
@_cdecl("vgpucore_cuDeviceGetPCIBusId")
public func vgpucore_cuDeviceGetPCIBusId(_ busID: UnsafeMutablePointer<CChar>?, _ length: Int32, _ dev: Int32)
  -> Int32
{
  guard let busID, length > 0 else { return CUDA_ERROR_INVALID_VALUE }
  return withDevice(dev, "cuDeviceGetPCIBusId") { device in
    guard let pci = PCILocation(parsing: device.info.identity.pciBusID) else { return CUDA_ERROR_NOT_SUPPORTED }
    copyCString(pci.description, to: busID, capacity: Int(length))
    return CUDA_SUCCESS
  }
}

/// cuDeviceGetByPCIBusId(CUdevice *dev, const char *pciBusId): accepts
/// `domain:bus:device.function`, `domain:bus:device` and `bus:device.function`
/// (hex, any case, 4- or 8-digit domain).
@_cdecl("vgpucore_cuDeviceGetByPCIBusId")
public func vgpucore_cuDeviceGetByPCIBusId(_ dev: UnsafeMutablePointer<Int32>?, _ busID: UnsafePointer<CChar>?)
  -> Int32
{
  guard let dev, let busID else { return CUDA_ERROR_INVALID_VALUE }
  let text = String(cString: busID)
  return withDevice("cuDeviceGetByPCIBusId") { device in
    guard let wanted = PCILocation(parsing: text) else { return CUDA_ERROR_INVALID_VALUE }
    guard let ours = PCILocation(parsing: device.info.identity.pciBusID),
      wanted.domain == ours.domain, wanted.bus == ours.bus, wanted.device == ours.device,
      wanted.function == ours.function
    else { return CUDA_ERROR_INVALID_DEVICE }
    dev.pointee = 0
    return CUDA_SUCCESS
  }
}

/// Copies `s` into a C buffer of `capacity` bytes, cut to fit, NUL-terminated.
func copyCString(_ s: String, to buffer: UnsafeMutablePointer<CChar>, capacity: Int) {
  var s = s
  s.withUTF8 { utf8 in
    let n = min(utf8.count, capacity - 1)
    if n > 0 { UnsafeMutableRawPointer(buffer).copyMemory(from: utf8.baseAddress!, byteCount: n) }
    buffer[n] = 0
  }
}

/// A PCI function's location, `[DDDD:]BB:DD[.F]`.
struct PCILocation: CustomStringConvertible {
  var domain: UInt32, bus: UInt32, device: UInt32, function: UInt32

  init?(parsing text: String) {
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2 || parts.count == 3 else { return nil }
    let slot = parts[parts.count - 1].split(separator: ".", omittingEmptySubsequences: false)
    guard slot.count == 1 || slot.count == 2 else { return nil }
    // "bus:device" alone (no domain, no function) is not a form CUDA accepts.
    guard parts.count == 3 || slot.count == 2 else { return nil }
    func hex(_ s: Substring, _ maxDigits: Int, _ limit: UInt32) -> UInt32? {
      guard !s.isEmpty, s.count <= maxDigits, let v = UInt32(s, radix: 16), v <= limit else { return nil }
      return v
    }
    guard let domain = parts.count == 3 ? hex(parts[0], 8, .max) : 0,
      let bus = hex(parts[parts.count - 2], 2, 0xff),
      let device = hex(slot[0], 2, 0x1f),
      let function = slot.count == 2 ? hex(slot[1], 1, 7) : 0
    else { return nil }
    (self.domain, self.bus, self.device, self.function) = (domain, bus, device, function)
  }

  var description: String {
    func hex(_ v: UInt32, _ digits: Int) -> String {
      let s = String(v, radix: 16, uppercase: true)
      return String(repeating: "0", count: max(0, digits - s.count)) + s
    }
    return "\(hex(domain, 4)):\(hex(bus, 2)):\(hex(device, 2)).\(hex(function, 1))"
  }
}

/// The value of a CUdevice_attribute (cuda.h, enum CUdevice_attribute_enum),
/// or nil for one cuda.h does not define (CUDA_ERROR_INVALID_VALUE).
///
/// Limits are an H100 SXM5's (compute capability 9.0); the compute capability,
/// multiprocessor count and PCI location are the device's own. Features this
/// virtual GPU does not provide read 0, even where an H100 has them: mapped,
/// managed and registered host memory, virtual memory management (0 keeps
/// ggml-cuda off cuMemCreate), memory pools, IPC, multi-device cooperative and
/// cluster launches, stream priorities, ECC. COOPERATIVE_LAUNCH reads 1 where
/// the device negotiated cooperativeLaunch (cuDeviceGetAttribute).
func deviceAttribute(_ attribute: Int32, _ identity: DeviceIdentity) -> Int32? {
  let pci = PCILocation(parsing: identity.pciBusID)
  switch attribute {
  case 1: return 1024  // MAX_THREADS_PER_BLOCK
  case 2: return 1024  // MAX_BLOCK_DIM_X
  case 3: return 1024  // MAX_BLOCK_DIM_Y
  case 4: return 64  // MAX_BLOCK_DIM_Z
  case 5: return 2_147_483_647  // MAX_GRID_DIM_X
  case 6: return 65535  // MAX_GRID_DIM_Y
  case 7: return 65535  // MAX_GRID_DIM_Z
  case 8: return 49152  // MAX_SHARED_MEMORY_PER_BLOCK
  case 9: return 65536  // TOTAL_CONSTANT_MEMORY
  case 10: return 32  // WARP_SIZE
  case 11: return 2_147_483_647  // MAX_PITCH
  case 12: return 65536  // MAX_REGISTERS_PER_BLOCK
  case 13: return 1_980_000  // CLOCK_RATE (kHz): H100 SXM5 boost clock
  case 14: return 512  // TEXTURE_ALIGNMENT
  case 15: return 1  // GPU_OVERLAP (deprecated: ASYNC_ENGINE_COUNT > 0)
  case 16: return Int32(clamping: identity.multiprocessorCount)  // MULTIPROCESSOR_COUNT
  case 17: return 0  // KERNEL_EXEC_TIMEOUT
  case 18: return 0  // INTEGRATED
  case 19: return 0  // CAN_MAP_HOST_MEMORY: no cuMemHostGetDevicePointer
  case 20: return 0  // COMPUTE_MODE: CU_COMPUTEMODE_DEFAULT
  case 21: return 131_072  // MAXIMUM_TEXTURE1D_WIDTH
  case 22: return 131_072  // MAXIMUM_TEXTURE2D_WIDTH
  case 23: return 65536  // MAXIMUM_TEXTURE2D_HEIGHT
  case 24: return 16384  // MAXIMUM_TEXTURE3D_WIDTH
  case 25: return 16384  // MAXIMUM_TEXTURE3D_HEIGHT
  case 26: return 16384  // MAXIMUM_TEXTURE3D_DEPTH
  case 27: return 32768  // MAXIMUM_TEXTURE2D_LAYERED_WIDTH
  case 28: return 32768  // MAXIMUM_TEXTURE2D_LAYERED_HEIGHT
  case 29: return 2048  // MAXIMUM_TEXTURE2D_LAYERED_LAYERS
  case 30: return 512  // SURFACE_ALIGNMENT
  case 31: return 1  // CONCURRENT_KERNELS
  case 32: return 0  // ECC_ENABLED
  case 33: return Int32(pci?.bus ?? 0)  // PCI_BUS_ID
  case 34: return Int32(pci?.device ?? 0)  // PCI_DEVICE_ID
  case 35: return 0  // TCC_DRIVER
  case 36: return 2_619_000  // MEMORY_CLOCK_RATE (kHz): H100 SXM5 HBM3
  case 37: return 5120  // GLOBAL_MEMORY_BUS_WIDTH (bits)
  case 38: return 50 << 20  // L2_CACHE_SIZE
  case 39: return 2048  // MAX_THREADS_PER_MULTIPROCESSOR
  case 40: return 1  // ASYNC_ENGINE_COUNT
  case 41: return 1  // UNIFIED_ADDRESSING
  case 42: return 32768  // MAXIMUM_TEXTURE1D_LAYERED_WIDTH
  case 43: return 2048  // MAXIMUM_TEXTURE1D_LAYERED_LAYERS
  case 44: return 0  // CAN_TEX2D_GATHER (deprecated)
  case 45: return 32768  // MAXIMUM_TEXTURE2D_GATHER_WIDTH
  case 46: return 32768  // MAXIMUM_TEXTURE2D_GATHER_HEIGHT
  case 47: return 8192  // MAXIMUM_TEXTURE3D_WIDTH_ALTERNATE
  case 48: return 8192  // MAXIMUM_TEXTURE3D_HEIGHT_ALTERNATE
  case 49: return 32768  // MAXIMUM_TEXTURE3D_DEPTH_ALTERNATE
  case 50: return Int32(bitPattern: pci?.domain ?? 0)  // PCI_DOMAIN_ID
  case 51: return 32  // TEXTURE_PITCH_ALIGNMENT
  case 52: return 32768  // MAXIMUM_TEXTURECUBEMAP_WIDTH
  case 53: return 32768  // MAXIMUM_TEXTURECUBEMAP_LAYERED_WIDTH
  case 54: return 2046  // MAXIMUM_TEXTURECUBEMAP_LAYERED_LAYERS
  case 55: return 32768  // MAXIMUM_SURFACE1D_WIDTH
  case 56: return 131_072  // MAXIMUM_SURFACE2D_WIDTH
  case 57: return 65536  // MAXIMUM_SURFACE2D_HEIGHT
  case 58: return 16384  // MAXIMUM_SURFACE3D_WIDTH
  case 59: return 16384  // MAXIMUM_SURFACE3D_HEIGHT
  case 60: return 16384  // MAXIMUM_SURFACE3D_DEPTH
  case 61: return 32768  // MAXIMUM_SURFACE1D_LAYERED_WIDTH
  case 62: return 2048  // MAXIMUM_SURFACE1D_LAYERED_LAYERS
  case 63: return 32768  // MAXIMUM_SURFACE2D_LAYERED_WIDTH
  case 64: return 32768  // MAXIMUM_SURFACE2D_LAYERED_HEIGHT
  case 65: return 2048  // MAXIMUM_SURFACE2D_LAYERED_LAYERS
  case 66: return 32768  // MAXIMUM_SURFACECUBEMAP_WIDTH
  case 67: return 32768  // MAXIMUM_SURFACECUBEMAP_LAYERED_WIDTH
  case 68: return 2046  // MAXIMUM_SURFACECUBEMAP_LAYERED_LAYERS
  case 69: return 268_435_456  // MAXIMUM_TEXTURE1D_LINEAR_WIDTH (deprecated)
  case 70: return 131_072  // MAXIMUM_TEXTURE2D_LINEAR_WIDTH
  case 71: return 65000  // MAXIMUM_TEXTURE2D_LINEAR_HEIGHT
  case 72: return 2_097_120  // MAXIMUM_TEXTURE2D_LINEAR_PITCH
  case 73: return 32768  // MAXIMUM_TEXTURE2D_MIPMAPPED_WIDTH
  case 74: return 32768  // MAXIMUM_TEXTURE2D_MIPMAPPED_HEIGHT
  case 75: return Int32(clamping: identity.computeCapability.major)  // COMPUTE_CAPABILITY_MAJOR
  case 76: return Int32(clamping: identity.computeCapability.minor)  // COMPUTE_CAPABILITY_MINOR
  case 77: return 32768  // MAXIMUM_TEXTURE1D_MIPMAPPED_WIDTH
  case 78: return 0  // STREAM_PRIORITIES_SUPPORTED
  case 79: return 1  // GLOBAL_L1_CACHE_SUPPORTED
  case 80: return 1  // LOCAL_L1_CACHE_SUPPORTED
  case 81: return 233_472  // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR (228 KiB)
  case 82: return 65536  // MAX_REGISTERS_PER_MULTIPROCESSOR
  case 83: return 0  // MANAGED_MEMORY: no cuMemAllocManaged
  case 84: return 0  // MULTI_GPU_BOARD
  case 85: return 0  // MULTI_GPU_BOARD_GROUP_ID
  case 86: return 0  // HOST_NATIVE_ATOMIC_SUPPORTED
  case 87: return 2  // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
  case 88: return 0  // PAGEABLE_MEMORY_ACCESS
  case 89: return 0  // CONCURRENT_MANAGED_ACCESS
  case 90: return 1  // COMPUTE_PREEMPTION_SUPPORTED
  case 91: return 0  // CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
  case 92: return 0  // CAN_USE_STREAM_MEM_OPS_V1
  case 93: return 0  // CAN_USE_64_BIT_STREAM_MEM_OPS_V1
  case 94: return 0  // CAN_USE_STREAM_WAIT_VALUE_NOR_V1
  case 95: return 0  // COOPERATIVE_LAUNCH: 1 with feature cooperativeLaunch (cuDeviceGetAttribute)
  case 96: return 0  // COOPERATIVE_MULTI_DEVICE_LAUNCH
  case 97: return 232_448  // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN (227 KiB)
  case 98: return 0  // CAN_FLUSH_REMOTE_WRITES
  case 99: return 0  // HOST_REGISTER_SUPPORTED: no cuMemHostRegister
  case 100: return 0  // PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES
  case 101: return 0  // DIRECT_MANAGED_MEM_ACCESS_FROM_HOST
  case 102: return 0  // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: no cuMemCreate / cuMemMap
  case 103: return 0  // HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
  case 104: return 0  // HANDLE_TYPE_WIN32_HANDLE_SUPPORTED
  case 105: return 0  // HANDLE_TYPE_WIN32_KMT_HANDLE_SUPPORTED
  case 106: return 32  // MAX_BLOCKS_PER_MULTIPROCESSOR
  case 107: return 0  // GENERIC_COMPRESSION_SUPPORTED
  case 108: return 0  // MAX_PERSISTING_L2_CACHE_SIZE: no access policy windows
  case 109: return 0  // MAX_ACCESS_POLICY_WINDOW_SIZE
  case 110: return 0  // GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED
  case 111: return 1024  // RESERVED_SHARED_MEMORY_PER_BLOCK
  case 112: return 0  // SPARSE_CUDA_ARRAY_SUPPORTED
  case 113: return 0  // READ_ONLY_HOST_REGISTER_SUPPORTED
  case 114: return 0  // TIMELINE_SEMAPHORE_INTEROP_SUPPORTED
  case 115: return 0  // MEMORY_POOLS_SUPPORTED: no cuMemAllocAsync
  case 116: return 0  // GPU_DIRECT_RDMA_SUPPORTED
  case 117: return 0  // GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS
  case 118: return 0  // GPU_DIRECT_RDMA_WRITES_ORDERING: CU_GPU_DIRECT_RDMA_WRITES_ORDERING_NONE
  case 119: return 0  // MEMPOOL_SUPPORTED_HANDLE_TYPES
  case 120: return 0  // CLUSTER_LAUNCH
  case 121: return 0  // DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED
  case 122: return 0  // CAN_USE_64_BIT_STREAM_MEM_OPS
  case 123: return 0  // CAN_USE_STREAM_WAIT_VALUE_NOR
  case 124: return 0  // DMA_BUF_SUPPORTED
  case 125: return 0  // IPC_EVENT_SUPPORTED
  case 126: return 1  // MEM_SYNC_DOMAIN_COUNT
  case 127: return 0  // TENSOR_MAP_ACCESS_SUPPORTED
  case 128: return 0  // HANDLE_TYPE_FABRIC_SUPPORTED
  case 129: return 0  // UNIFIED_FUNCTION_POINTERS
  case 130: return 0  // NUMA_CONFIG: CU_DEVICE_NUMA_CONFIG_NONE
  case 131: return -1  // NUMA_ID
  case 132: return 0  // MULTICAST_SUPPORTED
  case 133: return 0  // MPS_ENABLED
  case 134: return -1  // HOST_NUMA_ID
  case 135: return 0  // D3D12_CIG_SUPPORTED
  case 136: return 0  // MEM_DECOMPRESS_ALGORITHM_MASK
  case 137: return 0  // MEM_DECOMPRESS_MAXIMUM_LENGTH
  case 138: return 0  // VULKAN_CIG_SUPPORTED
  case 139: return 0  // GPU_PCI_DEVICE_ID: not an NVIDIA PCI function; no ids to report
  case 140: return 0  // GPU_PCI_SUBSYSTEM_ID
  case 141: return 0  // HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
  case 142: return 0  // HOST_NUMA_MEMORY_POOLS_SUPPORTED
  case 143: return 0  // HOST_NUMA_MULTINODE_IPC_SUPPORTED
  default: return nil  // includes CU_DEVICE_ATTRIBUTE_MAX (144)
  }
}
