/* libcuda.so.1: the CUDA driver API, as trampolines into libvgpucore.so.
 * Types are cuda.h's (CUDA 12.x ABI): handles are pointers, CUdevice an int,
 * CUdeviceptr an unsigned long long. */
#include <stddef.h>

#include "trampoline.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;

/* CUDA_ERROR_NOT_INITIALIZED: what a call returns when the core cannot be loaded. */
#define CORE_MISSING 3

#define X(name, params, args) VGPU_TRAMPOLINE(CUresult, name, params, args, CORE_MISSING)
#include "cuda.def"
#undef X
