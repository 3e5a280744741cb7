// Programmatic dependent launch (Hopper and later) for the executor's CUDA kernels (included by fused_cuda.cu and
// tp_comm.cu only). A kernel launched by LaunchDependent may be scheduled while the kernel before it in its stream
// still runs, so a decode step's chain of small kernels does not pay a launch gap between each two. The contract,
// which every kernel launched this way keeps:
//   - it calls PdlWait() before it reads or writes any memory that earlier work in the stream writes or reads
//     (before it, it may read only what no kernel writes, e.g. weights), and
//   - it calls PdlLaunchDependents() once it has waited, letting the kernel after it be scheduled.
// PdlWait returns once the kernels before it have finished and their writes are visible. On GPUs before Hopper
// (and in code compiled for them) both are no-ops and the launch is an ordinary one.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace bigplan::pdl {

__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// PdlWait, then PdlLaunchDependents: how a kernel that reads nothing before its wait begins.
__device__ __forceinline__ void PdlBegin() {
  PdlWait();
  PdlLaunchDependents();
}

// Whether the current device runs programmatic dependent launches (compute capability 9.0 or later); cached per
// device.
inline bool PdlSupported() {
  static std::array<std::atomic<int>, 64> known{};  // 0 not asked yet, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= static_cast<int>(known.size())) return false;
  int k = known[device].load(std::memory_order_relaxed);
  if (k == 0) {
    int major = 0;
    k = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9 ? 2 : 1;
    known[device].store(k, std::memory_order_relaxed);
  }
  return k == 2;
}

// kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the work before it in `stream` where
// the device supports it. Returns the launch's error.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchDependentSmem(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = PdlSupported() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<KernelArgs>(args)...);
}

// The same without dynamic shared memory.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchDependent(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream,
                            Args&&... args) {
  return LaunchDependentSmem(kernel, grid, block, 0, stream, static_cast<Args&&>(args)...);
}

}  // namespace bigplan::pdl
