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
          (!w.quantized() && w.dtype != schema::DType::BF16)) {
        return MakeError(ErrorCode::kInvalidArgument,
                         b.name + ": the host cannot multiply " + w.name +
                             " (it multiplies bf16 or row-quantized matrices resting in pinned CPU memory)");
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
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  h->pool_ = std::make_unique<cpu_matvec::MatVecPool>(n);
  return h;
}

void HostProducts::Reset() {
  x_ = at::Tensor();
  x_float_ = at::Tensor();
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
  x_float_ = x.reshape({tokens, cols}).to(at::kFloat).contiguous();
  tokens_ = tokens;
  cols_ = cols;
  x_waited_ = false;
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(x_host_.data(), x_float_.data_ptr(),
                                               static_cast<size_t>(tokens * cols) * sizeof(float),
                                               cudaMemcpyDeviceToHost, stream),
                               "copying a host-compute input to the host"));
  return Cuda(cudaEventRecord(x_ready_.get(), stream), "recording a host-compute input copy");
}

Result<at::Tensor> HostProducts::Product(const WeightRuntime& w, int64_t row_begin, cudaStream_t stream) {
  if (!x_.defined() || w.shape.size() != 2 || w.shape[1] != cols_ || row_begin < 0 || row_begin >= w.rows ||
      w.rows - row_begin > max_rows_) {
    return MakeError(ErrorCode::kInvalidArgument, "host compute: " + w.name + " does not match the begun input");
  }
  if (!x_waited_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(x_ready_.get()), "waiting for a host-compute input"));
    x_float_ = at::Tensor();
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
  at::Tensor out = at::empty({tokens_, rows}, x_.options().dtype(at::kFloat));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(out.data_ptr(), y, static_cast<size_t>(tokens_ * rows) * sizeof(float),
                                               cudaMemcpyHostToDevice, stream),
                               "copying a host-compute result to the GPU"));
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(y_copied_[slot].get(), stream), "recording a host-compute output copy"));
  y_pending_[slot] = true;
  return out.to(x_.scalar_type());
}

}  // namespace bigplan::executor_internal
