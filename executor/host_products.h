// Host compute in decode forwards (internal to executor/): the products of the plan's `host` stream units, the last
// rows of streamed linear-layer matrices, computed by the host CPU from the pinned memory where they rest while the
// GPU multiplies the rows that streamed (planner/host_compute.h).
//
// For each such matrix a kernel calls Begin(x) (a kernel on the compute stream writes x as float32 into pinned
// memory through the device's mapping of it), enqueues the GPU's rows, then Product(w): the host waits for x, runs
// the rows through a MatVecPool (executor/cpu_matvec.h) into pinned float32 memory, and a kernel on the compute
// stream reads the result through the mapping, cast to x's dtype. No copy engine is involved: the weight stream
// keeps the host-to-device one busy, and a small copy queued behind a weight copy would wait up to a millisecond.
// Consecutive products of one input (q, k and v; gate and up) share Begin's copy. The results rotate through kSlots
// pinned buffers; a slot is reused only after the kernel that read it finished. Nothing is allocated per product
// beyond LibTorch's caching allocator.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <memory>

#include "executor/arena.h"
#include "executor/cpu_matvec.h"
#include "executor/cuda_handles.h"
#include "executor/model_state.h"
#include "support/result.h"

namespace bigplan::executor_internal {

class HostProducts {
 public:
  static constexpr int kSlots = 4;

  // For the host units of `state` (nullptr when it has none or runs in CPU mode): pinned buffers for
  // host_max_tokens rows of the widest input and of the most host rows, the events, and a pool of `threads` computing
  // threads (0: every core). kInvalidArgument for a host unit whose weight the host cannot multiply (neither bf16
  // nor row-quantized, or not a matrix), naming it; kDevice for CUDA failures.
  static Result<std::unique_ptr<HostProducts>> Create(const ModelState& state, int threads);

  // Enqueues x's copy to the host on `stream` (x: [..., cols] on a GPU, at most host_max_tokens rows), unless x is
  // the tensor of the previous Begin since Reset. Throws c10::Error on LibTorch failures.
  Status Begin(const at::Tensor& x, cudaStream_t stream);
  // Rows [row_begin, w.rows) of w times the begun x: [tokens, w.rows - row_begin] in x's dtype on x's device, ready
  // in `stream`'s order. kInvalidArgument when x's width differs from w's columns.
  Result<at::Tensor> Product(const WeightRuntime& w, int64_t row_begin, cudaStream_t stream);
  // Forgets the begun x (each step; the next Begin copies).
  void Reset();

  int threads() const { return pool_->threads(); }

 private:
  HostProducts() = default;
  std::unique_ptr<cpu_matvec::MatVecPool> pool_;
  int device_ = -1;
  int64_t max_tokens_ = 0, max_cols_ = 0, max_rows_ = 0;
  Allocation x_host_;                      // float32 [max_tokens, max_cols]
  std::array<Allocation, kSlots> y_host_;  // float32 [max_tokens, max_rows] each
  CudaEvent x_ready_;
  std::array<CudaEvent, kSlots> y_copied_;
  std::array<bool, kSlots> y_pending_{};
  int next_slot_ = 0;
  // x_host_ as a float32 [tokens, cols] tensor on the device (its mapping).
  at::Tensor MappedX(int64_t tokens, int64_t cols) const;
  at::Tensor x_;  // the begun input (kept so its storage is not reused while cached)
  int64_t tokens_ = 0, cols_ = 0;
  bool x_waited_ = false;
};

}  // namespace bigplan::executor_internal
