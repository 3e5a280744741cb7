// GPU smoke test: proves the path every GPU run uses. A pinned host buffer is filled, copied to the GPU with
// cudaMemcpyAsync on a dedicated stream, wrapped as a LibTorch tensor without a copy, reduced with a LibTorch op
// on the same stream, and the result checked against the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "support/result.h"
#include "support/tool_main.h"

namespace bigplan {
namespace {

Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  return MakeError(ErrorCode::kDevice, std::string(what) + ": " + cudaGetErrorString(err));
}

Status Smoke() {
  int count = 0;
  BIGPLAN_RETURN_IF_ERROR(Check(cudaGetDeviceCount(&count), "cudaGetDeviceCount"));
  if (count == 0) return MakeError(ErrorCode::kDevice, "no CUDA device");
  cudaDeviceProp prop{};
  BIGPLAN_RETURN_IF_ERROR(Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  std::printf("device 0: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / double(1ull << 30));
  std::printf("libtorch sees %d CUDA device(s)\n", static_cast<int>(c10::cuda::device_count()));

  constexpr size_t kElems = size_t{256} << 20;  // 1 GiB of float
  const size_t bytes = kElems * sizeof(float);
  float* host = nullptr;
  BIGPLAN_RETURN_IF_ERROR(Check(cudaHostAlloc(reinterpret_cast<void**>(&host), bytes, cudaHostAllocDefault),
                                "cudaHostAlloc"));
  double expect = 0;
  for (size_t i = 0; i < kElems; ++i) {
    host[i] = static_cast<float>(i % 1000) * 0.5f;
  }
  for (size_t i = 0; i < 1000; ++i) expect += (i * 0.5) * double(kElems / 1000);
  for (size_t i = 0; i < kElems % 1000; ++i) expect += i * 0.5;
  void* dev = nullptr;
  BIGPLAN_RETURN_IF_ERROR(Check(cudaMalloc(&dev, bytes), "cudaMalloc"));
  cudaStream_t stream;
  BIGPLAN_RETURN_IF_ERROR(Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int rep = 0; rep < 3; ++rep) {
    cudaEventRecord(start, stream);
    BIGPLAN_RETURN_IF_ERROR(
        Check(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync"));
    cudaEventRecord(stop, stream);
    BIGPLAN_RETURN_IF_ERROR(Check(cudaEventSynchronize(stop), "cudaEventSynchronize"));
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    std::printf("pinned H2D copy of %.2f GiB: %.3f ms = %.1f GB/s\n", bytes / double(1ull << 30), ms,
                bytes / (ms * 1e6));
  }
  double got = 0;
  try {
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream, 0));
    at::Tensor t = at::from_blob(dev, {static_cast<int64_t>(kElems)}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, 0));
    got = t.to(at::kDouble).sum().item<double>();
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kDevice, std::string("LibTorch op failed: ") + e.what());
  }
  std::printf("sum on GPU via LibTorch = %.1f, expected %.1f\n", got, expect);
  cudaFree(dev);
  cudaFreeHost(host);
  cudaStreamDestroy(stream);
  if (got != expect) return MakeError(ErrorCode::kDevice, "GPU result differs from the host's");
  std::printf("gpu_smoke: OK\n");
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main() { return bigplan::RunTool("gpu_smoke", bigplan::Smoke); }
