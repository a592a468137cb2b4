// swift-tools-version: 6.1
// libFuzzer targets (issue 15), in a package of their own so that the main
// build and `swift test` never see the fuzzer flags. Build and run them with
// tools/fuzz, which passes `-sanitize=fuzzer,address -enable-testing` (the
// targets reach a few internal types with @testable import) and links with
// lld (ld.gold fails on the sanitizer runtime here).
import PackageDescription

func fuzzTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
  .executableTarget(name: name, dependencies: ["FuzzSupport"] + dependencies, path: "Sources/\(name)")
}

let package = Package(
  name: "vgpu-fuzz",
  platforms: [.macOS(.v15)],
  dependencies: [.package(name: "vgpu", path: "..")],
  targets: [
    // LLVMFuzzerRunDriver's declaration: SwiftPM names an executable's entry
    // point `<target>_main`, so libFuzzer's own main is not used; main.swift calls the driver.
    .target(name: "FuzzDriver"),
    .target(name: "FuzzSupport", dependencies: ["FuzzDriver"]),
    fuzzTarget(
      "device-commands",
      [.product(name: "VGPUDevice", package: "vgpu"), .product(name: "VGPUProtocol", package: "vgpu")]),
    fuzzTarget(
      "guest-completions",
      [
        .product(name: "VGPU", package: "vgpu"), .product(name: "VGPUProtocol", package: "vgpu"),
        .product(name: "DeviceAccess", package: "vgpu"),
      ]),
    fuzzTarget(
      "module-image",
      [.product(name: "FatBinary", package: "vgpu"), .product(name: "PTX", package: "vgpu")]),
    fuzzTarget("ptx-text", [.product(name: "PTX", package: "vgpu")]),
    fuzzTarget("pci-config", [.product(name: "PCI", package: "vgpu")]),
    fuzzTarget("ivshmem-messages", [.product(name: "DeviceAccess", package: "vgpu")]),
    fuzzTarget("vfio-broker-messages", [.product(name: "DeviceAccess", package: "vgpu")]),
  ],
  swiftLanguageModes: [.v6]
)
