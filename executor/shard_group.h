// The GPUs of a tensor-parallel plan (schema Plan.tensor_parallel) as one group: the all-reduce its shards' kernels
// call (ForwardContext::Shards::all_reduce) on at::Tensors, over executor/tp_comm.h's one-shot push through peer
// memory (internal to executor/).
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <vector>

#include "executor/tp_comm.h"
#include "support/result.h"

namespace bigplan::executor_internal {

class ShardGroup {
 public:
  // Elements one all-reduce call takes; a larger tensor is reduced in pieces of this many (the same on every shard).
  static constexpr int64_t kPieceElements = int64_t{1} << 20;

  // devices[r]: shard r's CUDA device. Enables peer access between them and allocates the exchange buffers
  // (2 x shards x kPieceElements x 4 bytes on each device). kDevice naming the devices on failure.
  static Result<std::unique_ptr<ShardGroup>> Create(const std::vector<int>& devices);

  int shards() const { return static_cast<int>(devices_.size()); }
  int device(int shard) const { return devices_[shard]; }

  // Replaces x (contiguous bf16, fp16 or float32 on device(shard)) by the sum over the shards of their x, added in
  // shard order (bit-identical on every shard), in stream order on that device's current stream. Every shard makes
  // the same calls in the same order; a call waits on the GPU for the other shards' matching calls.
  Status AllReduce(int shard, const at::Tensor& x);

  // After a pass issued at `issued` whose results have reached the host: kDevice when an all-reduce of the group
  // gave up waiting for another shard (tp::AllReduce's timeout) since then, its results being garbage (the group is
  // recovered first). An all-reduce gives up only after waiting tp::kTimeoutSeconds, so a pass that took less cannot
  // have failed: only longer ones read the devices' words (a synchronous read).
  Status CheckPass(std::chrono::steady_clock::time_point issued);

  // A pass abandoned between shards (one shard's kernels issued, another's not): releases the shards' kernels that
  // wait for the missing calls, waits for every device, and resets the group so later passes match again. Their
  // results are garbage; the caller drops the pass.
  Status Recover();

 private:
  ShardGroup(std::vector<int> devices, std::unique_ptr<tp::AllReduce> comm);
  std::vector<int> devices_;
  std::unique_ptr<tp::AllReduce> comm_;
};

}  // namespace bigplan::executor_internal
