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
#include <atomic>
#include <thread>
#include <vector>

#include "executor/cpu_matvec.h"
#include "formats/quant.h"

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
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        std::free(buf);
        return MakeError(ErrorCode::kIo, path + ": O_DIRECT read failed: " + std::strerror(err));
      }
      if (n == 0) break;
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::free(buf);
  if (total == 0) return MakeError(ErrorCode::kIo, "the files to read held no bytes");
  return total / s / 1e9;
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
  // Small finite bf16 values (0x3c00..0x3cff: about 0.0078..0.0156); refilled for the quantized formats below.
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
  // The other way round: H2D copies timed while the host computes bf16 products of 64 MiB one after another (the
  // size of a layer's matrices, with the pause between products that each call has).
  // The host's own rate over the same window (products finished while the copies ran) is the other half of the
  // pair: both paths at once. How the two share host memory moves from one window to the next, so three windows are
  // measured and the pair that moved the most bytes per second in all is kept (the fastest sharing seen).
  using Clock = std::chrono::steady_clock;
  auto window = [&](double* h2d, double* host_gbps) -> Status {
    std::atomic<bool> stop{false};
    Status host_status;
    std::vector<std::pair<Clock::time_point, uint64_t>> done;  // (end of a product, bytes done by then)
    done.reserve(1 << 16);
    std::thread host([&] {
      constexpr int64_t kPiece = (64 << 20) / (kCols * 2);
      cpu_matvec::Job piece = job;
      uint64_t total = 0;
      for (int64_t r = 0; !stop.load() && host_status.ok(); r = (r + kPiece) % (kRows - kPiece)) {
        piece.w.base = static_cast<const uint8_t*>(w) + r * kCols * 2;
        piece.w.rows = kPiece;
        piece.row_end = kPiece;
        host_status = pool.Run(std::span<const cpu_matvec::Job>(&piece, 1), 1);
        total += static_cast<uint64_t>(kPiece * kCols * 2);
        if (done.size() < done.capacity()) done.emplace_back(Clock::now(), total);
      }
    });
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const Clock::time_point copies_start = Clock::now();
    cudaEventRecord(a, s);
    for (int i = 0; i < 8; ++i) cudaMemcpyAsync(dst, src, kCopyBytes, cudaMemcpyHostToDevice, s);
    cudaEventRecord(b, s);
    const Status copies = Cuda(cudaEventSynchronize(b), "cudaEventSynchronize");
    const Clock::time_point copies_end = Clock::now();
    stop = true;
    host.join();
    *host_gbps = 0;
    {
      // Products that ended inside the window: bytes between the first and the last of them over their time.
      const std::pair<Clock::time_point, uint64_t>* first = nullptr;
      const std::pair<Clock::time_point, uint64_t>* last = nullptr;
      for (const auto& d : done) {
        if (d.first < copies_start || d.first > copies_end) continue;
        if (first == nullptr) first = &d;
        last = &d;
      }
      if (first != nullptr && last != first) {
        *host_gbps = static_cast<double>(last->second - first->second) /
                     std::chrono::duration<double>(last->first - first->first).count() / 1e9;
      }
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    BIGPLAN_RETURN_IF_ERROR(copies);
    BIGPLAN_RETURN_IF_ERROR(host_status);
    *h2d = 8.0 * kCopyBytes / (ms * 1e6);
    return Status::Ok();
  };
  for (int i = 0; i < 3; ++i) {
    double h2d = 0, host_gbps = 0;
    BIGPLAN_RETURN_IF_ERROR(window(&h2d, &host_gbps));
    f->concurrent_windows.push_back({h2d, host_gbps});
    if (host_gbps > 0 && h2d + host_gbps > f->h2d_busy_gbps + f->cpu_gemv_concurrent_gbps) {
      f->h2d_busy_gbps = h2d;
      f->cpu_gemv_concurrent_gbps = host_gbps;
    }
  }
  if (f->cpu_gemv_concurrent_gbps == 0) f->h2d_busy_gbps = f->concurrent_windows.back().first;
  // The quantized formats, over the same bytes reinterpreted: random codes (fp8 without NaN codes), scales 0.01.
  for (auto [format, out] : {std::pair<cpu_matvec::Format, double*>{cpu_matvec::Format::kFp8E4M3, &f->cpu_gemv_fp8_gbps},
                             {cpu_matvec::Format::kInt8, &f->cpu_gemv_int8_gbps},
                             {cpu_matvec::Format::kInt4, &f->cpu_gemv_int4_gbps}}) {
    const int64_t group = 128;
    const int64_t row_bytes = static_cast<int64_t>(quant::RowBytes(format, kCols, group).value());
    const int64_t rows = std::min<int64_t>(kRows, static_cast<int64_t>(bytes) / row_bytes);  // y holds kRows
    uint8_t* base = static_cast<uint8_t*>(w);
    const int64_t data = format == cpu_matvec::Format::kInt4 ? kCols / 2 : kCols;
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* row = base + r * row_bytes;
      for (int64_t i = 0; i < data; ++i) row[i] = static_cast<uint8_t>((r * 131 + i * 7) & 0xF7);
      for (int64_t g = 0; g < kCols / group; ++g) {
        uint8_t* rec = row + data + 4 * g;
        if (format == cpu_matvec::Format::kInt4) {
          const uint16_t scale = 0x3C24, zero = 0;  // bf16 0.01, 0
          std::memcpy(rec, &scale, 2);
          std::memcpy(rec + 2, &zero, 2);
        } else {
          const float scale = 0.01f;
          std::memcpy(rec, &scale, 4);
        }
      }
    }
    cpu_matvec::Job q = job;
    q.w = cpu_matvec::Matrix{format, base, rows, kCols, group, row_bytes};
    q.row_end = rows;
    double best = 1e30;
    for (int i = 0; i < 40; ++i) cudaMemcpyAsync(dst, src, kCopyBytes, cudaMemcpyHostToDevice, s);
    for (int i = 0; i < 4; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      BIGPLAN_RETURN_IF_ERROR(pool.Run(std::span<const cpu_matvec::Job>(&q, 1), 1));
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (i > 0) best = std::min(best, sec);
    }
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize"));
    *out = static_cast<double>(rows * row_bytes) / best / 1e9;
  }
  cudaStreamDestroy(s);
  cudaFree(dst);
  cudaFreeHost(src);
  cudaFreeHost(w);
  if (!busy.ok()) return busy.take_error();
  if (!copies_outlasted) return MakeError(ErrorCode::kInternal, "the H2D copies ended before the host products");
  // The rate the host keeps while copies run at the same time (measured over the copies' window); the best of five
  // with copies queued stays beside it.
  f->cpu_gemv_queued_gbps = *busy;
  f->cpu_gemv_gbps = f->cpu_gemv_concurrent_gbps > 0 ? f->cpu_gemv_concurrent_gbps : *busy;
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
    Result<double> disk = DiskGbps(disk_files, disk_bytes_cap);
    if (disk.ok()) {
      f.disk_gbps = *disk;
    } else {
      f.disk_error = disk.error().ToString();
    }
  } else {
    f.disk_error = "no files to read";
  }
  return f;
}

std::string FloorsToProfileJson(const Floors& f) {
  nlohmann::json j = {{"name", f.device_name + " (measured)"},
                      {"h2d_gbps", f.h2d_gbps},
                      {"d2h_gbps", f.d2h_gbps},
                      {"disk_gbps", f.disk_gbps > 0 ? f.disk_gbps : kUnmeasuredDiskGbps},
                      {"device_mem_gbps", f.device_mem_gbps},
                      {"matmul_tflops", f.matmul_tflops},
                      {"cpu_mem_gbps", 20.0},
                      {"cpu_gflops", 200.0},
                      {"cpu_gemv_gbps", f.cpu_gemv_gbps},
                      {"h2d_busy_gbps", f.h2d_busy_gbps},
                      {"cpu_gemv_alone_gbps", f.cpu_gemv_alone_gbps},
                      {"cpu_gemv_fp8_gbps", f.cpu_gemv_fp8_gbps},
                      {"cpu_gemv_int8_gbps", f.cpu_gemv_int8_gbps},
                      {"cpu_gemv_int4_gbps", f.cpu_gemv_int4_gbps}};
  return j.dump(1);
}

}  // namespace bigplan
