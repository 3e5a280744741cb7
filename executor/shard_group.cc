#include "executor/shard_group.h"

#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <string>

namespace bigplan::executor_internal {

ShardGroup::ShardGroup(std::vector<int> devices, std::unique_ptr<tp::AllReduce> comm)
    : devices_(std::move(devices)), comm_(std::move(comm)) {}

Result<std::unique_ptr<ShardGroup>> ShardGroup::Create(const std::vector<int>& devices) {
  std::unique_ptr<tp::AllReduce> comm;
  std::string error;
  const cudaError_t e = tp::AllReduce::Create(devices, kPieceElements, &comm, &error);
  if (e != cudaSuccess || comm == nullptr) {
    std::string names;
    for (int d : devices) names += (names.empty() ? "cuda:" : ", cuda:") + std::to_string(d);
    return MakeError(ErrorCode::kDevice, "tensor parallelism over " + names + ": " +
                                             (error.empty() ? std::string(cudaGetErrorString(e)) : error));
  }
  return std::unique_ptr<ShardGroup>(new ShardGroup(devices, std::move(comm)));
}

Status ShardGroup::AllReduce(int shard, const at::Tensor& x) {
  if (shard < 0 || shard >= shards() || !x.defined() || !x.is_cuda() || x.get_device() != devices_[shard] ||
      !x.is_contiguous()) {
    return MakeError(ErrorCode::kInternal, "all-reduce of shard " + std::to_string(shard) +
                                               ": needs a contiguous tensor on its device");
  }
  tp::DType dtype;
  switch (x.scalar_type()) {
    case at::kBFloat16: dtype = tp::DType::kBF16; break;
    case at::kHalf: dtype = tp::DType::kF16; break;
    case at::kFloat: dtype = tp::DType::kF32; break;
    default:
      return MakeError(ErrorCode::kUnsupported, std::string("all-reduce of a ") + c10::toString(x.scalar_type()) +
                                                    " tensor (bf16, fp16 and float32 are reduced)");
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(devices_[shard])).stream();
  uint8_t* data = static_cast<uint8_t*>(x.data_ptr());
  const int64_t n = x.numel();
  for (int64_t at = 0; at < n; at += kPieceElements) {
    const int64_t piece = std::min(kPieceElements, n - at);
    uint8_t* p = data + at * x.element_size();
    const cudaError_t e = comm_->Launch(shard, dtype, p, p, piece, stream);
    if (e != cudaSuccess)
      return MakeError(ErrorCode::kDevice, "all-reduce of shard " + std::to_string(shard) + ": " + cudaGetErrorString(e));
  }
  return Status::Ok();
}

Status ShardGroup::CheckPass(std::chrono::steady_clock::time_point issued) {
  if (std::chrono::steady_clock::now() - issued < std::chrono::seconds(tp::kTimeoutSeconds) || !comm_->Failed())
    return Status::Ok();
  BIGPLAN_RETURN_IF_ERROR(Recover());
  return MakeError(ErrorCode::kDevice, "an all-reduce between the tensor-parallel shards waited over " +
                                           std::to_string(tp::kTimeoutSeconds) +
                                           " s for another GPU's matching call and gave up: the pass's results are "
                                           "dropped");
}

Status ShardGroup::Recover() {
  cudaError_t e = comm_->Abort();
  for (int d : devices_) {
    if (e != cudaSuccess) break;
    e = cudaSetDevice(d);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
  }
  if (e == cudaSuccess) e = comm_->Reset();
  if (e != cudaSuccess)
    return MakeError(ErrorCode::kDevice, std::string("recovering the shards after a failed pass: ") + cudaGetErrorString(e));
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
