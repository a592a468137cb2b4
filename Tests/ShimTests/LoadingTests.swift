import Foundation
import TestSupport
import Testing

/// What loading a shim does (nothing), what the libraries need (no Swift
/// toolchain) and export (the API only), and how they are installed (for one
/// service, reversibly).
@Suite struct LoadingTests {
  static let shims = ["libcuda.so.1", "libnvidia-ml.so.1", "libvgpu.so"]
  static let exportPrefixes = ["libcuda.so.1": "cu", "libnvidia-ml.so.1": "nvml", "libvgpu.so": "vgpu_"]
  /// Exported beside the API: the marker by which a program that loaded
  /// "libcuda.so.1" (the mediator's CUDA backend) tells this shim from NVIDIA's driver.
  static let markers = ["libcuda.so.1": ["vgpu_shim_identity"]]

  static func run(_ tool: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (
    status: Int32, output: String
  ) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: tool)
    p.arguments = arguments
    if let environment { p.environment = environment }
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
  }

  /// A C program that loads a library and exits, marking the load with writes.
  static func loader() throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-load-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let source = dir.appendingPathComponent("load-\(UUID().uuidString).c")
    try """
    #include <dlfcn.h>
    #include <stdio.h>
    #include <unistd.h>
    int main(int argc, char **argv) {
      (void)argc;
      write(1, "BEFORE\\n", 7);
      void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
      write(1, "AFTER\\n", 6);
      if (!h) { fprintf(stderr, "%s\\n", dlerror()); return 1; }
      return 0;
    }
    """.write(to: source, atomically: true, encoding: .utf8)
    // Built under a private name, then renamed into place: tests run in parallel,
    // and exec of a file another test is still writing fails with ETXTBSY.
    let binary = dir.appendingPathComponent("load")
    let scratch = dir.appendingPathComponent("load.\(UUID().uuidString)")
    let cc = try run("/usr/bin/cc", ["-o", scratch.path, source.path, "-ldl"])
    #expect(cc.status == 0, "\(cc.output)")
    _ = rename(scratch.path, binary.path)
    return binary
  }

  @Test(arguments: shims)
  func loadingDoesNothing(library: String) throws {
    let path = Paths.shims.appendingPathComponent(library).path
    try #require(FileManager.default.fileExists(atPath: path), "run tools/test: it builds the shims before swift test")
    let trace = FileManager.default.temporaryDirectory.appendingPathComponent("strace-\(getpid())-\(library).log")
    let r = try Self.run("/usr/bin/strace", ["-f", "-o", trace.path, try Self.loader().path, path])
    #expect(r.status == 0, "\(r.output)")
    let lines = try String(contentsOf: trace, encoding: .utf8).split(separator: "\n")
    guard let start = lines.firstIndex(where: { $0.contains("write(1, \"BEFORE") }),
      let end = lines.firstIndex(where: { $0.contains("write(1, \"AFTER") })
    else {
      Issue.record("no markers in the trace")
      return
    }
    // Between the markers: the loader mapping the file, and nothing of ours.
    let allowed = [
      "mmap", "mprotect", "munmap", "close", "fstat", "newfstatat", "read", "pread64", "brk", "getcwd", "getrandom",
    ]
    for line in lines[(start + 1)..<end] {
      // "PID  call(args) = result": strace pads the pid with a variable number of spaces.
      let call = String(line.drop { $0.isNumber }.drop { $0 == " " }.prefix { $0 != "(" })
      if call == "openat" {
        #expect(line.contains(library), "opened something else while loading: \(line)")
      } else {
        #expect(allowed.contains(call), "\(call) while loading \(library): \(line)")
      }
    }
    for forbidden in ["clone", "rt_sigaction", "sigaltstack", "socket", "ioctl"] {
      #expect(!lines[(start + 1)..<end].contains { $0.contains(forbidden + "(") }, "\(forbidden) at load")
    }
  }

  @Test(arguments: shims + ["libvgpucore.so"])
  func selfContainedAndExportingOnlyTheAPI(library: String) throws {
    let path = Paths.shims.appendingPathComponent(library).path
    try #require(FileManager.default.fileExists(atPath: path), "run tools/test: it builds the shims before swift test")
    let needed = try Self.run("/usr/bin/readelf", ["-d", path]).output.split(separator: "\n").filter {
      $0.contains("(NEEDED)")
    }
    // Only the C runtime: no libswiftCore, Foundation or dispatch from a toolchain.
    for line in needed {
      #expect(
        ["libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "ld-linux"].contains { line.contains($0) }, "\(line)")
    }
    let symbols = try Self.run("/usr/bin/nm", ["-D", "--defined-only", path]).output.split(separator: "\n")
    let exported = symbols.compactMap { line -> String? in
      let f = line.split(separator: " ")
      guard f.count == 3, "TtWwDdBbRr".contains(f[1]) else { return nil }
      return String(f[2])
    }
    let versioned = try Self.run("/usr/bin/readelf", ["--dyn-syms", "-W", path]).output
    let prefix = Self.exportPrefixes[library] ?? "vgpucore_"
    for name in exported where !name.hasPrefix(prefix) && !(Self.markers[library] ?? []).contains(name) {
      // Swift metadata the linker keeps in .dynsym is bound locally: not exported.
      let entry = versioned.split(separator: "\n").first { $0.hasSuffix(" " + name) } ?? ""
      #expect(entry.contains(" LOCAL ") || !entry.contains(" GLOBAL "), "\(library) exports \(name)")
    }
    #expect(exported.contains { $0.hasPrefix(prefix) })
  }
}

