// Ranks: one process per plan device, joined through LibTorch's c10d (a TCPStore for the rendezvous and commands,
// ProcessGroupNCCL for tensors on GPUs), so that one plan runs over GPUs of several hosts. Internal to the
// executor (ExecutorOptions::world_size).
//
// Rank 0 listens on the rendezvous address (host:port) and drives; every other rank connects to it and waits for
// commands. A command is a vector of numbers from rank 0 to every other rank; tensors travel between two ranks in
// the order they were sent: CUDA tensors over NCCL (point to point, ordered on the current CUDA streams: the host
// does not wait), host tensors through the store (CPU mode, where ranks run on one machine's cores). A
// tensor-parallel plan's shards, one per rank, add their partial sums through AllReduce.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan::executor_internal {

struct RankOptions {
  int rank = 0;
  int world_size = 1;
  std::string address;  // "host:port" of rank 0
  bool cuda = false;    // tensors travel over NCCL (else through the store)
  int timeout_s = 300;  // joining, and every wait for a tensor
};

class RankGroup {
 public:
  // Joins (rank 0: listens and waits for the others). kInvalidArgument for a bad address or rank; kIo when the
  // group does not form within the timeout (naming the address and the ranks missing).
  static Result<std::unique_ptr<RankGroup>> Join(const RankOptions& options);
  ~RankGroup();
  RankGroup(const RankGroup&) = delete;
  RankGroup& operator=(const RankGroup&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }

  // Rank 0: sends `command` (not empty) to every other rank.
  Status Broadcast(const std::vector<int64_t>& command);
  // Rank 0: tells every other rank that no command follows (their NextCommand returns an empty vector), then waits
  // (up to the timeout, at most 30 s) until each has read it, so that rank 0's store outlives their last read.
  Status Finish();
  // Ranks > 0: the next command from rank 0, waiting as long as it takes; empty after Finish. kIo when rank 0 went
  // away.
  Result<std::vector<int64_t>> NextCommand();
  // A tensor to rank `to`, and the next tensor from rank `from` into `*t` (allocated by the caller with the sender's
  // shape, dtype and device kind). kIo naming the peer on failure or after the timeout.
  Status Send(const at::Tensor& t, int to);
  Status Recv(at::Tensor* t, int from);
  // Every rank calls it with its tensor of the same shape and dtype (contiguous); each gets the sum over the ranks
  // in *t. CUDA tensors: an NCCL all-reduce, ordered on the current stream (the host does not wait). Host tensors:
  // rank 0 adds the others' parts to its own in rank order (the in-process all-reduce's order) and sends the sum
  // back through the store. kIo naming the step on failure or after the timeout.
  Status AllReduce(at::Tensor* t);

  class Impl;

 private:
  RankGroup(RankOptions options, std::unique_ptr<Impl> impl);
  RankOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bigplan::executor_internal
