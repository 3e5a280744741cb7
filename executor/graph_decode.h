// Decode steps replayed from CUDA graphs (ExecutorOptions::cuda_graphs; internal to executor/).
//
// A GraphDecoder replays one device's part of the decode step of an executor whose plan may capture its decode
// steps (every block Gpu tier, static-decode kernels): the whole step on one GPU, or one segment of consecutive
// blocks on one of several GPUs (the executor chains the segments, copying the hidden state between devices). Per
// batch size, the first decode step runs the segment's static step twice on a side stream (warm-up: cuBLAS handles
// and workspaces, RoPE tables) and captures a third run as a CUDA graph; later steps copy the token ids and the
// position into the graph's input tensor and replay it. A capture that fails turns graphs off for good
// (graph_cache.h): the caller then runs that step, and every later one, eagerly.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "executor/graph_cache.h"
#include "support/result.h"

namespace bigplan::executor_internal {

// Captures the work `issue` puts on the current stream into *graph (capture mode thread-local): issue's status, or
// kDevice naming `what` for an exception thrown by the capture or by issue, after leaving capture mode (that graph is
// then not to be replayed).
Status CaptureGraph(at::cuda::CUDAGraph* graph, const std::function<Status()>& issue, const std::string& what);

// Makes the calling thread's library state for the current device and stream: its cuBLAS and cuBLASLt handles and
// their workspaces for this stream (LibTorch makes them on first use, per thread, device and stream; made while
// capturing, they invalidate the capture). For a capture whose warm-up ran on other threads.
void PrepareCaptureThread();

class GraphDecoder {
 public:
  // `device` < 0: never replays (enabled() false).
  explicit GraphDecoder(int device);
  GraphDecoder(GraphDecoder&&) noexcept;
  GraphDecoder& operator=(GraphDecoder&&) noexcept;
  ~GraphDecoder();

  bool enabled() const { return cache_.enabled(); }
  int device() const { return device_; }
  // Why graphs turned off: the failed capture's error message; "" while they are on (or were never tried).
  const std::string& capture_error() const { return capture_error_; }

  // The segment's blocks as one single-token step on the current stream: token ids = inputs[0:batch] as
  // [batch, 1], position = inputs[batch] (a device tensor); its output (the hidden state, or the logits
  // [batch, 1, vocab] for the segment with the head) into *out.
  using StaticStep = std::function<Status(const at::Tensor& inputs, int64_t batch, at::Tensor* out)>;
  // Called before a capture at cache position `pos` (e.g. to clear KV entries no token has written yet).
  using BeforeCapture = std::function<void(int64_t pos)>;

  // One decode step of `ids` (one token per row) at cache position `pos` on the compute stream `compute` of the
  // decoder's device. OK with *out = the step's output on the device (the graph's output tensor, valid until the
  // next replay of this batch size), in stream order on `compute`: replayed (captured first for a new batch
  // size). OK with *out undefined: graphs are off (now, or before): run the step eagerly. An error: LibTorch/CUDA
  // failed (kDevice, "decode step: ...").
  Status Step(const std::vector<int64_t>& ids, int64_t batch, int64_t pos, cudaStream_t compute,
              const BeforeCapture& before_capture, const StaticStep& step, at::Tensor* out);

 private:
  struct Graph;
  int device_;
  GraphCache<Graph> cache_;
  std::string capture_error_;
};

}  // namespace bigplan::executor_internal
