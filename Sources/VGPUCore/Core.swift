import ShimCore

/// The core's version, for the trampolines to check they loaded a matching core.
@_cdecl("vgpucore_abi_version")
public func vgpucore_abi_version() -> Int32 { 1 }
