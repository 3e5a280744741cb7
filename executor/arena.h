// The executor's memory: one arena per compute device and one pinned host pool, allocated once at load.
//
// Kinds of allocation:
//   kDevice  cudaMalloc on a CUDA device (a device arena in GPU mode).
//   kPinned  cudaHostAlloc (the pinned host pool in GPU mode), 4 KiB-aligned like kHost: O_DIRECT reads land in it,
//            and cudaHostAlloc sub-allocates small requests at a smaller alignment, so it asks 4 KiB more and
//            aligns the start.
//   kHost    anonymous private mmap, 4 KiB-aligned and committed lazily page by page (the device arenas and the
//            pinned pool in CPU-only mode, and device arenas of CPU-compute blocks). Untouched bytes cost nothing,
//            so a CPU run of a plan made for a large GPU arena only pays for what it uses.
// Internal to executor/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "support/result.h"

namespace bigplan::executor_internal {

// Number of visible CUDA devices; 0 when the runtime reports an error (no driver, no device).
int CudaDeviceCount();

// Status from a CUDA runtime error code (an int, so this header needs no CUDA headers): kDevice naming `what`.
Status CudaStatus(int cuda_error, const std::string& what);

class Allocation {
 public:
  enum class Kind { kNone, kDevice, kPinned, kHost };

  // `name` is used in error messages ("cuda:0 arena", "pinned pool").
  static Result<Allocation> Device(int device, uint64_t size, const std::string& name);
  static Result<Allocation> Pinned(uint64_t size, const std::string& name);
  static Result<Allocation> Host(uint64_t size, const std::string& name);

  Allocation() = default;
  Allocation(Allocation&& other) noexcept;
  Allocation& operator=(Allocation&& other) noexcept;
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;
  ~Allocation();

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  Kind kind() const { return kind_; }
  int device() const { return device_; }  // CUDA ordinal for kDevice, -1 otherwise
  bool on_host() const { return kind_ == Kind::kPinned || kind_ == Kind::kHost; }

 private:
  void Release();
  uint8_t* base_ = nullptr;  // what was allocated (kPinned: data_ is base_ rounded up to 4 KiB)
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  Kind kind_ = Kind::kNone;
  int device_ = -1;
};

}  // namespace bigplan::executor_internal
