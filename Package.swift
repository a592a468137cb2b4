// swift-tools-version: 6.1
// The layering follows ARCHITECTURE.md: PCI → region mapping → wire format →
// queue pairs → client API → shims. Each layer is one target.
import PackageDescription

let package = Package(
  name: "vgpu",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "PCI", targets: ["PCI"]),
    .library(name: "VGPU", targets: ["VGPU"]),
    .library(name: "PTX", targets: ["PTX"]),
    // For Fuzz/ (a package of its own that depends on this one by path): the layers it drives.
    .library(name: "VGPUProtocol", targets: ["VGPUProtocol"]),
    .library(name: "VGPUDevice", targets: ["VGPUDevice"]),
    .library(name: "FatBinary", targets: ["FatBinary"]),
    .library(name: "DeviceAccess", targets: ["DeviceAccess"]),
    .executable(name: "pcitool", targets: ["pcitool"]),
    .executable(name: "vgpu-mediator", targets: ["vgpu-mediator"]),
    .executable(name: "vgpu-bench", targets: ["vgpu-bench"]),
    // The implementation behind the shim libraries (libcuda.so.1, libnvidia-ml.so.1,
    // libvgpu.so), which are small C trampolines in shims/ that load it on first call.
    .library(name: "vgpucore", type: .dynamic, targets: ["VGPUCore"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    // The mediator's Prometheus endpoint (--metrics-listen) and nothing else: the guest side
    // (VGPU, the shims) never links these.
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
  ],
  targets: [
    // libpci, found through pkg-config; Debian's package is libpci-dev.
    .systemLibrary(
      name: "CLibPCI",
      pkgConfig: "libpci",
      providers: [.apt(["libpci-dev"])]
    ),
    .target(name: "PCI", dependencies: ["CLibPCI"]),
    // What Swift cannot say: atomics on shared memory with explicit ordering, futexes.
    .target(name: "CSupport"),
    // Mapped regions: in-memory now; shared-memory files, VFIO and UIO later.
    .target(name: "DeviceAccess", dependencies: ["CSupport"]),
    // The wire format, shared by the guest client and the reference device.
    .target(name: "VGPUProtocol", dependencies: ["CSupport"]),
    // liblz4 and libzstd (Debian liblz4-dev, libzstd-dev; pkg-config liblz4, libzstd), linked by the modulemap.
    .systemLibrary(name: "CCompression", providers: [.apt(["liblz4-dev", "libzstd-dev"])]),
    // The device side of module images: fat binary entries, decompression, PTX selection. Trusts no field.
    .target(name: "FatBinary", dependencies: ["VGPUProtocol", "CCompression"]),
    // The reference device: serves the protocol on the CPU.
    .target(name: "VGPUDevice", dependencies: ["VGPUProtocol", "DeviceAccess", "CSupport", "PTX", "FatBinary"]),
    // The guest client API. It never links the device model.
    .target(name: "VGPU", dependencies: ["VGPUProtocol", "DeviceAccess", "CSupport"]),
    // `sim`: the reference device run inside a client's process. Programs
    // that offer it (pcitool, the benchmark, tests) depend on it explicitly.
    .target(name: "VGPUSimulator", dependencies: ["VGPU", "VGPUDevice", "DeviceAccess"]),
    // What every shim library shares: the lazily opened device, fork safety, diagnostics.
    .target(name: "ShimCore", dependencies: ["VGPU"]),
    // The CUDA driver API, NVML and the vgpu C ABI, as vgpucore_* C functions.
    // Linked with the Swift runtime inside (runs without a toolchain) and
    // exporting only vgpucore_* (exports.map). No test target may depend on it:
    // these flags would apply to the test executable too; tests load the built library.
    .target(
      name: "VGPUCore", dependencies: ["ShimCore", "VGPU", "VGPUProtocol"],
      exclude: ["exports.map", "static-libstdc++"],
      linkerSettings: [
        .unsafeFlags([
          // libstdc++ linked in too (static-libstdc++/libstdc++.so says why);
          // its symbols stay local like the Swift runtime's (--exclude-libs ALL).
          "-L\(Context.packageDirectory)/Sources/VGPUCore/static-libstdc++",
          "-static-stdlib", "-Xlinker", "-soname=libvgpucore.so", "-Xlinker",
          // Absolute: the linker runs in the root package's directory, which is
          // Fuzz/ when this package is Fuzz's dependency.
          "--version-script=\(Context.packageDirectory)/Sources/VGPUCore/exports.map",
          // Bind every symbol at load (full RELRO): no lazy PLT resolution later,
          // e.g. in a thread-exit destructor inside a host process that loaded
          // this library as its CUDA driver (a lazily bound call there jumped
          // to an unrelocated PLT address at a mediator's SIGTERM).
          "-Xlinker", "-z", "-Xlinker", "now",
        ])
      ]),
    // The project's own kernels as PTX (tools/selftest-kernels.cu, generated by tools/gen-selftest-ptx):
    // what pcitool selftest checks and vgpu-bench launches. Depends on nothing: no client links the device for it.
    .target(name: "SelftestKernels"),
    // Measuring code shared by vgpu-bench and pcitool bench: baselines, the socket RPC, the cases.
    .target(
      name: "BenchKit",
      dependencies: [
        "VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "CSupport", "SelftestKernels",
      ]),
    // Issue 7's benchmark suite (tools/bench): the vGPU against its ceilings and against socket RPC.
    .executableTarget(
      name: "vgpu-bench",
      dependencies: [
        "BenchKit", "VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "CSupport", "MallocCounter", "PTX", "NVRTC",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .executableTarget(
      name: "pcitool",
      dependencies: [
        "PCI", "VGPU", "VGPUSimulator", "VGPUProtocol", "CSupport", "DeviceAccess", "BenchKit", "SelftestKernels",
        "PTX",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // The host side: serves a shared-memory BAR with the reference device.
    .executableTarget(
      name: "vgpu-mediator",
      dependencies: [
        "VGPUDevice", "VGPUProtocol", "DeviceAccess", "CSupport", "PTX",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
        .product(name: "FlyingFox", package: "FlyingFox"),
      ]
    ),
    // The PTX engine: parser, lowering and interpreter for the reference device. Depends on nothing here.
    .target(name: "PTX"),
    .testTarget(name: "PTXTests", dependencies: ["PTX", "NVRTC"]),
    // Helpers shared by the test targets.
    .target(name: "TestSupport", dependencies: ["VGPUProtocol", "NVRTC"], path: "Tests/TestSupport"),
    // NVRTC 12.9 from .venv through dlopen: the tests and the benchmark compile the project's CUDA with it.
    .target(name: "NVRTC"),
    // The project's CUDA corpus (Tests/Kernels/*.cu) built by nvcc 13.5 and NVRTC 12.9 from .venv.
    .testTarget(name: "KernelCorpusTests", dependencies: ["TestSupport", "FatBinary"]),
    // Fat binaries and the module image sizer, on images nvcc builds at test time and on garbage.
    .testTarget(name: "FatBinaryTests", dependencies: ["FatBinary", "VGPUProtocol", "TestSupport"]),
    // Reads the facts lspci states, for comparing our decoder with it.
    .target(name: "LspciFacts", dependencies: ["PCI"], path: "Tests/LspciFacts"),
    .testTarget(
      name: "PCITests",
      dependencies: ["PCI", "LspciFacts"],
      exclude: ["Fixtures"]
    ),
    // The wire format alone: rings, phases, batching, every command's codec, PROTOCOL.md's tables.
    .testTarget(name: "VGPUProtocolTests", dependencies: ["VGPUProtocol", "CSupport"]),
    .testTarget(name: "VGPUDeviceTests", dependencies: ["VGPUDevice", "VGPUProtocol", "TestSupport"]),
    .testTarget(
      name: "VGPUTests",
      dependencies: [
        "VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "TestSupport", "SelftestKernels",
      ]),
    // Counts heap allocations per thread, to prove the hot path makes none.
    .target(name: "MallocCounter", path: "Tests/MallocCounter"),
    .testTarget(
      name: "HotPathTests",
      dependencies: [
        "VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "MallocCounter", "TestSupport",
      ]),
    // A client process for cross-process tests: holds memory, copies, exits on cue; scans or scribbles on its raw BAR.
    .executableTarget(
      name: "vgpu-test-client",
      dependencies: ["VGPU", "VGPUSimulator", "VGPUProtocol", "DeviceAccess", "CSupport", "TestSupport"],
      path: "Tests/TestClient"),
    // The fault-injection and stress tests' clients: a long launch, mixed work, a marker copier,
    // a process that plays a device answering wrongly, a reclaim timer.
    .executableTarget(
      name: "vgpu-fault-client", dependencies: ["VGPU", "VGPUProtocol", "DeviceAccess", "CSupport", "TestSupport"],
      path: "Tests/FaultClient"),
    // A hostile client (random and forged commands, lifecycle and register writes, doorbell
    // storms, a scan for another client's bytes): the hostile-client test and tools/hostile-run.
    .executableTarget(
      name: "vgpu-hostile", dependencies: ["VGPUProtocol", "DeviceAccess", "CSupport", "TestSupport", "VGPU"],
      path: "Tests/HostileClient"),
    // clients/: the Python client the observability tests run (not part of the test target).
    .testTarget(
      name: "MediatorTests",
      dependencies: [
        "vgpu-mediator", "vgpu-test-client", "vgpu-fault-client", "vgpu-hostile", "pcitool", "VGPU", "VGPUSimulator",
        "VGPUProtocol", "VGPUDevice",
        "DeviceAccess", "CSupport", "TestSupport",
      ],
      exclude: ["clients"]),
    // The shim libraries, loaded by real clients: C programs built here, Python packages in .venv.
    // clients/: C and Python programs the tests build and run (not part of the test target).
    .testTarget(
      name: "ShimTests", dependencies: ["TestSupport", "vgpu-mediator", "vgpu-test-client", "VGPU"],
      exclude: ["clients"]),
    // Runs vgpu-bench --quick and checks its report (shape, not timings).
    .testTarget(name: "BenchTests", dependencies: ["vgpu-bench", "vgpu-mediator", "TestSupport"]),
    // Runs the built pcitool and compares it with lspci on this machine; BadInputTests runs
    // every executable (and the tools/ scripts) with bad command lines and environments.
    .testTarget(
      name: "PCIToolTests",
      dependencies: ["pcitool", "vgpu-mediator", "vgpu-bench", "PCI", "LspciFacts", "TestSupport"]),
  ],
  swiftLanguageModes: [.v6]
)
