// Owners of CUDA streams and events (internal to executor/).
//
// CudaStream and CudaEvent are move-only: each owns at most one handle and destroys it when it is destroyed or
// assigned over. A default-constructed (or moved-from) owner is empty: get() is nullptr and its destruction makes
// no CUDA call, so empty owners are safe in programs without a GPU. Handles are made through Create functions that
// return a kDevice error naming what failed (and the device) instead of a half-made handle.
//
// Destroying a handle does not synchronize: the caller finishes the work queued on a stream, or recorded in an
// event, before the owner goes (cudaStreamDestroy/cudaEventDestroy release the handle once that work is done,
// so this is not a correctness requirement for CUDA, only for the caller's buffers).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "support/result.h"

namespace bigplan::executor_internal {

class CudaStream {
 public:
  // A new stream on `device` (cudaSetDevice is called: the current device changes) with `flags`
  // (cudaStreamNonBlocking by default). kDevice: "<what>: cudaStreamCreate on cuda:N: <CUDA's message>".
  static Result<CudaStream> Create(int device, const std::string& what, unsigned flags = cudaStreamNonBlocking);

  CudaStream() = default;
  ~CudaStream() { reset(); }
  CudaStream(CudaStream&& other) noexcept : stream_(other.stream_), device_(other.device_) {
    other.stream_ = nullptr;
    other.device_ = -1;
  }
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }  // -1 when empty
  explicit operator bool() const { return stream_ != nullptr; }
  // Destroys the stream (if any); the owner is empty afterwards.
  void reset();

 private:
  cudaStream_t stream_ = nullptr;
  int device_ = -1;
};

class CudaEvent {
 public:
  // A new event on `device` (cudaSetDevice is called); `timing` false disables timing (cheaper to record and
  // wait on). kDevice: "<what>: cudaEventCreate on cuda:N: <CUDA's message>".
  static Result<CudaEvent> Create(int device, bool timing, const std::string& what);

  CudaEvent() = default;
  ~CudaEvent() { reset(); }
  CudaEvent(CudaEvent&& other) noexcept : event_(other.event_), device_(other.device_) {
    other.event_ = nullptr;
    other.device_ = -1;
  }
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t get() const { return event_; }
  int device() const { return device_; }  // -1 when empty
  explicit operator bool() const { return event_ != nullptr; }
  void reset();

 private:
  cudaEvent_t event_ = nullptr;
  int device_ = -1;
};

// kDevice "<what>: <CUDA's message>" for a CUDA error, OK for cudaSuccess. Clears CUDA's last error.
Status CudaCheck(cudaError_t err, const std::string& what);

}  // namespace bigplan::executor_internal