/// tools/vgpu-shims: one service, one drop-in, checked by systemd-analyze, removed whole.
@Suite struct InstallTests {
  @Test func installsForOneServiceAndRemovesAgain() throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("vgpu-install-\(getpid())")
    let prefix = root.appendingPathComponent("opt/vgpu").path
    let units = root.appendingPathComponent("units").path
    try FileManager.default.createDirectory(atPath: units, withIntermediateDirectories: true)
    try "[Unit]\nDescription=a service\n[Service]\nExecStart=/bin/true\n".write(
      toFile: units + "/ollama.service", atomically: true, encoding: .utf8)
    let tool = Paths.packageRoot.appendingPathComponent("tools/vgpu-shims").path
    let preload = try? String(contentsOfFile: "/etc/ld.so.preload", encoding: .utf8)

    let install = try LoadingTests.run(
      tool,
      [
        "install", "--service", "ollama", "--prefix", prefix, "--unit-dir", units, "--device", "shm:/dev/shm/vgpu0",
        "--from", Paths.shims.path,
      ])
    #expect(install.status == 0, "\(install.output)")
    #expect(install.output.contains("systemd-analyze verify"), "\(install.output)")
    let dropin = try String(contentsOfFile: units + "/ollama.service.d/50-vgpu.conf", encoding: .utf8)
    #expect(dropin.contains("Environment=LD_LIBRARY_PATH=\(prefix)/lib"))
    #expect(dropin.contains("Environment=VGPU_DEVICE=shm:/dev/shm/vgpu0"))
    for lib in LoadingTests.shims { #expect(FileManager.default.fileExists(atPath: prefix + "/lib/" + lib)) }
    let verify = try LoadingTests.run(
      "/usr/bin/systemd-analyze", ["verify", units + "/ollama.service"],
      environment: ["SYSTEMD_UNIT_PATH": units + ":", "PATH": "/usr/bin:/bin"])
    #expect(verify.status == 0 && verify.output.isEmpty, "\(verify.output)")
    // Installing twice is harmless; nothing system-wide was touched.
    #expect(
      try LoadingTests.run(
        tool, ["install", "--service", "ollama", "--prefix", prefix, "--unit-dir", units, "--from", Paths.shims.path]
      ).status == 0)
    #expect((try? String(contentsOfFile: "/etc/ld.so.preload", encoding: .utf8)) == preload)

    let remove = try LoadingTests.run(tool, ["remove", "--service", "ollama", "--prefix", prefix, "--unit-dir", units])
    #expect(remove.status == 0, "\(remove.output)")
    #expect(!FileManager.default.fileExists(atPath: units + "/ollama.service.d"))
    #expect(!FileManager.default.fileExists(atPath: prefix))
    #expect(FileManager.default.fileExists(atPath: units + "/ollama.service"))
    try? FileManager.default.removeItem(at: root)
  }

  @Test func refusesToGuess() throws {
    let tool = Paths.packageRoot.appendingPathComponent("tools/vgpu-shims").path
    let noService = try LoadingTests.run(tool, ["install"])
    #expect(noService.status == 2 && noService.output.contains("--service"))
    #expect(try LoadingTests.run(tool, ["install", "--service", "a b"]).status == 2)
    #expect(try LoadingTests.run(tool, ["install", "--service", "x", "--prefix", "relative"]).status == 2)
    #expect(try LoadingTests.run(tool, ["--help"]).output.contains("LD_LIBRARY_PATH"))
  }
}
