import CSupport

/// One region of a VFIO device (vfio.h "struct vfio_region_info"): for vfio-pci,
/// indexes 0-5 are the BARs, 6 the ROM, 7 config space. `offset` is where the
/// region lies in the device fd, for pread/pwrite/mmap.
public struct VFIORegionInfo: Sendable, Equatable {
  public var index: UInt32
  public var flags: UInt32
  public var size: UInt64
  public var offset: UInt64
  /// The parts that may be mmapped, from VFIO_REGION_INFO_CAP_SPARSE_MMAP
  /// (vfio.h): vfio-pci leaves out a BAR's MSI-X table, which the kernel must
  /// own. `nil`: no such capability, the whole region maps (if `mappable`).
  public var sparseAreas: [Range<UInt64>]?

  public var readable: Bool { flags & VGPU_VFIO_REGION_INFO_FLAG_READ != 0 }
  public var writable: Bool { flags & VGPU_VFIO_REGION_INFO_FLAG_WRITE != 0 }
  public var mappable: Bool { flags & VGPU_VFIO_REGION_INFO_FLAG_MMAP != 0 }

  public init(index: UInt32, flags: UInt32, size: UInt64, offset: UInt64, sparseAreas: [Range<UInt64>]? = nil) {
    self.index = index
    self.flags = flags
    self.size = size
    self.offset = offset
    self.sparseAreas = sparseAreas
  }

  /// The size of the fixed header the kernel fills when argsz asks for no more.
  public static let headerSize = MemoryLayout<vfio_region_info>.size

  /// Decodes what VFIO_DEVICE_GET_REGION_INFO wrote into `buffer`: the header,
  /// then, if VFIO_REGION_INFO_FLAG_CAPS and `cap_offset` is set, the chain of
  /// `struct vfio_info_cap_header { u16 id; u16 version; u32 next; }` whose
  /// offsets count from the start of the buffer (0 ends it). Never reads
  /// outside `buffer`, and stops on a loop; a kernel is trusted, a bug is not.
  public static func decode(_ buffer: UnsafeRawBufferPointer) -> VFIORegionInfo? {
    guard buffer.count >= headerSize else { return nil }
    let header = buffer.loadUnaligned(as: vfio_region_info.self)
    var info = VFIORegionInfo(index: header.index, flags: header.flags, size: header.size, offset: header.offset)
    guard header.flags & VGPU_VFIO_REGION_INFO_FLAG_CAPS != 0 else { return info }
    var next = Int(header.cap_offset)
    var seen = Set<Int>()
    while next != 0, next >= headerSize, next + 8 <= buffer.count, seen.insert(next).inserted {
      let id = buffer.loadUnaligned(fromByteOffset: next, as: UInt16.self)
      let following = Int(buffer.loadUnaligned(fromByteOffset: next + 4, as: UInt32.self))
      if id == VGPU_VFIO_REGION_INFO_CAP_SPARSE_MMAP, next + Int(VGPU_VFIO_SPARSE_MMAP_HEADER_SIZE) <= buffer.count {
        // struct vfio_region_info_cap_sparse_mmap { header; u32 nr_areas; u32 reserved; areas[] }
        let count = Int(buffer.loadUnaligned(fromByteOffset: next + 8, as: UInt32.self))
        let first = next + Int(VGPU_VFIO_SPARSE_MMAP_HEADER_SIZE)
        let stride = Int(VGPU_VFIO_SPARSE_MMAP_AREA_SIZE)
        var areas: [Range<UInt64>] = []
        for i in 0..<count {
          let at = first + i * stride
          guard at + stride <= buffer.count else { break }
          let offset = buffer.loadUnaligned(fromByteOffset: at, as: UInt64.self)
          let size = buffer.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self)
          // Areas must lie inside the region; drop any that do not.
          guard size > 0, offset <= header.size, size <= header.size - offset else { continue }
          areas.append(offset..<(offset + size))
        }
        info.sparseAreas = areas
      }
      next = following
    }
    return info
  }
}
