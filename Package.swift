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
      name: "VGPUCore", dependencies: ["ShimCore", "VGPU", "VGPUProtocol"], exclude: ["exports.map"],
      linkerSettings: [
        .unsafeFlags([
          "-static-stdlib", "-Xlinker", "-soname=libvgpucore.so", "-Xlinker",
          "--version-script=Sources/VGPUCore/exports.map",
        ])
      ]),
    // Measuring code shared by vgpu-bench and pcitool bench: baselines, the socket RPC, the cases.
    .target(
      name: "BenchKit",
      dependencies: ["VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "CSupport"]),
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
        "PCI", "VGPU", "VGPUSimulator", "VGPUProtocol", "CSupport", "DeviceAccess", "BenchKit",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // The host side: serves a shared-memory BAR with the reference device.
    .executableTarget(
      name: "vgpu-mediator",
      dependencies: [
        "VGPUDevice", "VGPUProtocol", "DeviceAccess", "CSupport",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    // The PTX engine: parser, lowering and interpreter for the reference device. Depends on nothing here.
    .target(name: "PTX"),
    .testTarget(name: "PTXTests", dependencies: ["PTX", "NVRTC"]),
    // Thread-instructions per second on vector add: `swift run -c release ptx-bench`.
    .executableTarget(name: "ptx-bench", dependencies: ["PTX"], path: "Tests/PTXBench"),
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
      dependencies: ["VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "TestSupport"]),
    // Counts heap allocations per thread, to prove the hot path makes none.
    .target(name: "MallocCounter", path: "Tests/MallocCounter"),
    .testTarget(
      name: "HotPathTests",
      dependencies: [
        "VGPU", "VGPUSimulator", "VGPUDevice", "VGPUProtocol", "DeviceAccess", "MallocCounter", "TestSupport",
      ]),
    // A client process for cross-process tests: holds memory, copies, exits on cue.
    .executableTarget(name: "vgpu-test-client", dependencies: ["VGPU", "VGPUSimulator"], path: "Tests/TestClient"),
    .testTarget(
      name: "MediatorTests",
      dependencies: [
        "vgpu-mediator", "vgpu-test-client", "pcitool", "VGPU", "VGPUSimulator", "VGPUProtocol", "VGPUDevice",
        "DeviceAccess", "CSupport", "TestSupport",
      ]),
    // The shim libraries, loaded by real clients: C programs built here, Python packages in .venv.
    // clients/: C and Python programs the tests build and run (not part of the test target).
    .testTarget(
      name: "ShimTests", dependencies: ["TestSupport", "vgpu-mediator", "vgpu-test-client", "VGPU"],
      exclude: ["clients"]),
    // Runs vgpu-bench --quick and checks its report (shape, not timings).
    .testTarget(name: "BenchTests", dependencies: ["vgpu-bench", "vgpu-mediator", "TestSupport"]),
    // Runs the built pcitool and compares it with lspci on this machine.
    .testTarget(name: "PCIToolTests", dependencies: ["pcitool", "PCI", "LspciFacts"]),
  ],
  swiftLanguageModes: [.v6]
)
