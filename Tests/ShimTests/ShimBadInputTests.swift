import Foundation
import TestSupport
import Testing

/// Issue 15's bad input on the shims' side (the CLIs are
/// PCIToolTests/BadInputTests): a real C client loads libcuda.so.1 with
/// VGPU_DEVICE set to every wrong device name, with odd VGPU_DEBUG values,
/// and hands the device images that are not ones. Each gets a defined CUDA
/// error code, the process goes on (the next call works where there is a
/// device), nothing traps, and stderr has at most one line per mistake, each
/// saying what was wrong.
@Suite struct ShimBadInputTests {
  /// count_devices.c's line when there is no device: cuInit and cuDeviceGet
  /// CUDA_ERROR_NO_DEVICE (100), a count of 0.
  static let noDevice = "version 12080 (0) cuInit 100 count 0 (0) cuDeviceGet 100"

  @Test(arguments: BadInput.deviceNames) func badDeviceNames(_ device: BadInput.DeviceName) throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("count_devices", linked: false)
    let r = try CUDAClient.run(program.path, [], device: device.name, timeout: 60)
    let output = BadInput.Output(status: r.status, stdout: r.stdout, stderr: r.stderr)
    #expect(output.crash == nil, "\(r)")
    #expect(r.status == 0, "\(r)")
    #expect(r.lines == [Self.noDevice], "\(r)")
    #expect(r.stderrLines.count == 1, "one line on stderr: \(r)")
    let line = r.stderrLines.first ?? ""
    #expect(line.hasPrefix("vgpu: cuInit failed: "), "\(r)")
    #expect(line.contains(device.name.trimmingCharacters(in: .whitespaces)), "names the device: \(r)")
  }

  /// The same names through NVML (pynvml over libnvidia-ml.so.1): nvmlInit
  /// succeeds with 0 devices, and one line names the device and why.
  @Test(arguments: BadInput.deviceNames) func badDeviceNamesThroughNVML(_ device: BadInput.DeviceName) throws {
    try ShimProgram.requireShims(["libnvidia-ml.so.1", "libvgpucore.so"])
    let python = try ShimProgram.requirePython()
    let script = "import pynvml as N\nN.nvmlInit()\nprint(N.nvmlDeviceGetCount())\nN.nvmlShutdown()\n"
    let r = try ShimProgram.run(python, ["-c", script], environment: ShimProgram.environment(device: device.name))
    #expect(r.status == 0 && r.stdout == "0\n", "\(r.stdout)\(r.stderr)")
    #expect(r.stderrLines.count == 1, "one line on stderr: \(r.stderr)")
    let line = r.stderrLines.first ?? ""
    #expect(line.hasPrefix("vgpu: nvmlInit") && line.contains("0 devices"), "\(r.stderr)")
    #expect(line.contains(device.name.trimmingCharacters(in: .whitespaces)), "names the device: \(r.stderr)")
  }

  /// VGPU_DEBUG: empty, 0, false, no and off (any case) are off: the one
  /// line; anything else is on: more lines, each a "vgpu: " line. Neither
  /// changes what the calls return.
  @Test(arguments: [
    ("", false), ("0", false), ("false", false), ("no", false), ("OFF", false), ("1", true), ("yes", true),
    ("2", true), ("garbage\u{7f}", true), ("99999999999999999999", true),
  ])
  func debugValues(_ value: String, _ on: Bool) throws {
    try CUDAClient.requireShims()
    let program = try CUDAClient.program("count_devices", linked: false)
    let r = try CUDAClient.run(
      program.path, [], device: "unix:" + BadInput.path("missing"), timeout: 60, extra: ["VGPU_DEBUG": value])
    let output = BadInput.Output(status: r.status, stdout: r.stdout, stderr: r.stderr)
    #expect(output.crash == nil, "\(r)")
    #expect(r.status == 0 && r.lines == [Self.noDevice], "\(r)")
    #expect(r.stderrLines.allSatisfy { $0.hasPrefix("vgpu: ") }, "\(r)")
    if on {
      #expect(r.stderrLines.count > 1, "VGPU_DEBUG=\(value) is on: \(r)")
    } else {
      #expect(r.stderrLines.count == 1, "VGPU_DEBUG=\(value) is off: \(r)")
    }
  }

  /// Images that are not ones, through cuModuleLoadData (`data`), cuModuleLoad
  /// (`file`), cuModuleLoadFatBinary (`fatbin`), cuLibraryLoadData and
  /// cuLibraryGetKernel (`library`) and cuLibraryLoadFromFile (`libfile`):
  /// empty, random, truncated ELF and fat binary, PTX that does not parse or
  /// names a target that is none, files that are not there. Each a defined
  /// CUresult, at most one line on stderr that names what was wrong, and the
  /// context still works ("next 0").
  @Test func badImages() throws {
    try CUDAClient.requireShims()
    let dir = BadInput.scratch
    func file(_ name: String, _ bytes: [UInt8]) -> String {
      let path = dir + "/" + name
      FileManager.default.createFile(atPath: path, contents: Data(bytes))
      return path
    }
    let header = ".version 8.0\n.target sm_90\n.address_size 64\n"
    // A module-level error fails the load; one inside a function fails that function when
    // it is asked for (the rest of the module loads: PTXModule keeps the error on it).
    let syntax = file("syntax.ptx", Array((header + ".visible .entry k()\n{\n  ret;\n}\n.bogus_directive 1;\n").utf8))
    let body = file(
      "body.ptx", Array((header + ".visible .entry vector_add()\n{\n  bogus.instruction %r1;\n}\n").utf8))
    let target = file("target.ptx", Array(".version 8.0\n.target bogus_arch\n.address_size 64\n".utf8))
    // An ELF header (64-bit, little-endian, EM_CUDA 190) cut off after 40 bytes.
    var elf: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0x33] + [UInt8](repeating: 0, count: 8)
    elf += [2, 0, 190, 0] + [UInt8](repeating: 0, count: 20)
    let truncatedELF = file("truncated.elf", elf)
    // A fat binary header (magic 0xBA55ED50, version 1, header 16 bytes) that promises 4 KiB and holds none
    // (through a bare pointer, `fatbin`: 4 KiB of the client's zeros, no entry in them).
    let truncatedFatbin = file(
      "truncated.fatbin", [0x50, 0xed, 0x55, 0xba, 1, 0, 16, 0, 0, 16, 0, 0, 0, 0, 0, 0])
    let cases: [(mode: String, path: String, result: Int32, says: String?)] = [
      ("data", BadInput.path("empty"), 200, "INVALID_IMAGE"),
      ("file", BadInput.path("empty"), 200, "INVALID_IMAGE"),
      ("data", BadInput.path("garbage"), 200, "INVALID_IMAGE"),
      ("fatbin", BadInput.path("garbage"), 200, "INVALID_IMAGE"),
      ("file", BadInput.path("tiny"), 200, "INVALID_IMAGE"),
      // A bare pointer has no length: the client's zeros complete the header, a 64-byte cubin
      // with no sections, which the PTX-only device cannot run. With a length (file), it is cut off.
      ("data", truncatedELF, 209, "no PTX"),
      ("file", truncatedELF, 200, "INVALID_IMAGE"),
      ("fatbin", truncatedFatbin, 200, "INVALID_IMAGE"),
      ("libfile", truncatedFatbin, 200, "INVALID_IMAGE"),
      ("data", syntax, 218, ".bogus_directive"),
      ("file", syntax, 218, ".bogus_directive"),
      ("library", body, 218, "bogus.instruction"),
      ("data", target, 218, "bogus_arch"),
      ("file", BadInput.path("missing"), 301, nil),
      ("libfile", BadInput.path("missing"), 301, nil),
      ("file", BadInput.path("directory"), 301, nil),
    ]
    let program = try CUDAClient.program("load_images", linked: true)
    try CUDATarget.mediator { device, _ in
      for c in cases {
        let r = try CUDAClient.run(program.path, ["\(c.mode):\(c.path)"], device: device, timeout: 60)
        let output = BadInput.Output(status: r.status, stdout: r.stdout, stderr: r.stderr)
        let what = "\(c.mode):\(c.path)"
        #expect(output.crash == nil, "\(what): \(r)")
        #expect(r.status == 0, "\(what): \(r)")
        #expect(r.lines == ["\(c.mode) \(c.result)", "next 0"], "\(what): \(r)")
        #expect(r.stderrLines.count <= 1, "\(what): at most one line: \(r)")
        if let says = c.says {
          #expect(r.stderrLines.count == 1, "\(what): one line: \(r)")
          #expect(r.stderrLines.first?.contains(says) == true, "\(what): the line says '\(says)': \(r)")
        }
      }
    }
  }
}
