import Testing

@testable import VGPUDevice

private func parse(_ bytes: [UInt8], maxKernels: Int = ModuleImage.maxKernels) throws(ModuleImageError) -> ModuleImage {
  // Array.withUnsafeBytes rethrows untyped errors, so carry the typed one out in a Result.
  let result = bytes.withUnsafeBytes { raw in
    Result { () throws(ModuleImageError) in try ModuleImage(parsing: raw, maxKernels: maxKernels) }
  }
  return try result.get()
}

private func parse(_ text: String) throws(ModuleImageError) -> ModuleImage {
  try parse(Array(text.utf8))
}

@Suite struct ModuleImageTests {
  @Test func roundTrip() throws {
    for kernels in [[], BuiltinKernel.allCases, [.matmul, .fill], [.reduceSum]] as [[BuiltinKernel]] {
      let text = ModuleImage.text(kernels: kernels)
      #expect(try parse(text) == ModuleImage(kernels: kernels))
    }
    #expect(ModuleImage.text(kernels: [.fill, .vectorAdd]) == "vgpu-module 1\nkernel fill\nkernel vector_add\n")
  }

  @Test func commentsBlankLinesTabsAndCRLF() throws {
    let text = "vgpu-module 1\r\n\r\n# a comment\n   # indented comment\n\tkernel\tsaxpy  \n\nkernel matmul"
    #expect(try parse(text).kernels == [.saxpy, .matmul])
  }

  @Test func badMagic() {
    #expect(throws: ModuleImageError.badMagic(line: 1, found: "")) { try parse("") }
    #expect(throws: ModuleImageError.badMagic(line: 1, found: "")) { try parse("\nvgpu-module 1\n") }
    #expect(throws: ModuleImageError.badMagic(line: 1, found: "ELF")) { try parse("ELF\nkernel fill\n") }
    #expect(throws: ModuleImageError.badMagic(line: 1, found: "# vgpu-module 1")) { try parse("# vgpu-module 1\n") }
    #expect(throws: ModuleImageError.badMagic(line: 1, found: "vgpu-module  1")) { try parse("vgpu-module  1\n") }
    let long = String(repeating: "x", count: 500)
    do {
      _ = try parse(long)
      Issue.record("expected an error")
    } catch {
      guard case .badMagic(_, let found) = error else {
        Issue.record("\(error)")
        return
      }
      #expect(found.count == 80)
    }
  }

  @Test func unsupportedVersion() {
    #expect(throws: ModuleImageError.unsupportedVersion(line: 1, found: "vgpu-module 2")) {
      try parse("vgpu-module 2\nkernel fill\n")
    }
    let error = ModuleImageError.unsupportedVersion(line: 1, found: "vgpu-module 2")
    #expect(error.description.contains("version 1"))
  }

  @Test func unknownKernelListsTheKnownOnes() {
    #expect(throws: ModuleImageError.unknownKernel(line: 3, name: "gemm")) {
      try parse("vgpu-module 1\nkernel fill\nkernel gemm\n")
    }
    // Names are the raw values, not the Swift case names.
    #expect(throws: ModuleImageError.unknownKernel(line: 2, name: "vectorAdd")) {
      try parse("vgpu-module 1\nkernel vectorAdd\n")
    }
    let description = ModuleImageError.unknownKernel(line: 3, name: "gemm").description
    #expect(description.contains("line 3") && description.contains("'gemm'"))
    for kernel in BuiltinKernel.allCases { #expect(description.contains(kernel.rawValue)) }
  }

  @Test func syntaxErrors() {
    #expect(throws: ModuleImageError.syntax(line: 2, found: "kernel")) { try parse("vgpu-module 1\nkernel\n") }
    #expect(throws: ModuleImageError.syntax(line: 2, found: "kernel fill saxpy")) {
      try parse("vgpu-module 1\nkernel fill saxpy\n")
    }
    #expect(throws: ModuleImageError.syntax(line: 3, found: "func fill")) { try parse("vgpu-module 1\n\nfunc fill\n") }
    #expect(throws: ModuleImageError.syntax(line: 2, found: "kernel fill # trailing")) {
      try parse("vgpu-module 1\nkernel fill # trailing\n")
    }
  }

  @Test func duplicates() {
    #expect(throws: ModuleImageError.duplicateKernel(line: 4, name: "fill", firstLine: 2)) {
      try parse("vgpu-module 1\nkernel fill\n# again\nkernel fill\n")
    }
    let description = ModuleImageError.duplicateKernel(line: 4, name: "fill", firstLine: 2).description
    #expect(description.contains("line 4") && description.contains("line 2"))
  }

  @Test func tooLarge() {
    let text = ModuleImage.text(kernels: [.fill]) + String(repeating: "#\n", count: 40_000)
    #expect(throws: ModuleImageError.tooLarge(byteCount: text.utf8.count, limit: 65_536)) { try parse(text) }
    // Exactly the limit is fine.
    var exact = Array(ModuleImage.text(kernels: [.fill]).utf8)
    exact += Array(repeating: UInt8(ascii: "#"), count: 65_536 - exact.count)
    #expect(throws: Never.self) { try parse(exact) }
  }

  @Test func tooManyKernels() {
    // Six built-in kernels cannot exceed 64 without a duplicate, so lower the limit to see the check.
    #expect(throws: ModuleImageError.tooManyKernels(line: 4, limit: 2)) {
      try parse(Array("vgpu-module 1\nkernel fill\nkernel scale\nkernel saxpy\n".utf8), maxKernels: 2)
    }
    #expect(throws: Never.self) { try parse(Array("vgpu-module 1\nkernel fill\nkernel scale\n".utf8), maxKernels: 2) }
  }

  @Test func notUTF8() throws {
    var bytes = Array("vgpu-module 1\nkernel fill\n# caf".utf8)
    bytes += [0xC3]  // a truncated two-byte sequence
    bytes += Array("\nkernel scale\n".utf8)
    #expect(throws: ModuleImageError.notUTF8(line: 3)) { try parse(bytes) }
    #expect(throws: ModuleImageError.notUTF8(line: 1)) { try parse([0xFF, 0xFE, 0x0A]) }
    // Valid multi-byte UTF-8 in a comment is fine.
    #expect(try parse("vgpu-module 1\n# café ✓\nkernel fill\n").kernels == [.fill])
  }
}
