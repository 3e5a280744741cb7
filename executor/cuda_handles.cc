#include "executor/cuda_handles.h"

#include <utility>

namespace bigplan::executor_internal {

Status CudaCheck(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  return MakeError(ErrorCode::kDevice, what + ": " + cudaGetErrorString(err));
}

Result<CudaStream> CudaStream::Create(int device, const std::string& what, unsigned flags) {
  const std::string where = what + ": cudaStreamCreate on cuda:" + std::to_string(device);
  BIGPLAN_RETURN_IF_ERROR(CudaCheck(cudaSetDevice(device), where + " (cudaSetDevice)"));
  CudaStream s;
  BIGPLAN_RETURN_IF_ERROR(CudaCheck(cudaStreamCreateWithFlags(&s.stream_, flags), where));
  s.device_ = device;
  return s;
}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    reset();
    stream_ = std::exchange(other.stream_, nullptr);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

void CudaStream::reset() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  stream_ = nullptr;
  device_ = -1;
}

Result<CudaEvent> CudaEvent::Create(int device, bool timing, const std::string& what) {
  const std::string where = what + ": cudaEventCreate on cuda:" + std::to_string(device);
  BIGPLAN_RETURN_IF_ERROR(CudaCheck(cudaSetDevice(device), where + " (cudaSetDevice)"));
  CudaEvent e;
  BIGPLAN_RETURN_IF_ERROR(
      CudaCheck(cudaEventCreateWithFlags(&e.event_, timing ? cudaEventDefault : cudaEventDisableTiming), where));
  e.device_ = device;
  return e;
}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    reset();
    event_ = std::exchange(other.event_, nullptr);
    device_ = std::exchange(other.device_, -1);
  }
  return *this;
}

void CudaEvent::reset() {
  if (event_ != nullptr) cudaEventDestroy(event_);
  event_ = nullptr;
  device_ = -1;
}

}  // namespace bigplan::executor_internal
