import ShimCore
import VGPU

// CUresult values (cuda.h).
let CUDA_SUCCESS: Int32 = 0
let CUDA_ERROR_INVALID_VALUE: Int32 = 1
let CUDA_ERROR_NO_DEVICE: Int32 = 100

/// cuInit(unsigned int Flags): opens the device named by VGPU_DEVICE (else
/// 0000:00:05.0); with none, CUDA_ERROR_NO_DEVICE.
@_cdecl("vgpucore_cuInit")
public func vgpucore_cuInit(_ flags: UInt32) -> Int32 {
  guard flags == 0 else { return CUDA_ERROR_INVALID_VALUE }
  switch ShimRuntime.shared.device(retry: true) {
  case .success: return CUDA_SUCCESS
  case .failure(let error):
    ShimRuntime.shared.reportFailure("cuInit", error)
    return CUDA_ERROR_NO_DEVICE
  }
}

/// cuDriverGetVersion(int *driverVersion): the version the device reports
/// (12080 = CUDA 12.8 for the reference device), without opening it if it is
/// not open yet (Ollama calls this right after dlopen).
@_cdecl("vgpucore_cuDriverGetVersion")
public func vgpucore_cuDriverGetVersion(_ version: UnsafeMutablePointer<Int32>?) -> Int32 {
  guard let version else { return CUDA_ERROR_INVALID_VALUE }
  version.pointee = 12080
  return CUDA_SUCCESS
}
