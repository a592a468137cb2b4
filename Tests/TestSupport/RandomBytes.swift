#if canImport(Glibc)
  import Glibc
#endif

/// Reproducible pseudo-random bytes, fast even in a debug build: a 64 KiB
/// block of SplitMix64 output, tiled, with each tile stamped with its index
/// so that a chunk copied to the wrong place is caught.
public func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
  let tile = 64 << 10
  var block = [UInt64](repeating: 0, count: tile / 8)
  var generator = SplitMix(seed)
  for i in block.indices { block[i] = generator.next() }
  var out = [UInt8](repeating: 0, count: count)
  out.withUnsafeMutableBytes { raw in
    block.withUnsafeBytes { b in
      var offset = 0
      var index: UInt64 = 0
      while offset < count {
        let n = min(tile, count - offset)
        memcpy(raw.baseAddress! + offset, b.baseAddress!, n)
        // Stamp the tile's index at a place that moves from tile to tile.
        let at = offset + Int(index % 4096) * 8
        if at + 8 <= offset + n {
          var stamp = (index &+ 1) &* 0x9E37_79B9_7F4A_7C15 ^ seed
          memcpy(raw.baseAddress! + at, &stamp, 8)
        }
        offset += n
        index += 1
      }
    }
  }
  return out
}

/// Byte-wise equality through memcmp (a debug build's `==` is a loop).
public func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
  a.count == b.count && memcmp(a, b, a.count) == 0
}
