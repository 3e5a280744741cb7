#include "executor/arena.h"

#include <cuda_runtime.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "support/units.h"

namespace bigplan::executor_internal {

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

Status CudaStatus(int cuda_error, const std::string& what) {
  if (cuda_error == cudaSuccess) return Status::Ok();
  return MakeError(ErrorCode::kDevice,
                   what + ": " + cudaGetErrorString(static_cast<cudaError_t>(cuda_error)));
}

Result<Allocation> Allocation::Device(int device, uint64_t size, const std::string& name) {
  Allocation a;
  a.kind_ = Kind::kDevice;
  a.device_ = device;
  a.size_ = size;
  if (size == 0) return a;
  BIGPLAN_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), name + ": cudaSetDevice(" + std::to_string(device) + ")"));
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, size);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return MakeError(ErrorCode::kDevice, name + ": cudaMalloc of " + FormatBytes(size) + " on cuda:" +
                                             std::to_string(device) + " failed: " + cudaGetErrorString(err));
  }
  a.data_ = static_cast<uint8_t*>(p);
  return a;
}

Result<Allocation> Allocation::Pinned(uint64_t size, const std::string& name) {
  Allocation a;
  a.kind_ = Kind::kPinned;
  a.size_ = size;
  if (size == 0) return a;
  constexpr uint64_t kAlign = 4096;
  void* p = nullptr;
  cudaError_t err = cudaHostAlloc(&p, size + kAlign, cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return MakeError(ErrorCode::kDevice,
                     name + ": cudaHostAlloc of " + FormatBytes(size) + " failed: " + cudaGetErrorString(err));
  }
  a.base_ = static_cast<uint8_t*>(p);
  a.data_ = a.base_ + (kAlign - reinterpret_cast<uintptr_t>(p) % kAlign) % kAlign;
  return a;
}

Result<Allocation> Allocation::Host(uint64_t size, const std::string& name) {
  Allocation a;
  a.kind_ = Kind::kHost;
  a.size_ = size;
  if (size == 0) return a;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return MakeError(ErrorCode::kIo,
                     name + ": mapping " + FormatBytes(size) + " of host memory failed: " + std::strerror(errno));
  }
  a.data_ = static_cast<uint8_t*>(p);
  return a;
}

Allocation::Allocation(Allocation&& other) noexcept { *this = std::move(other); }

Allocation& Allocation::operator=(Allocation&& other) noexcept {
  if (this != &other) {
    Release();
    base_ = std::exchange(other.base_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    kind_ = std::exchange(other.kind_, Kind::kNone);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

Allocation::~Allocation() { Release(); }

void Allocation::Release() {
  if (data_ != nullptr) {
    switch (kind_) {
      case Kind::kDevice:
        cudaSetDevice(device_);
        cudaFree(data_);
        break;
      case Kind::kPinned:
        cudaFreeHost(base_);
        break;
      case Kind::kHost:
        munmap(data_, size_);
        break;
      case Kind::kNone:
        break;
    }
  }
  base_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  kind_ = Kind::kNone;
}

}  // namespace bigplan::executor_internal
