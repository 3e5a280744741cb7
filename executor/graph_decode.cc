#include "executor/graph_decode.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstring>
#include <memory>
#include <string>

namespace bigplan::executor_internal {

Status CaptureGraph(at::cuda::CUDAGraph* graph, const std::function<Status()>& issue, const std::string& what) {
  try {
    graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    Status issued = issue();
    graph->capture_end();
    return issued;
  } catch (const std::exception& e) {
    try {
      graph->capture_end();  // leave capture mode
    } catch (const std::exception&) {
      // The capture was already ended or invalidated, or never began.
    }
    return MakeError(ErrorCode::kDevice, "capturing " + what + ": " + e.what());
  }
}

void PrepareCaptureThread() {
  (void)at::cuda::getCurrentCUDABlasHandle();
  (void)at::cuda::getCurrentCUDABlasLtHandle();
}

struct GraphDecoder::Graph {
  std::unique_ptr<at::cuda::CUDAGraph> graph;
  at::Tensor inputs;  // [batch + 1] int64 on the device: the token ids, then the position
  at::Tensor output;  // the step's output (hidden state or logits), written by each replay
};

GraphDecoder::GraphDecoder(int device) : device_(device), cache_(device >= 0) {}
GraphDecoder::GraphDecoder(GraphDecoder&&) noexcept = default;
GraphDecoder& GraphDecoder::operator=(GraphDecoder&&) noexcept = default;
GraphDecoder::~GraphDecoder() = default;

Status GraphDecoder::Step(const std::vector<int64_t>& ids, int64_t batch, int64_t pos, cudaStream_t compute_stream,
                          const BeforeCapture& before_capture, const StaticStep& step, at::Tensor* out) {
  *out = at::Tensor();
  if (!cache_.enabled()) return Status::Ok();
  try {
    c10::InferenceMode inference;
    const auto device_index = static_cast<c10::DeviceIndex>(device_);
    const at::Device device(at::kCUDA, device_index);
    c10::cuda::CUDAGuard device_guard(device_index);
    const c10::cuda::CUDAStream compute = c10::cuda::getStreamFromExternal(compute_stream, device_index);
    c10::cuda::CUDAStreamGuard compute_guard(compute);
    at::Tensor host = at::empty({batch + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::memcpy(host.data_ptr<int64_t>(), ids.data(), batch * sizeof(int64_t));
    host.data_ptr<int64_t>()[batch] = pos;

    auto capture = [&](int64_t b) -> Result<std::optional<Graph>> {
      Graph g;
      g.inputs = at::empty({b + 1}, at::TensorOptions().dtype(at::kLong).device(device));
      g.inputs.copy_(host, /*non_blocking=*/true);
      before_capture(pos);
      // Warm up and capture on a side stream. Each run writes the same K/V at the same position, so this step's
      // own result is the replay's.
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_index);
      at::cuda::CUDAEvent to_side, to_compute;
      to_side.record(compute);
      to_side.block(side);
      Status captured;
      {
        c10::cuda::CUDAStreamGuard side_guard(side);
        for (int w = 0; w < 2 && captured.ok(); ++w) {
          at::Tensor warm;
          captured = step(g.inputs, b, &warm);
        }
        if (captured.ok()) {
          g.graph = std::make_unique<at::cuda::CUDAGraph>();
          captured = CaptureGraph(g.graph.get(), [&] { return step(g.inputs, b, &g.output); }, "the decode step");
        }
      }
      to_compute.record(side);
      to_compute.block(compute);
      if (!captured.ok()) {
        capture_error_ = captured.error().message;
        return std::optional<Graph>();
      }
      return std::optional<Graph>(std::move(g));
    };
    BIGPLAN_ASSIGN_OR_RETURN(auto found, cache_.Get(batch, capture));
    if (found.graph == nullptr) return Status::Ok();
    if (!found.captured) found.graph->inputs.copy_(host, /*non_blocking=*/true);
    found.graph->graph->replay();
    *out = found.graph->output;
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kDevice, std::string("decode step: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
