#include "benchmarks/gpu/floors.h"

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "executor/cpu_matvec.h"

namespace bigplan {
namespace {

Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return MakeError(ErrorCode::kDevice, std::string(what) + ": " + cudaGetErrorString(e));
}

// Best of `reps` timings (ms) of `fn` enqueued on `s`.
template <typename Fn>
Result<float> BestMs(cudaStream_t s, int reps, Fn fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  float best = 1e30f;
  for (int i = 0; i < reps + 1; ++i) {
    cudaEventRecord(a, s);
    fn();
    cudaEventRecord(b, s);
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(b), "cudaEventSynchronize"));
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    if (i > 0 && ms < best) best = ms;  // first run is a warm-up
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

Result<double> DiskGbps(const std::vector<std::string>& files, uint64_t cap) {
  constexpr size_t kChunk = 64 << 20;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kChunk) != 0) return MakeError(ErrorCode::kIo, "posix_memalign failed");
  uint64_t total = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (const auto& path : files) {
    if (total >= cap) break;
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
    if (fd < 0) {
      std::free(buf);
      return MakeError(ErrorCode::kIo, path + ": cannot open with O_DIRECT: " + std::strerror(errno));
    }
    while (total < cap) {
      ssize_t n = ::read(fd, buf, kChunk);
      if (n <= 0) break;
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::free(buf);
  return total ? total / s / 1e9 : 0.0;
}

// The host's bf16 matrix-vector rate (GB/s of weights), best of 5, alone and with H2D copies running.
Status MeasureCpuGemv(Floors* f) {
  constexpr int64_t kCols = 4096, kRows = 192 * 1024;  // 1.5 GiB of bf16
  const uint64_t bytes = static_cast<uint64_t>(kRows * kCols) * 2;
  constexpr uint64_t kCopyBytes = 512ull << 20;
  void *w = nullptr, *src = nullptr, *dst = nullptr;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostAlloc(&w, bytes, cudaHostAllocPortable), "cudaHostAlloc"));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostAlloc(&src, kCopyBytes, cudaHostAllocPortable), "cudaHostAlloc"));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMalloc(&dst, kCopyBytes), "cudaMalloc"));
  // Small finite bf16 values (0x3c00..0x3cff: about 0.0078..0.0156).
  uint16_t* wv = static_cast<uint16_t*>(w);
  for (uint64_t i = 0; i < bytes / 2; ++i) wv[i] = static_cast<uint16_t>(0x3c00 | (i * 2654435761u >> 24));
  std::memset(src, 1, kCopyBytes);
  std::vector<float> x(kCols, 0.5f), y(kRows);
  cpu_matvec::MatVecPool pool(0);
  f->cpu_threads = pool.threads();
  cpu_matvec::Job job;
  job.w = cpu_matvec::Matrix{cpu_matvec::Format::kNone, static_cast<const uint8_t*>(w), kRows, kCols, 0, kCols * 2};
  job.row_begin = 0;
  job.row_end = kRows;
  job.x = x.data();
  job.y = y.data();
  job.y_stride = kRows;
  auto best_gbps = [&](int reps) -> Result<double> {
    double best = 1e30;
    for (int i = 0; i < reps + 1; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      BIGPLAN_RETURN_IF_ERROR(pool.Run(std::span<const cpu_matvec::Job>(&job, 1), 1));
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (i > 0) best = std::min(best, s);
    }
    return bytes / best / 1e9;
  };
  BIGPLAN_ASSIGN_OR_RETURN(f->cpu_gemv_alone_gbps, best_gbps(5));
  cudaStream_t s;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  // Enough copies to outlast the products (~10 ms each at 55 GB/s).
  for (int i = 0; i < 40; ++i) cudaMemcpyAsync(dst, src, kCopyBytes, cudaMemcpyHostToDevice, s);
  Result<double> busy = best_gbps(5);
  const bool copies_outlasted = cudaStreamQuery(s) == cudaErrorNotReady;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize"));
  cudaStreamDestroy(s);
  cudaFree(dst);
  cudaFreeHost(src);
  cudaFreeHost(w);
  if (!busy.ok()) return busy.take_error();
  if (!copies_outlasted) return MakeError(ErrorCode::kInternal, "the H2D copies ended before the host products");
  f->cpu_gemv_gbps = *busy;
  return Status::Ok();
}

}  // namespace

Result<Floors> MeasureFloors(const std::vector<std::string>& disk_files, uint64_t disk_bytes_cap) {
  Floors f;
  cudaDeviceProp prop{};
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  f.device_name = prop.name;
  const size_t bytes = size_t{1} << 30;
  void *host = nullptr, *d0 = nullptr, *d1 = nullptr;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostAlloc(&host, bytes, cudaHostAllocDefault), "cudaHostAlloc"));
  std::memset(host, 1, bytes);
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMalloc(&d0, bytes), "cudaMalloc"));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMalloc(&d1, bytes), "cudaMalloc"));
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  BIGPLAN_ASSIGN_OR_RETURN(float h2d, BestMs(s, 5, [&] { cudaMemcpyAsync(d0, host, bytes, cudaMemcpyHostToDevice, s); }));
  BIGPLAN_ASSIGN_OR_RETURN(float d2h, BestMs(s, 5, [&] { cudaMemcpyAsync(host, d0, bytes, cudaMemcpyDeviceToHost, s); }));
  BIGPLAN_ASSIGN_OR_RETURN(float d2d, BestMs(s, 10, [&] { cudaMemcpyAsync(d1, d0, bytes, cudaMemcpyDeviceToDevice, s); }));
  f.h2d_gbps = bytes / (h2d * 1e6);
  f.d2h_gbps = bytes / (d2h * 1e6);
  f.device_mem_gbps = 2.0 * bytes / (d2d * 1e6);
  cudaFree(d0);
  cudaFree(d1);
  cudaFreeHost(host);
  try {
    const int64_t n = 8192;
    auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, 0);
    at::Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
    at::Tensor c = at::matmul(a, b);
    cudaDeviceSynchronize();
    float best = 1e30f;
    for (int i = 0; i < 10; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      at::matmul_out(c, a, b);
      cudaDeviceSynchronize();
      float ms = std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, ms);
    }
    f.matmul_tflops = 2.0 * n * n * n / (best * 1e9);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kDevice, std::string("matmul rate: ") + e.what());
  }
  cudaStreamDestroy(s);
  BIGPLAN_RETURN_IF_ERROR(MeasureCpuGemv(&f));
  if (!disk_files.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(f.disk_gbps, DiskGbps(disk_files, disk_bytes_cap));
  }
  return f;
}

std::string FloorsToProfileJson(const Floors& f) {
  nlohmann::json j = {{"name", f.device_name + " (measured)"},
                      {"h2d_gbps", f.h2d_gbps},
                      {"d2h_gbps", f.d2h_gbps},
                      {"disk_gbps", f.disk_gbps},
                      {"device_mem_gbps", f.device_mem_gbps},
                      {"matmul_tflops", f.matmul_tflops},
                      {"cpu_mem_gbps", 20.0},
                      {"cpu_gflops", 200.0},
                      {"cpu_gemv_gbps", f.cpu_gemv_gbps}};
  return j.dump(1);
}

}  // namespace bigplan
