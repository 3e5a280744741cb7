#include "executor/host_products.h"

#include <algorithm>
#include <string>
#include <thread>

namespace bigplan::executor_internal {
namespace {

Status Cuda(cudaError_t err, const std::string& what) { return CudaStatus(static_cast<int>(err), what); }

}  // namespace

Result<std::unique_ptr<HostProducts>> HostProducts::Create(const ModelState& state, int threads) {
  if (state.cpu_mode || state.host_max_tokens == 0) return std::unique_ptr<HostProducts>();
  std::unique_ptr<HostProducts> h(new HostProducts());
  h->max_tokens_ = state.host_max_tokens;
  bool any = false;
  for (const BlockRuntime& b : state.blocks) {
    for (const WeightRuntime& w : b.weights) {
      if (w.host_row_begin < 0) continue;
      if (w.shape.size() != 2 || w.home == nullptr || w.tier != schema::Tier::Cpu || w.split ||
          (w.dtype != schema::DType::BF16 && (!w.quantized() || w.dtype != schema::DType::F16))) {
        return MakeError(ErrorCode::kInvalidArgument,
                         b.name + ": the host cannot multiply " + w.name +
                             " (it multiplies bf16 matrices, or row-quantized ones for bf16 or fp16 activations, "
                             "resting in pinned CPU memory)");
      }
      const cpu_matvec::Matrix m{w.format, w.home, w.rows, w.shape[1], w.group, static_cast<int64_t>(w.row_bytes())};
      Status valid = cpu_matvec::Validate(m);
      if (!valid.ok()) return WithContext(valid.take_error(), b.name + ": " + w.name);
      if (h->device_ >= 0 && b.device != h->device_) {
        return MakeError(ErrorCode::kUnsupported, "host compute for blocks on several GPUs (" + b.name + ")");
      }
      h->device_ = b.device;
      h->max_cols_ = std::max(h->max_cols_, w.shape[1]);
      h->max_rows_ = std::max(h->max_rows_, w.rows - w.host_row_begin);
      any = true;
    }
  }
  if (!any) return std::unique_ptr<HostProducts>();
  const uint64_t x_bytes = static_cast<uint64_t>(h->max_tokens_ * h->max_cols_) * sizeof(float);
  const uint64_t y_bytes = static_cast<uint64_t>(h->max_tokens_ * h->max_rows_) * sizeof(float);
  BIGPLAN_ASSIGN_OR_RETURN(h->x_host_, Allocation::Pinned(x_bytes, "host compute input"));
  for (int i = 0; i < kSlots; ++i) {
    BIGPLAN_ASSIGN_OR_RETURN(h->y_host_[i], Allocation::Pinned(y_bytes, "host compute output"));
    BIGPLAN_ASSIGN_OR_RETURN(h->y_copied_[i], CudaEvent::Create(h->device_, false, "host compute output copy"));
  }
  BIGPLAN_ASSIGN_OR_RETURN(h->x_ready_, CudaEvent::Create(h->device_, false, "host compute input copy"));
  // The kernels read and write the pinned buffers through the device's mapping of them, which unified addressing
  // gives every cudaHostAlloc allocation at the same address.
  cudaDeviceProp prop{};
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, h->device_), "cudaGetDeviceProperties"));
  if (!prop.unifiedAddressing || !prop.canMapHostMemory) {
    return MakeError(ErrorCode::kUnsupported, "host compute needs a GPU that maps pinned host memory (unified "
                                              "addressing): cuda:" + std::to_string(h->device_));
  }
  for (const Allocation* a : {&h->x_host_, &h->y_host_[0], &h->y_host_[1], &h->y_host_[2], &h->y_host_[3]}) {
    void* device_ptr = nullptr;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostGetDevicePointer(&device_ptr, a->data(), 0), "mapping a host compute buffer"));
    if (device_ptr != a->data()) {
      return MakeError(ErrorCode::kUnsupported, "host compute: a pinned buffer is mapped at another device address");
    }
  }
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  h->pool_ = std::make_unique<cpu_matvec::MatVecPool>(n);
  return h;
}

void HostProducts::Reset() { x_ = at::Tensor(); }

at::Tensor HostProducts::MappedX(int64_t tokens, int64_t cols) const {
  return at::from_blob(x_host_.data(), {tokens, cols}, x_.options().dtype(at::kFloat));
}

Status HostProducts::Begin(const at::Tensor& x, cudaStream_t stream) {
  if (x_.defined() && x.unsafeGetTensorImpl() == x_.unsafeGetTensorImpl() && x.sizes().equals(x_.sizes())) {
    return Status::Ok();
  }
  const int64_t cols = x.size(-1);
  const int64_t tokens = cols > 0 ? x.numel() / cols : 0;
  if (tokens < 1 || tokens > max_tokens_ || cols > max_cols_) {
    return MakeError(ErrorCode::kInvalidArgument, "host compute: an input of " + std::to_string(tokens) + " x " +
                                                      std::to_string(cols) + " exceeds " +
                                                      std::to_string(max_tokens_) + " x " + std::to_string(max_cols_));
  }
  x_ = x;
  tokens_ = tokens;
  cols_ = cols;
  x_waited_ = false;
  // One kernel casts x to float32 and writes it straight into the pinned buffer (mapped into the device's address
  // space): no copy engine, which the weight stream keeps busy.
  MappedX(tokens, cols).copy_(x.reshape({tokens, cols}));
  return Cuda(cudaEventRecord(x_ready_.get(), stream), "recording a host-compute input copy");
}

Result<at::Tensor> HostProducts::Product(const WeightRuntime& w, int64_t row_begin, cudaStream_t stream) {
  if (!x_.defined() || w.shape.size() != 2 || w.shape[1] != cols_ || row_begin < 0 || row_begin >= w.rows ||
      w.rows - row_begin > max_rows_) {
    return MakeError(ErrorCode::kInvalidArgument, "host compute: " + w.name + " does not match the begun input");
  }
  if (!x_waited_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(x_ready_.get()), "waiting for a host-compute input"));
    x_waited_ = true;
  }
  const int slot = next_slot_;
  next_slot_ = (next_slot_ + 1) % kSlots;
  if (y_pending_[slot]) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(y_copied_[slot].get()), "waiting for a host-compute output"));
    y_pending_[slot] = false;
  }
  const int64_t rows = w.rows - row_begin;
  float* y = reinterpret_cast<float*>(y_host_[slot].data());
  cpu_matvec::Job job;
  job.w = cpu_matvec::Matrix{w.format, w.home + static_cast<uint64_t>(row_begin) * w.row_bytes(), rows, cols_,
                             w.group, static_cast<int64_t>(w.row_bytes())};
  job.row_begin = 0;
  job.row_end = rows;
  job.x = reinterpret_cast<const float*>(x_host_.data());
  job.y = y;
  job.y_stride = rows;
  Status run = pool_->Run(std::span<const cpu_matvec::Job>(&job, 1), static_cast<int>(tokens_));
  if (!run.ok()) return WithContext(run.take_error(), "host compute of " + w.name);
  // One kernel reads the result from the mapped pinned buffer and casts it to x's dtype on the GPU (again no copy
  // engine: a small copy queued behind a weight copy would wait for it).
  at::Tensor out = at::from_blob(y, {tokens_, rows}, x_.options().dtype(at::kFloat)).to(x_.scalar_type());
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(y_copied_[slot].get(), stream), "recording a host-compute output read"));
  y_pending_[slot] = true;
  return out;
}

}  // namespace bigplan::executor_internal
