import Foundation
import TestSupport
import Testing

/// libvgpu.so, include/vgpu.h and vgpu.pc, used as a C programmer would: compiled with
/// `cc ... $(pkg-config --cflags --libs vgpu)`, run against a vgpu-mediator.
@Suite struct CABITests {
  static let pkgConfig = "$(pkg-config --cflags --libs vgpu)"

  @Test func pkgConfigNamesTheBuiltLibraryAndHeader() throws {
    try ShimProgram.requireShims(["libvgpu.so", "pkgconfig/vgpu.pc"])
    let r = try ShimProgram.shell("pkg-config --cflags --libs vgpu", environment: ShimProgram.environment(device: nil))
    #expect(r.status == 0, "\(r.stderr)")
    let include = Paths.shims.deletingLastPathComponent().appendingPathComponent("include").standardized.path
    #expect(r.stdout.contains("-I\(include)"), "\(r.stdout)")
    #expect(r.stdout.contains("-L\(Paths.shims.standardized.path)") && r.stdout.contains("-lvgpu"), "\(r.stdout)")
    #expect(FileManager.default.fileExists(atPath: include + "/vgpu.h"))
  }

  @Test func theExampleCopiesLaunchesAndReports() throws {
    try ShimProgram.requireShims(["libvgpu.so", "libvgpucore.so", "pkgconfig/vgpu.pc"])
    let mediator = try MediatorProcess()
    let example = try ShimProgram.compile("vgpu_example.c", flags: Self.pkgConfig)
    let r = try ShimProgram.run(example.path, [], environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stderr.isEmpty, "\(r.stderr)")
    for line in [
      "device: vGPU Reference H100 80GB", "uuid: GPU-56475055-2d72-6566-2d64-657669636530", "pci: 0000:00:05.0",
      "memory: 8589934592", "compute capability: 9.0", "protocol: 2.4 features 0x15ed",
      "round trip: 1048576 bytes verified", "vector_add: 100000 elements verified", "ok",
    ] {
      #expect(r.stdout.split(separator: "\n").contains { $0 == line }, "missing '\(line)' in:\n\(r.stdout)")
    }
    // Its own statistics: every allocation, copy and the launch, counted by the device.
    let process = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("process: bytes_allocated=") })
    #expect(process.contains("allocations=5 launches=1 "), "\(process)")
    #expect(process.contains("queue_pairs=2"), "\(process)")
    // It was listed among the processes using the device, with its memory and launch.
    let pid = try #require(
      r.stdout.split(separator: "\n").first { $0.hasPrefix("process: pid=") && $0.contains("launches=1") })
    #expect(pid.contains("queue_pairs=2"), "\(pid)")
  }

  @Test func failuresGiveTheirCodeAndALineThatExplains() throws {
    try ShimProgram.requireShims(["libvgpu.so", "libvgpucore.so", "pkgconfig/vgpu.pc"])
    let mediator = try MediatorProcess()
    let program = try ShimProgram.compile("vgpu_errors.c", flags: "\(Self.pkgConfig) -lpthread")
    let missing = "shm:/dev/shm/vgpu-missing-\(getpid())"
    let r = try ShimProgram.run(program.path, [missing], environment: ShimProgram.environment(device: mediator.spec))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.hasSuffix("ok\n"), "\(r.stdout)")
    #expect(r.stdout.contains("missing device: open on \(missing)"), "\(r.stdout)")
    #expect(r.stdout.contains("the kernel takes 16 bytes of parameters, 8 were given"), "\(r.stdout)")
  }

  @Test func theHeaderIsPlainCAndCPlusPlus() throws {
    let include = Paths.packageRoot.appendingPathComponent("include").path
    let environment = ShimProgram.environment(device: nil)
    let c = try ShimProgram.shell(
      "echo '#include <vgpu.h>' | cc -std=c99 -pedantic -Wall -Wextra -Werror -fsyntax-only -I'\(include)' -x c -",
      environment: environment)
    #expect(c.status == 0, "\(c.stderr)")
    let cxx = try ShimProgram.shell(
      "echo '#include <vgpu.h>' | c++ -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -I'\(include)' -x c++ -",
      environment: environment)
    #expect(cxx.status == 0, "\(cxx.stderr)")
  }

  @Test func withoutADeviceOpenFailsInOneLine() throws {
    try ShimProgram.requireShims(["libvgpu.so", "libvgpucore.so", "pkgconfig/vgpu.pc"])
    let example = try ShimProgram.compile("vgpu_example.c", flags: Self.pkgConfig)
    let r = try ShimProgram.run(example.path, [], environment: ShimProgram.environment(device: nil))
    #expect(r.status == 1)
    #expect(r.stderrLines.count == 1, "\(r.stderr)")
    #expect(r.stderr.hasPrefix("vgpu_open(") && r.stderr.contains("0000:00:05.0"), "\(r.stderr)")
  }
}
