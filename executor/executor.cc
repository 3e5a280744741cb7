#include "executor/executor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>

#include "executor/generation.h"
#include "executor/graph_cache.h"
#include "executor/graph_decode.h"
#include "executor/fused_ops.h"
#include "executor/kernels.h"
#include "executor/ranks.h"
#include "executor/shard_group.h"
#include "executor/loader.h"
#include "executor/host_products.h"
#include "executor/step_weights.h"
#include "executor/stream_engine.h"
#include "executor/trace.h"
#include "executor/worker_pool.h"
#include "support/units.h"
#include "arch/registry.h"
#include "arch/temporaries.h"
#include "arch/tensor_parallel.h"

namespace bigplan {

using executor_internal::BlockKv;
using executor_internal::BlockLabel;
using executor_internal::BlockRuntime;
using executor_internal::GraphDecoder;

namespace {

// Shard `s` of a tensor-parallel plan's context for the kernels: its vocabulary rows and how the shards' partial
// sums meet.
ForwardContext::Shards ShardContext(int64_t vocab, uint32_t s, uint32_t shards,
                                    std::function<Status(const at::Tensor&)> all_reduce) {
  ForwardContext::Shards c;
  const arch::TensorSlice v = arch::VocabSlice(vocab, s, shards);
  c.shard = static_cast<int>(s);
  c.vocab_begin = v.begin;
  c.vocab_end = v.end;
  c.vocab = vocab;
  c.all_reduce = std::move(all_reduce);
  return c;
}

}  // namespace
using executor_internal::StepWeights;
using executor_internal::StreamEngine;
using executor_internal::ForwardTimings;
using executor_internal::ModelState;
using executor_internal::TraceRecorder;
using Clock = std::chrono::steady_clock;

class Executor::Impl {
 public:
  ExecutorOptions options;
  std::unique_ptr<ModelState> state;
  std::unique_ptr<ModelKernels> kernels;
  std::unique_ptr<StreamEngine> engine;
  std::unique_ptr<executor_internal::HostProducts> host;  // null without host units (or host_compute off)
  // One per expert ring: per GPU that computes sparse layers with experts off the GPU (none without routed experts,
  // or in CPU mode).
  std::vector<std::unique_ptr<executor_internal::ExpertEngine>> experts;
  // The engine that serves block `b` (nullptr: none does).
  executor_internal::ExpertEngine* ExpertsFor(const BlockRuntime& b) const {
    for (const auto& e : experts) {
      if (e->Routes(b)) return e.get();
    }
    return nullptr;
  }
  std::vector<StepWeights> weights;  // per block
  std::vector<BlockKv> kv;           // per block
  Clock::time_point created;

  std::mutex mu;  // serializes public calls
  int64_t pos = 0;
  int64_t cached_batch = 0;

  mutable std::mutex stats_mu;
  Stats stats;
  TraceRecorder trace;
  std::vector<BlockLabel> labels;  // per block, for the trace

  // Captured single-token steps (ExecutorOptions::cuda_graphs), one per batch size, per segment: the plan's steps
  // cut where the compute device changes (one segment on one GPU). Empty for plans whose decode steps may not be
  // captured, or once a capture failed.
  struct GraphSegment {
    GraphDecoder graphs;
    uint32_t first = 0, end = 0;  // steps [first, end)
    at::Tensor hidden_in;         // [max_batch, 1, hidden] on the segment's device: the previous segment's output
  };
  std::vector<GraphSegment> segments;
  // The one segment's steps stream weights (a one-GPU plan whose streams copy pinned units only): its warm-ups and
  // capture are the stream engine's inline passes, and each replay first waits for the copy streams (Quiesce).
  bool streamed_graphs = false;
  // A decode graph's static hidden-state input on `device`: [max_batch, 1, hidden] in the execution dtype, zeros.
  at::Tensor DecodeHiddenBuffer(int device) const {
    const schema::Plan& p = state->plan->plan();
    return at::zeros({state->info.max_batch, 1, static_cast<int64_t>(p.config()->hidden_size())},
                     at::TensorOptions()
                         .dtype(executor_internal::ToScalarType(p.exec_dtype()))
                         .device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  }
  std::string capture_error;  // why graphs turned off: the failed capture's message
  bool GraphsEnabled() const {
    if (segments.empty()) return false;
    for (const GraphSegment& s : segments) {
      if (!s.graphs.enabled()) return false;
    }
    return true;
  }

  Status CheckInput(const std::vector<int64_t>& ids, int64_t batch, int64_t seq) const;
  // A decode step from a CUDA graph (graph_decode.h). If the capture fails, graphs are off for this executor from
  // then on and `*out` is left undefined: the step is to run eagerly.
  Status RunGraphStep(const std::vector<int64_t>& ids, int64_t batch, at::Tensor* out);
  // Masked cache positions enter the attention products with weight 0, so they must hold finite values: before a
  // capture, clears what no token has written after position `at` (later positions hold zeros or earlier
  // sequences' tokens).
  void ClearKvTail(int64_t at) {
    const int64_t max_seq = state->info.max_seq_len;
    for (BlockKv& v : kv) {
      if (!v.has_kv || at + 1 >= max_seq) continue;
      v.kv.k.narrow(2, at + 1, max_seq - at - 1).zero_();
      v.kv.v.narrow(2, at + 1, max_seq - at - 1).zero_();
    }
  }
  // Segment `seg`'s blocks as a static single-token step (ForwardContext::position) on the current stream; its
  // output (hidden state, or logits for the last segment) into *out.
  Status StaticStep(const GraphSegment& seg, const at::Tensor& inputs, int64_t batch, at::Tensor* out);
  // One forward pass; float logits on the host, [batch, seq, vocab] or, with last_only, [batch, 1, vocab].
  // `micro_batch_rows`, `micro_batch_group`: ForwardOptions' (0: the executor's options).
  Result<at::Tensor> RunForward(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                int micro_batch_rows = 0, int micro_batch_group = 0);
  Status RunSteps(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only, at::Tensor* out);
  // Plans whose every block is Gpu tier on a CUDA device, on two or more devices, without routed experts or host
  // units: their batched passes may be pipelined (ExecutorOptions::micro_batch_rows). Set at load.
  bool pipelinable = false;
  double issue_ms = 0;  // the last pass's (Stats::last_issue_ms)
  // Rows per micro-batch for a pass of `batch` rows of `seq` tokens; 0: not pipelined.
  int64_t MicroBatchRows(int64_t batch, int64_t seq, int requested) const;
  // RunSteps cut into micro-batches of `rows` rows, each on streams of its own on every device, replayed from prefill
  // graphs where it can (see ExecutorOptions::micro_batch_rows).
  // `group`: micro-batches in flight at once (ExecutorOptions::micro_batch_group; 0: all of the pass's).
  Status RunPipelined(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only, int64_t rows,
                      int group, at::Tensor* out);
  // mb_streams[k]: micro-batch k's streams, one per entry of state->cuda_devices, made on first use.
  std::vector<std::vector<c10::cuda::CUDAStream>> mb_streams;
  // Prefill graphs of pipelined passes (RunPipelined): one per micro-batch and segment (index k x segments + j) of
  // the shape (batch, rows per micro-batch, tokens, last-position logits) `prefill_shape`.
  struct PrefillGraph {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor input, output;  // static: the ids or hidden state in; the hidden state or logits out
  };
  std::vector<PrefillGraph> prefill_graphs;
  std::array<int64_t, 4> prefill_shape{};
  bool prefill_graphs_ok = false;  // set at load (cuda_graphs, static-step kernels); off after a failed capture
  uint64_t graph_prefills = 0;
  std::vector<std::pair<int, cudaStream_t>> owned_streams;  // mb_streams' CUDA streams, destroyed with the executor
  // Prefill graphs of one GPU (ExecutorOptions::prefill_graph_shapes): a pass from an empty cache of a plan whose
  // every block is resident on one GPU runs its steps before the lm_head on the prompt padded to a bucket
  // (executor_internal::PrefillGraphCache), from a graph once the (rows, bucket) shape ran eagerly once before; the
  // lm_head runs after it, eagerly, on the real positions. Off unless set at load (cuda_graphs, static-step kernels,
  // the plan ends with its lm_head steps).
  struct BucketGraph {
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor ids;     // static input: [rows, bucket] int64
    at::Tensor hidden;  // static output: the hidden state before the lm_head
  };
  executor_internal::PrefillGraphCache<BucketGraph> bucket_graphs{false, 0, 0};
  uint32_t head_step = 0;  // the first of the trailing lm_head steps
  Status RunBucketed(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only, at::Tensor* out);
  // Ranks (ExecutorOptions::world_size): null in a one-process run.
  std::unique_ptr<executor_internal::RankGroup> ranks;
  enum RankCommand : int64_t { kForward = 1 };
  // This rank's decode-step graphs: one per run of consecutive steps it computes (GraphSegment), when its plan may
  // capture them (ExecutorOptions::cuda_graphs, static-step kernels); empty otherwise or once a capture failed.
  std::vector<GraphSegment> rank_segments;
  bool rank_graph_step = false;  // the last RunRanked replayed them
  // One pass of a ranked plan: this rank's blocks, the hidden state received from and sent to the other ranks,
  // logits to rank 0 (which gets them in *out; other ranks leave it undefined).
  Status RunRanked(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only, at::Tensor* out);
  ~Impl() {
    if (ranks != nullptr && ranks->rank() == 0) (void)ranks->Finish();
    for (auto& [device, stream] : owned_streams) {
      cudaSetDevice(device);
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }
  // Makes every CUDA device's current stream its compute stream (no-op in CPU mode) until `guard` is destroyed.
  void GuardComputeStreams(std::optional<c10::cuda::CUDAMultiStreamGuard>* guard) const {
    if (state->cuda_devices.empty()) return;
    std::vector<c10::cuda::CUDAStream> streams;
    for (int d : state->cuda_devices) {
      streams.push_back(c10::cuda::getStreamFromExternal(engine->compute_stream(d), static_cast<c10::DeviceIndex>(d)));
    }
    guard->emplace(streams);
  }
  void Account(const ForwardTimings& t, int64_t batch, int64_t seq, double ms) {
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.last_micro_batches = 0;
    stats.last_issue_ms = 0;
    const double base = std::chrono::duration<double, std::micro>(t.wall_start - created).count();
    executor_internal::AccountForward(t, batch, seq, ms, base, labels, &stats,
                                      options.record_trace ? &trace : nullptr);
  }
  // StepRows' pass: every block once, each group of rows through it in turn.
  Status RunRowSteps(const std::vector<RowStep>& rows, at::Tensor* out);

  // Tensor parallelism (Plan.tensor_parallel): the shards' GPUs as one group, and each shard's context for the
  // kernels (its vocabulary rows, its all-reduce). Null / empty for other plans.
  std::unique_ptr<executor_internal::ShardGroup> shard_group;
  std::vector<ForwardContext::Shards> shard_ctx;
  // A pass of a tensor-parallel plan, issued eagerly: each step's block on its shard's GPU, the shards' kernels
  // meeting at their all-reduces on the GPUs; logits from shard 0 (every shard holds them).
  Status RunShards(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only, at::Tensor* out);
  // The plan's steps for the shards in ctx (one context per shard; shard `only`'s steps alone when >= 0), each
  // block on its shard's GPU, between the stream engine's BeginStep and EndStep when `engine_steps`; each shard's
  // logits into (*logits)[shard].
  // All the shards (only < 0) are issued at once, each from a thread of its own (shard 0 from the calling one, the
  // others from shard_issuers), on the streams current in the calling thread: a host synchronization with one GPU
  // while its shard is issued (the caching allocator returning memory, a library's first call there) then holds
  // that shard's thread alone, while the others issue the calls its all-reduces wait for.
  Status IssueShards(const std::vector<ForwardContext>& ctx, int only, bool engine_steps,
                     std::vector<at::Tensor>* logits);
  // Shard s's steps of IssueShards, on the calling thread; its hidden state in *hidden.
  Status IssueShard(const std::vector<ForwardContext>& ctx, int s, bool engine_steps, at::Tensor* hidden,
                    at::Tensor* logits);
  // Runs issue(s) for every shard s at once, each on a thread of its own (shard_issuers and the calling thread), with
  // the calling thread's inference mode and current streams; the lowest shard's error, if any.
  Status OnShardThreads(const std::function<Status(int)>& issue);
  std::unique_ptr<executor_internal::WorkerPool> shard_issuers;  // shards - 1 threads
  // `status` of a tensor-parallel pass issued at `issued`: a failed one first recovers the shards' group (some
  // shards' kernels may wait for all-reduces the others never issued); a completed one is checked for an all-reduce
  // that gave up waiting (ShardGroup::CheckPass), whose results would be garbage.
  Status ShardPassStatus(Status status, Clock::time_point issued);
  // Decode steps of a tensor-parallel plan from CUDA graphs: per batch size, one graph per shard (its blocks only),
  // captured one after the other after two eager warm-up steps of all the shards; a step replays them all.
  struct ShardGraph {
    std::vector<std::unique_ptr<at::cuda::CUDAGraph>> graphs;  // per shard
    std::vector<at::Tensor> inputs;   // per shard: [batch + 1] int64 (the token ids, then the position)
    std::vector<at::Tensor> outputs;  // per shard: the logits [batch, 1, vocab]
  };
  executor_internal::GraphCache<ShardGraph> shard_graphs{false};
  // The static single-token step of shard `only` (every shard, interleaved, for -1) from g's inputs; the shards'
  // logits into (*outs)[shard].
  Status ShardStaticStep(const ShardGraph& g, int64_t batch, int only, std::vector<at::Tensor>* outs);
  // As RunGraphStep: OK with *out undefined when graphs are off (the step is then to run eagerly).
  Status RunShardGraphStep(const std::vector<int64_t>& ids, int64_t batch, at::Tensor* out);
};

namespace {

// Prefill graphs of one GPU pad prompts to a multiple of this many tokens (Impl::bucket_graphs).
constexpr int64_t kPrefillBucketTokens = 64;

Error TorchError(const std::exception& e, const std::string& what) {
  return MakeError(ErrorCode::kDevice, what + ": " + e.what());
}

// The token ids of a pass as a host tensor [batch, seq].
at::Tensor HostIds(const std::vector<int64_t>& ids, int64_t batch, int64_t seq) {
  at::Tensor t = at::empty({batch, seq}, at::TensorOptions().dtype(at::kLong));
  std::memcpy(t.data_ptr<int64_t>(), ids.data(), ids.size() * sizeof(int64_t));
  return t;
}

Logits ToLogits(const at::Tensor& t) {
  Logits out;
  out.batch = t.size(0);
  out.seq = t.size(1);
  out.vocab = t.size(2);
  out.data.resize(static_cast<size_t>(t.numel()));
  std::memcpy(out.data.data(), t.data_ptr<float>(), out.data.size() * sizeof(float));
  return out;
}

}  // namespace

Status Executor::Impl::CheckInput(const std::vector<int64_t>& ids, int64_t batch, int64_t seq) const {
  const ModelInfo& info = state->info;
  if (batch <= 0 || seq <= 0) {
    return MakeError(ErrorCode::kInvalidArgument, "empty input: batch " + std::to_string(batch) + ", " +
                                                      std::to_string(seq) + " tokens per row");
  }
  if (static_cast<int64_t>(ids.size()) != batch * seq) {
    return MakeError(ErrorCode::kInvalidArgument, std::to_string(ids.size()) + " token ids is not batch " +
                                                      std::to_string(batch) + " x a whole number of tokens");
  }
  if (batch > info.max_batch) {
    return MakeError(ErrorCode::kInvalidArgument, "batch " + std::to_string(batch) +
                                                      " exceeds the plan's max_batch " + std::to_string(info.max_batch));
  }
  if (pos + seq > info.max_seq_len) {
    return MakeError(ErrorCode::kInvalidArgument,
                     std::to_string(pos) + " cached + " + std::to_string(seq) + " new tokens = " +
                         std::to_string(pos + seq) + " exceeds the plan's max_seq_len " +
                         std::to_string(info.max_seq_len) + (pos > 0 ? " (Reset() to start over)" : ""));
  }
  if (pos > 0 && batch != cached_batch) {
    return MakeError(ErrorCode::kInvalidArgument, "batch " + std::to_string(batch) + " differs from the cached "
                                                      "sequence's batch " + std::to_string(cached_batch) +
                                                      " (Reset() to start a new one)");
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= info.vocab_size) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "token id " + std::to_string(ids[i]) + " at [" + std::to_string(i / seq) + "][" +
                           std::to_string(i % seq) + "] is outside the vocabulary [0, " +
                           std::to_string(info.vocab_size) + ")");
    }
  }
  return Status::Ok();
}

Status Executor::Impl::RunSteps(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                at::Tensor* out) {
  const auto issue_start = Clock::now();
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    at::Tensor host_ids = HostIds(ids, batch, seq);
    std::vector<std::pair<int, at::Tensor>> ids_on{{-1, host_ids}};
    ForwardContext ctx;
    ctx.start_pos = pos;
    ctx.logits_last_only = last_only;
    at::Tensor hidden;
    at::Tensor logits;
    for (uint32_t i = 0; i < state->steps.size(); ++i) {
      const BlockRuntime& b = state->blocks[state->steps[i].block];
      std::optional<c10::cuda::CUDAGuard> device_guard;
      at::Device device(at::kCPU);
      if (b.device >= 0) {
        device_guard.emplace(static_cast<c10::DeviceIndex>(b.device));
        device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(b.device));
      }
      ctx.token_ids = at::Tensor();
      for (const auto& [d, t] : ids_on) {
        if (d == b.device) ctx.token_ids = t;
      }
      if (!ctx.token_ids.defined()) {
        ctx.token_ids = host_ids.to(device);
        ids_on.emplace_back(b.device, ctx.token_ids);
      }
      if (hidden.defined() && hidden.device() != device) hidden = hidden.to(device);
      BIGPLAN_RETURN_IF_ERROR(engine->BeginStep(i));
      StepWeights& w = weights[b.index];
      BIGPLAN_RETURN_IF_ERROR(w.Prepare());
      BlockKv& k = kv[b.index];
      Status s = kernels->RunBlock(b.kind, b.name, b.layer, w, ctx, k.has_kv ? &k.kv : nullptr, &hidden, &logits);
      if (!s.ok()) return WithContext(s.take_error(), "block " + b.name);
      BIGPLAN_RETURN_IF_ERROR(engine->EndStep(i));
    }
    if (!logits.defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
    at::Tensor result = last_only ? logits.narrow(1, logits.size(1) - 1, 1) : logits;
    issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issue_start).count();
    *out = result.to(at::kCPU, at::kFloat).contiguous();
  } catch (const std::exception& e) {
    return TorchError(e, "forward pass");
  }
  return Status::Ok();
}

Status Executor::Impl::RunShards(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                 at::Tensor* out) {
  const auto issue_start = Clock::now();
  Status status = Status::Ok();
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    const int n = shard_group->shards();
    const at::Tensor host_ids = HostIds(ids, batch, seq);
    std::vector<ForwardContext> ctx(n);
    std::vector<at::Tensor> logits;
    for (int s = 0; s < n; ++s) {
      c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(shard_group->device(s)));
      ctx[s].token_ids = host_ids.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(shard_group->device(s))));
      ctx[s].start_pos = pos;
      ctx[s].logits_last_only = last_only;
      ctx[s].shards = &shard_ctx[s];
    }
    status = IssueShards(ctx, -1, /*engine_steps=*/true, &logits);
    if (status.ok() && !logits[0].defined()) status = MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
    if (status.ok()) {
      const at::Tensor result = last_only ? logits[0].narrow(1, logits[0].size(1) - 1, 1) : logits[0];
      issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issue_start).count();
      *out = result.to(at::kCPU, at::kFloat).contiguous();
    }
  } catch (const std::exception& e) {
    status = TorchError(e, "forward pass");
  }
  return ShardPassStatus(std::move(status), issue_start);
}

Status Executor::Impl::IssueShards(const std::vector<ForwardContext>& ctx, int only, bool engine_steps,
                                   std::vector<at::Tensor>* logits) {
  const int n = shard_group->shards();
  std::vector<at::Tensor> hidden(n);
  logits->assign(n, at::Tensor());
  if (only >= 0) return IssueShard(ctx, only, engine_steps, &hidden[only], &(*logits)[only]);
  return OnShardThreads([&](int s) { return IssueShard(ctx, s, engine_steps, &hidden[s], &(*logits)[s]); });
}

Status Executor::Impl::OnShardThreads(const std::function<Status(int)>& issue) {
  const int n = shard_group->shards();
  std::vector<c10::cuda::CUDAStream> streams;
  for (int s = 0; s < n; ++s) {
    streams.push_back(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(shard_group->device(s))));
  }
  const bool inference = c10::InferenceMode::is_enabled();
  std::vector<std::function<Status()>> tasks;
  for (int s = 0; s < n; ++s) {
    tasks.push_back([&, s]() -> Status {
      try {
        c10::InferenceMode mode(inference);
        c10::cuda::CUDAStreamGuard guard(streams[s]);
        return issue(s);
      } catch (const std::exception& e) {
        return TorchError(e, "shard " + std::to_string(s));
      }
    });
  }
  return shard_issuers->RunAll(std::move(tasks));
}

Status Executor::Impl::IssueShard(const std::vector<ForwardContext>& ctx, int s, bool engine_steps, at::Tensor* hidden,
                                  at::Tensor* logits) {
  for (uint32_t i = 0; i < state->steps.size(); ++i) {
    const BlockRuntime& b = state->blocks[state->steps[i].block];
    if (static_cast<int>(b.shard) != s) continue;
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(b.device));
    if (engine_steps) {
      BIGPLAN_RETURN_IF_ERROR(engine->BeginStep(i));
      BIGPLAN_RETURN_IF_ERROR(weights[b.index].Prepare());
    }
    BlockKv& k = kv[b.index];
    Status status = kernels->RunBlock(b.kind, b.name, b.layer, weights[b.index], ctx[s], k.has_kv ? &k.kv : nullptr,
                                      hidden, logits);
    if (!status.ok()) return WithContext(status.take_error(), "block " + b.name + " (shard " + std::to_string(s) + ")");
    if (engine_steps) BIGPLAN_RETURN_IF_ERROR(engine->EndStep(i));
  }
  return Status::Ok();
}

Status Executor::Impl::ShardPassStatus(Status status, Clock::time_point issued) {
  if (status.ok()) return shard_group->CheckPass(issued);
  Status recovered = shard_group->Recover();
  if (!recovered.ok()) return WithContext(status.take_error(), recovered.error().message);
  return status;
}

Status Executor::Impl::ShardStaticStep(const ShardGraph& g, int64_t batch, int only, std::vector<at::Tensor>* outs) {
  const int n = shard_group->shards();
  std::vector<ForwardContext> ctx(n);
  for (int s = 0; s < n; ++s) {
    ctx[s].token_ids = g.inputs[s].narrow(0, 0, batch).view({batch, 1});
    ctx[s].position = g.inputs[s].narrow(0, batch, 1);
    ctx[s].start_pos = pos;
    ctx[s].logits_last_only = true;
    ctx[s].shards = &shard_ctx[s];
  }
  return IssueShards(ctx, only, /*engine_steps=*/false, outs);
}

Status Executor::Impl::RunShardGraphStep(const std::vector<int64_t>& ids, int64_t batch, at::Tensor* out) {
  const auto issued = Clock::now();
  *out = at::Tensor();
  const int n = shard_group->shards();
  bool warming = false;
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    at::Tensor host = at::empty({batch + 1}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    std::memcpy(host.data_ptr<int64_t>(), ids.data(), batch * sizeof(int64_t));
    host.data_ptr<int64_t>()[batch] = pos;
    auto device_of = [&](int s) { return static_cast<c10::DeviceIndex>(shard_group->device(s)); };
    auto capture = [&](int64_t b) -> Result<std::optional<ShardGraph>> {
      ShardGraph g;
      std::vector<c10::cuda::CUDAStream> side;
      for (int s = 0; s < n; ++s) {
        c10::cuda::CUDAGuard guard(device_of(s));
        g.inputs.push_back(at::empty({b + 1}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA, device_of(s))));
        g.inputs.back().copy_(host, /*non_blocking=*/true);
        side.push_back(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_of(s)));
        {
          // The warm-up below issues shard s > 0 from a thread of its own; its capture is issued from this one.
          c10::cuda::CUDAStreamGuard on_side(side.back());
          executor_internal::PrepareCaptureThread();
        }
        at::cuda::CUDAEvent to_side;
        to_side.record(c10::cuda::getCurrentCUDAStream(device_of(s)));
        to_side.block(side.back());
      }
      ClearKvTail(pos);
      Status captured;
      {
        // Warm up (every shard, interleaved: their kernels meet at the all-reduces) and capture (one shard at a
        // time: nothing runs while capturing) on side streams. Each run writes the same K/V at the same position.
        c10::cuda::CUDAMultiStreamGuard side_guard(side);
        warming = true;
        for (int w = 0; w < 2 && captured.ok(); ++w) {
          std::vector<at::Tensor> warm;
          captured = ShardStaticStep(g, b, -1, &warm);
        }
        warming = false;
        g.graphs.resize(n);
        g.outputs.resize(n);
        for (int s = 0; s < n && captured.ok(); ++s) {
          c10::cuda::CUDAGuard guard(device_of(s));
          g.graphs[s] = std::make_unique<at::cuda::CUDAGraph>();
          captured = executor_internal::CaptureGraph(
              g.graphs[s].get(),
              [&] {
                std::vector<at::Tensor> outs;
                Status st = ShardStaticStep(g, b, s, &outs);
                if (st.ok()) g.outputs[s] = outs[s];
                return st;
              },
              "the decode step of shard " + std::to_string(s));
        }
      }
      for (int s = 0; s < n; ++s) {
        at::cuda::CUDAEvent to_compute;
        to_compute.record(side[s]);
        to_compute.block(c10::cuda::getCurrentCUDAStream(device_of(s)));
      }
      if (!captured.ok()) {
        BIGPLAN_RETURN_IF_ERROR(shard_group->Recover());
        capture_error = captured.error().message;
        return std::optional<ShardGraph>();
      }
      return std::optional<ShardGraph>(std::move(g));
    };
    BIGPLAN_ASSIGN_OR_RETURN(auto found, shard_graphs.Get(batch, capture));
    if (found.graph == nullptr) return Status::Ok();
    ShardGraph& g = *found.graph;
    for (int s = 0; s < n; ++s) {
      c10::cuda::CUDAGuard guard(device_of(s));
      if (!found.captured) g.inputs[s].copy_(host, /*non_blocking=*/true);
      g.graphs[s]->replay();
    }
    issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issued).count();
    *out = g.outputs[0].to(at::kCPU, at::kFloat).contiguous();
  } catch (const std::exception& e) {
    if (warming) (void)shard_group->Recover();
    return TorchError(e, "decode step");
  }
  return shard_group->CheckPass(issued);
}

int64_t Executor::Impl::MicroBatchRows(int64_t batch, int64_t seq, int requested) const {
  const int option = requested != 0 ? requested : options.micro_batch_rows;
  if (!pipelinable || option < 0 || batch < 2) return 0;
  int64_t rows = option;
  if (option == 0) {
    // Enough rows for 512 tokens per micro-batch; doubled while that leaves more than two micro-batches per GPU
    // (fewer, larger micro-batches multiply faster and hop less; two per GPU keep the pipeline full).
    rows = (512 + seq - 1) / seq;
    const int64_t most = 2 * static_cast<int64_t>(state->cuda_devices.size());
    while ((batch + rows - 1) / rows > most && 2 * (2 * rows) <= batch) rows *= 2;
  }
  return 2 * rows <= batch ? rows : 0;
}

Status Executor::Impl::RunPipelined(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                    int64_t rows, int group_option, at::Tensor* out) {
  const auto issue_start = Clock::now();
  const std::vector<int>& devices = state->cuda_devices;
  const int64_t n = (batch + rows - 1) / rows;
  std::vector<at::Tensor> parts(n);
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    at::Tensor host_ids = HostIds(ids, batch, seq);
    // Micro-batch k's streams (one per device) are the same in every pass, so what LibTorch caches per stream
    // (RoPE tables, cuBLAS workspaces, the caching allocator's blocks) is made once. Earlier micro-batches get
    // higher stream priorities: where a GPU holds work of several micro-batches (layers dealt in groups), the
    // earliest one's kernels go first, so the next GPU gets its input as early as it can.
    while (static_cast<int64_t>(mb_streams.size()) < n) {
      const int64_t k = static_cast<int64_t>(mb_streams.size());
      std::vector<c10::cuda::CUDAStream> per_device;
      for (int d : devices) {
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(d));
        int least = 0, greatest = 0;
        C10_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
        const int priority = static_cast<int>(std::min<int64_t>(least, greatest + k));  // greatest is negative
        cudaStream_t raw = nullptr;
        C10_CUDA_CHECK(cudaStreamCreateWithPriority(&raw, cudaStreamNonBlocking, priority));
        owned_streams.emplace_back(d, raw);
        per_device.push_back(c10::cuda::getStreamFromExternal(raw, static_cast<c10::DeviceIndex>(d)));
      }
      mb_streams.push_back(std::move(per_device));
    }
    // The ids on every device (its compute stream); each micro-batch's streams start after what the compute
    // streams hold (earlier passes, these copies).
    std::vector<at::Tensor> ids_on(devices.size());
    for (size_t d = 0; d < devices.size(); ++d) {
      const auto index = static_cast<c10::DeviceIndex>(devices[d]);
      c10::cuda::CUDAGuard guard(index);
      ids_on[d] = host_ids.to(at::Device(at::kCUDA, index));
      at::cuda::CUDAEvent fork;
      fork.record(c10::cuda::getCurrentCUDAStream(index));
      for (int64_t k = 0; k < n; ++k) fork.block(mb_streams[k][d]);
    }
    // Segments: runs of consecutive steps on one device. Micro-batch k runs segment j after its own segment j - 1
    // (the hidden state hops to the next GPU by a copy ordered on micro-batch k's two streams only) and after the
    // task its GPU ran before (the schedule below).
    std::vector<uint32_t> segment_of(state->steps.size(), 0);
    for (uint32_t i = 1; i < state->steps.size(); ++i) {
      const bool same = state->blocks[state->steps[i].block].device == state->blocks[state->steps[i - 1].block].device;
      segment_of[i] = segment_of[i - 1] + (same ? 0 : 1);
    }
    const uint32_t n_segments = state->steps.empty() ? 0 : segment_of.back() + 1;
    std::vector<uint32_t> segment_begin(n_segments + 1, static_cast<uint32_t>(state->steps.size()));
    for (uint32_t i = state->steps.size(); i-- > 0;) segment_begin[segment_of[i]] = i;
    auto slot_of = [&](int device) {
      size_t slot = 0;
      while (slot < devices.size() && devices[slot] != device) ++slot;
      return slot;
    };
    std::vector<std::vector<at::cuda::CUDAEvent>> segment_done(n);
    for (auto& e : segment_done) e.resize(n_segments);
    // Segment j of micro-batch k: its steps on the current streams (micro-batch k's). `input`: the token ids
    // (j = 0) or the hidden state on the segment's device. Its output (hidden state, or the logits after the last
    // segment) into *output.
    auto run_segment = [&](int64_t k, uint32_t j, const at::Tensor& input, at::Tensor* output) -> Status {
      const int64_t r0 = k * rows;
      const int64_t nr = std::min(rows, batch - r0);
      ForwardContext ctx;
      ctx.start_pos = pos;
      ctx.logits_last_only = last_only;
      at::Tensor hidden, logits;
      if (j == 0) ctx.token_ids = input;
      else hidden = input;
      for (uint32_t i = segment_begin[j]; i < segment_begin[j + 1]; ++i) {
        const BlockRuntime& b = state->blocks[state->steps[i].block];
        BlockKv& v = kv[b.index];
        KvCache rows_kv;
        if (v.has_kv) {
          rows_kv.k = v.kv.k.narrow(0, r0, nr);
          rows_kv.v = v.kv.v.narrow(0, r0, nr);
        }
        // (Resident weights: their views are fixed at load; nothing to prepare per pass.)
        Status s = kernels->RunBlock(b.kind, b.name, b.layer, weights[b.index], ctx, v.has_kv ? &rows_kv : nullptr,
                                     &hidden, &logits);
        if (!s.ok()) return WithContext(s.take_error(), "block " + b.name + " (micro-batch " + std::to_string(k) + ")");
      }
      if (j + 1 < n_segments) {
        *output = hidden;
      } else {
        if (!logits.defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
        *output = last_only ? logits.narrow(1, logits.size(1) - 1, 1) : logits;
      }
      return Status::Ok();
    };
    // Prefill graphs: a pass from an empty cache whose shape (rows per micro-batch, tokens, last-position logits)
    // ran before replays one captured graph per micro-batch and segment (a launch per task: the host issues a pass
    // in about a millisecond instead of ~5 ms of kernel launches per micro-batch).
    const std::array<int64_t, 4> shape{batch, rows, seq, last_only ? 1 : 0};
    const bool graphs = prefill_graphs_ok && pos == 0 && prefill_shape == shape &&
                        prefill_graphs.size() == static_cast<size_t>(n * n_segments);
    // The order in which each GPU takes the (micro-batch k, segment j) tasks, one at a time: micro-batches in groups
    // of `group_option` (0: one group of them all); within a group, segment after segment, and for each segment the
    // group's micro-batches in order: key (k / group, j, k). A GPU then alternates between the micro-batches in flight
    // instead of running two at once (which slows both and delays the next GPU's input); with one segment per GPU it
    // is plain micro-batch order. With every micro-batch in flight, a GPU's next task's input was made a task or more
    // before it is needed, so the hops hide behind its work (groups of as many as there are GPUs leave each hop's
    // latency between two tasks). Tasks are issued in that order too, which keeps both the micro-batch's own order
    // and each GPU's.
    const int64_t group = group_option > 0 ? group_option : n;
    std::vector<std::array<int64_t, 3>> tasks;  // (k / group, j, k)
    for (int64_t k = 0; k < n; ++k)
      for (uint32_t j = 0; j < n_segments; ++j) tasks.push_back({k / group, j, k});
    std::sort(tasks.begin(), tasks.end());
    std::vector<std::pair<int64_t, uint32_t>> last_on(devices.size(), {-1, 0});  // each GPU's previous task
    std::vector<at::Tensor> carry(n);  // each micro-batch's last segment output
    for (const auto& [unused_group, j64, k] : tasks) {
      const uint32_t j = static_cast<uint32_t>(j64);
      const int64_t r0 = k * rows;
      const int64_t nr = std::min(rows, batch - r0);
      c10::cuda::CUDAMultiStreamGuard mb_guard(mb_streams[k]);
      const int device = state->blocks[state->steps[segment_begin[j]].block].device;
      const size_t slot = slot_of(device);
      if (slot == devices.size()) return MakeError(ErrorCode::kInternal, "a block is not on a GPU");
      const auto index = static_cast<c10::DeviceIndex>(device);
      c10::cuda::CUDAGuard device_guard(index);
      // The input first: its hop from the previous GPU is ordered after the segment that made it (on micro-batch k's
      // streams) but not after this GPU's previous task, so it runs while that task computes.
      const at::Tensor input = j == 0 ? ids_on[slot].narrow(0, r0, nr) : carry[k];
      at::Tensor here;
      if (graphs) {
        PrefillGraph& g = prefill_graphs[k * n_segments + j];
        g.input.copy_(input, /*non_blocking=*/true);  // across GPUs: ordered on micro-batch k's two streams
      } else {
        here = input.device() == at::Device(at::kCUDA, index) ? input : input.to(at::Device(at::kCUDA, index));
      }
      if (last_on[slot].first >= 0) segment_done[last_on[slot].first][last_on[slot].second].block(mb_streams[k][slot]);
      last_on[slot] = {k, j};
      if (graphs) {
        PrefillGraph& g = prefill_graphs[k * n_segments + j];
        g.graph->replay();
        carry[k] = g.output;
      } else {
        BIGPLAN_RETURN_IF_ERROR(run_segment(k, j, here, &carry[k]));
      }
      segment_done[k][j].record(mb_streams[k][slot]);
    }
    for (int64_t k = 0; k < n; ++k) parts[k] = carry[k];
    // Every compute stream waits for every micro-batch's stream on its device: later work is ordered after them.
    for (size_t d = 0; d < devices.size(); ++d) {
      const auto index = static_cast<c10::DeviceIndex>(devices[d]);
      c10::cuda::CUDAGuard guard(index);
      for (int64_t k = 0; k < n; ++k) {
        at::cuda::CUDAEvent join;
        join.record(mb_streams[k][d]);
        join.block(c10::cuda::getCurrentCUDAStream(index));
      }
    }
    issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issue_start).count();
    {
      c10::cuda::CUDAGuard guard(parts[0].device().index());
      *out = at::cat(parts, 0).to(at::kCPU, at::kFloat).contiguous();
    }
    if (graphs) {
      ++graph_prefills;
    } else if (prefill_graphs_ok && pos == 0) {
      // This shape ran eagerly (which made what the streams cache: RoPE tables, cuBLAS workspaces): capture its
      // graphs for the next pass of the same shape. One shape's graphs are kept (a new shape replaces them); a
      // failed capture turns prefill graphs off (Stats::graph_capture_error).
      prefill_graphs.clear();
      prefill_shape = shape;
      for (int d : devices) {
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(d));
        c10::cuda::device_synchronize();
      }
      Status captured = Status::Ok();
      for (int64_t k = 0; k < n && captured.ok(); ++k) {
        const int64_t nr = std::min(rows, batch - k * rows);
        c10::cuda::CUDAMultiStreamGuard mb_guard(mb_streams[k]);
        at::Tensor carry;
        for (uint32_t j = 0; j < n_segments && captured.ok(); ++j) {
          const auto index = static_cast<c10::DeviceIndex>(state->blocks[state->steps[segment_begin[j]].block].device);
          c10::cuda::CUDAGuard device_guard(index);
          const auto on = at::TensorOptions().device(at::kCUDA, index);
          PrefillGraph g;
          g.input = j == 0 ? at::zeros({nr, seq}, on.dtype(at::kLong)) : at::empty_like(carry, on);
          g.graph = std::make_unique<at::cuda::CUDAGraph>();
          captured = executor_internal::CaptureGraph(
              g.graph.get(), [&] { return run_segment(k, j, g.input, &g.output); }, "a prefill");
          carry = g.output;
          prefill_graphs.push_back(std::move(g));
        }
      }
      if (!captured.ok()) {
        prefill_graphs.clear();
        prefill_graphs_ok = false;
        capture_error = captured.error().message;
      }
    }
  } catch (const std::exception& e) {
    return TorchError(e, "forward pass (micro-batches)");
  }
  return Status::Ok();
}

Status Executor::Impl::RunBucketed(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                   at::Tensor* out) {
  const auto issue_start = Clock::now();
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    const auto index = static_cast<c10::DeviceIndex>(state->cuda_devices.front());
    c10::cuda::CUDAGuard device_guard(index);
    const auto on_device = at::TensorOptions().device(at::kCUDA, index);
    const int64_t bucket = bucket_graphs.Bucket(seq, state->info.max_seq_len);
    // The rows padded at their ends with token 0 (pinned, so the copy to the device is asynchronous).
    at::Tensor host_ids = at::zeros({batch, bucket}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    for (int64_t r = 0; r < batch; ++r) {
      std::memcpy(host_ids.data_ptr<int64_t>() + r * bucket, ids.data() + r * seq, seq * sizeof(int64_t));
    }
    // The steps before the lm_head, from `token_ids` on the device; the hidden state into *hidden.
    auto body = [&](const at::Tensor& token_ids, at::Tensor* hidden) -> Status {
      ForwardContext ctx;
      ctx.start_pos = 0;
      ctx.token_ids = token_ids;
      at::Tensor unused;
      for (uint32_t i = 0; i < head_step; ++i) {
        const BlockRuntime& b = state->blocks[state->steps[i].block];
        BlockKv& k = kv[b.index];
        Status s = kernels->RunBlock(b.kind, b.name, b.layer, weights[b.index], ctx, k.has_kv ? &k.kv : nullptr,
                                     hidden, &unused);
        if (!s.ok()) return WithContext(s.take_error(), "block " + b.name);
      }
      return Status::Ok();
    };
    at::Tensor hidden;
    if (BucketGraph* g = bucket_graphs.Find(batch, bucket); g != nullptr) {
      g->ids.copy_(host_ids, /*non_blocking=*/true);
      g->graph->replay();
      hidden = g->hidden;
      ++graph_prefills;
    } else if (bucket_graphs.CountEager(batch, bucket)) {
      // The shape's second pass: as GraphDecoder does, on a side stream (non-blocking, from LibTorch's pool), run
      // it (this pass's result; it also makes what that stream caches: cuBLAS workspaces) and capture it for the
      // next ones (the capture runs nothing).
      BucketGraph g;
      g.ids = at::empty({batch, bucket}, on_device.dtype(at::kLong));
      g.ids.copy_(host_ids, /*non_blocking=*/true);
      const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(index);
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
      at::cuda::CUDAEvent to_side, to_compute;
      to_side.record(compute);
      to_side.block(side);
      Status captured = Status::Ok();
      {
        c10::cuda::CUDAStreamGuard side_guard(side);
        BIGPLAN_RETURN_IF_ERROR(body(g.ids, &hidden));
        g.graph = std::make_unique<at::cuda::CUDAGraph>();
        captured = executor_internal::CaptureGraph(g.graph.get(), [&] { return body(g.ids, &g.hidden); }, "a prefill");
      }
      to_compute.record(side);
      to_compute.block(compute);
      // (The result, made on the side stream, is read on the compute stream: its memory waits for both.)
      c10::cuda::CUDACachingAllocator::recordStream(hidden.storage().data_ptr(), compute);
      if (captured.ok()) {
        bucket_graphs.Put(batch, bucket, std::move(g));
      } else {
        bucket_graphs.Disable();
        capture_error = captured.error().message;
      }
    } else {
      BIGPLAN_RETURN_IF_ERROR(body(host_ids.to(on_device.dtype(at::kLong), /*non_blocking=*/true), &hidden));
    }
    // The lm_head on the real positions.
    ForwardContext ctx;
    ctx.start_pos = 0;
    ctx.logits_last_only = last_only;
    at::Tensor h = last_only ? hidden.narrow(1, seq - 1, 1) : hidden.narrow(1, 0, seq);
    at::Tensor logits;
    for (uint32_t i = head_step; i < state->steps.size(); ++i) {
      const BlockRuntime& b = state->blocks[state->steps[i].block];
      Status s = kernels->RunBlock(b.kind, b.name, b.layer, weights[b.index], ctx, nullptr, &h, &logits);
      if (!s.ok()) return WithContext(s.take_error(), "block " + b.name);
    }
    if (!logits.defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
    issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issue_start).count();
    *out = logits.to(at::kCPU, at::kFloat).contiguous();
  } catch (const std::exception& e) {
    return TorchError(e, "forward pass (prefill graph)");
  }
  return Status::Ok();
}

Status Executor::Impl::RunRanked(const std::vector<int64_t>& ids, int64_t batch, int64_t seq, bool last_only,
                                 at::Tensor* out) {
  const int me = ranks->rank();
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    const schema::Plan& plan = state->plan->plan();
    const at::ScalarType dtype = executor_internal::ToScalarType(plan.exec_dtype());
    int local = -1;  // this rank's compute device (-1: the CPU)
    for (const BlockRuntime& b : state->blocks) {
      if (!b.remote) local = b.device;
    }
    const at::Device device = local >= 0 ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local)) : at::Device(at::kCPU);
    std::optional<c10::cuda::CUDAGuard> device_guard;
    if (local >= 0) device_guard.emplace(static_cast<c10::DeviceIndex>(local));
    at::Tensor host_ids = HostIds(ids, batch, seq);
    ForwardContext ctx;
    ctx.token_ids = host_ids.to(device);
    ctx.start_pos = pos;
    ctx.logits_last_only = last_only;
    at::Tensor hidden, logits;
    // A tensor-parallel plan: this rank's shard of every block, in order; the shards meet at the all-reduces (no
    // hidden state travels), and every rank ends with the whole logits.
    const bool tensor_parallel = plan.tensor_parallel() > 0;
    if (tensor_parallel) ctx.shards = &shard_ctx[me];
    // A decode step (one token per row after cached ones) replays this rank's graphs when every one is on.
    bool graphs = seq == 1 && pos > 0 && !rank_segments.empty();
    for (const GraphSegment& g : rank_segments) graphs = graphs && g.graphs.enabled();
    rank_graph_step = false;
    int prev = -1;           // the rank of the step before
    size_t local_run = 0;    // index of this rank's current run of steps (rank_segments)
    bool whole_step_replayed = false;  // (a tensor-parallel rank's graph holds its whole step)
    if (tensor_parallel && graphs) {
      // This rank's shard of the whole step from one graph.
      GraphSegment& seg = rank_segments.front();
      auto step = [this, &seg](const at::Tensor& inputs, int64_t rows, at::Tensor* o) {
        return StaticStep(seg, inputs, rows, o);
      };
      BIGPLAN_RETURN_IF_ERROR(seg.graphs.Step(ids, batch, pos, engine->compute_stream(local),
                                              [this](int64_t at) { ClearKvTail(at); }, step, &logits));
      if (logits.defined()) {
        rank_graph_step = true;
        whole_step_replayed = true;
      } else {
        // The capture failed: this rank decodes eagerly from now on (its all-reduces meet the other ranks' all
        // the same).
        capture_error = seg.graphs.capture_error();
        rank_segments.clear();
      }
    }
    for (uint32_t i = 0; i < state->steps.size() && !whole_step_replayed;) {
      const BlockRuntime& b = state->blocks[state->steps[i].block];
      const int owner = b.plan_device;
      if (b.remote && tensor_parallel) {
        ++i;
        continue;
      }
      if (b.remote) {
        if (prev == me && owner != me) BIGPLAN_RETURN_IF_ERROR(ranks->Send(hidden, owner));
        prev = owner;
        ++i;
        continue;
      }
      if (prev >= 0 && prev != me) {
        hidden = at::empty({batch, seq, static_cast<int64_t>(plan.config()->hidden_size())},
                           at::TensorOptions().dtype(dtype).device(device));
        BIGPLAN_RETURN_IF_ERROR(ranks->Recv(&hidden, prev));
      }
      prev = me;
      uint32_t end = i;  // this rank's run of steps [i, end)
      while (end < state->steps.size() && !state->blocks[state->steps[end].block].remote) ++end;
      if (tensor_parallel) end = i + 1;  // (the other shards' steps lie between this rank's)
      bool replayed = false;
      if (graphs && local_run < rank_segments.size() && rank_segments[local_run].first == i) {
        GraphSegment& seg = rank_segments[local_run];
        if (seg.hidden_in.defined()) seg.hidden_in.narrow(0, 0, batch).copy_(hidden, /*non_blocking=*/true);
        auto step = [this, &seg](const at::Tensor& inputs, int64_t rows, at::Tensor* o) {
          return StaticStep(seg, inputs, rows, o);
        };
        at::Tensor carry;
        BIGPLAN_RETURN_IF_ERROR(seg.graphs.Step(ids, batch, pos, engine->compute_stream(local),
                                                [this](int64_t at) { ClearKvTail(at); }, step, &carry));
        if (carry.defined()) {
          (end == state->steps.size() ? logits : hidden) = carry;
          replayed = true;
          rank_graph_step = true;
        } else {
          // The capture failed: this rank decodes eagerly from now on.
          capture_error = seg.graphs.capture_error();
          rank_segments.clear();
          graphs = false;
        }
      }
      if (!replayed) {
        for (uint32_t s = i; s < end; ++s) {
          const BlockRuntime& sb = state->blocks[state->steps[s].block];
          BIGPLAN_RETURN_IF_ERROR(engine->BeginStep(s));
          BlockKv& k = kv[sb.index];
          Status st = kernels->RunBlock(sb.kind, sb.name, sb.layer, weights[sb.index], ctx, k.has_kv ? &k.kv : nullptr,
                                        &hidden, &logits);
          if (!st.ok()) return WithContext(st.take_error(), "block " + sb.name);
          BIGPLAN_RETURN_IF_ERROR(engine->EndStep(s));
        }
      }
      ++local_run;
      i = end;
    }
    // The logits: from the rank that computes the last step to rank 0.
    const int head =
        tensor_parallel || state->steps.empty() ? me : state->blocks[state->steps.back().block].plan_device;
    const int64_t vocab = state->info.vocab_size;
    at::Tensor result;
    if (head == me) {
      if (!logits.defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
      result = (last_only ? logits.narrow(1, logits.size(1) - 1, 1) : logits).to(at::kFloat).contiguous();
      if (me != 0 && !tensor_parallel) BIGPLAN_RETURN_IF_ERROR(ranks->Send(result, 0));
    } else if (me == 0) {
      result = at::empty({batch, last_only ? 1 : seq, vocab}, at::TensorOptions().dtype(at::kFloat).device(device));
      BIGPLAN_RETURN_IF_ERROR(ranks->Recv(&result, head));
    }
    if (me == 0) *out = result.to(at::kCPU).contiguous();
    if (local >= 0) c10::cuda::getCurrentCUDAStream().synchronize();
  } catch (const std::exception& e) {
    return TorchError(e, "forward pass (rank " + std::to_string(me) + ")");
  }
  return Status::Ok();
}

Status Executor::Impl::StaticStep(const GraphSegment& seg, const at::Tensor& inputs, int64_t batch, at::Tensor* out) {
  ForwardContext ctx;
  ctx.token_ids = inputs.narrow(0, 0, batch).view({batch, 1});
  ctx.position = inputs.narrow(0, batch, 1);
  ctx.start_pos = pos;
  ctx.logits_last_only = true;
  // A tensor-parallel plan's rank: its shard of every block (the others' are remote).
  const bool rank_shards = ranks != nullptr && state->plan->plan().tensor_parallel() > 0;
  if (rank_shards) ctx.shards = &shard_ctx[ranks->rank()];
  at::Tensor hidden = seg.hidden_in.defined() ? seg.hidden_in.narrow(0, 0, batch) : at::Tensor();
  at::Tensor logits;
  if (streamed_graphs) {
    const int device = state->blocks[state->steps[seg.first].block].device;
    BIGPLAN_RETURN_IF_ERROR(
        engine->BeginInline(c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream()));
  }
  Status status = Status::Ok();
  for (uint32_t i = seg.first; i < seg.end && status.ok(); ++i) {
    const BlockRuntime& b = state->blocks[state->steps[i].block];
    if (rank_shards && b.remote) continue;
    BlockKv& k = kv[b.index];
    if (streamed_graphs) {
      status = engine->BeginStep(i);
      if (status.ok()) status = weights[b.index].Prepare();
      if (!status.ok()) break;
    }
    status = kernels->RunBlock(b.kind, b.name, b.layer, weights[b.index], ctx, k.has_kv ? &k.kv : nullptr, &hidden,
                               &logits);
    if (!status.ok()) status = WithContext(status.take_error(), "block " + b.name);
    if (status.ok() && streamed_graphs) status = engine->EndStep(i);
  }
  if (streamed_graphs) {
    Status end = engine->EndInline();
    if (status.ok()) status = std::move(end);
  }
  BIGPLAN_RETURN_IF_ERROR(status);
  *out = seg.end == state->steps.size() ? logits : hidden;
  if (!out->defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
  return Status::Ok();
}

Status Executor::Impl::RunGraphStep(const std::vector<int64_t>& ids, int64_t batch, at::Tensor* out) {
  const auto issue_start = Clock::now();
  auto clear_kv_tail = [this](int64_t at) { ClearKvTail(at); };
  *out = at::Tensor();
  try {
    c10::InferenceMode inference;
    // Every device's current stream is its compute stream, so the hidden state's copy between devices is ordered
    // after the previous segment's replay and before the next one's (LibTorch orders cross-device copies with both
    // devices' current streams).
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    at::Tensor carry;
    for (GraphSegment& seg : segments) {
      const int device = seg.graphs.device();
      if (seg.hidden_in.defined()) {
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
        seg.hidden_in.narrow(0, 0, batch).copy_(carry, /*non_blocking=*/true);
      }
      auto step = [this, &seg](const at::Tensor& inputs, int64_t b, at::Tensor* o) {
        return StaticStep(seg, inputs, b, o);
      };
      // A streamed step's graph copies into ring bytes the copy streams may still be filling (a run-ahead).
      if (streamed_graphs) BIGPLAN_RETURN_IF_ERROR(engine->Quiesce(engine->compute_stream(device)));
      BIGPLAN_RETURN_IF_ERROR(seg.graphs.Step(ids, batch, pos, engine->compute_stream(device), clear_kv_tail, step,
                                              &carry));
      if (!carry.defined()) {
        // A capture failed (or graphs were off): no segment replays from now on; this step runs eagerly.
        for (GraphSegment& s : segments) {
          if (!s.graphs.capture_error().empty()) capture_error = s.graphs.capture_error();
        }
        segments.clear();
        return Status::Ok();
      }
    }
    issue_ms = std::chrono::duration<double, std::milli>(Clock::now() - issue_start).count();
    *out = carry.to(at::kCPU, at::kFloat).contiguous();
  } catch (const std::exception& e) {
    return TorchError(e, "decode step");
  }
  return Status::Ok();
}

Result<at::Tensor> Executor::Impl::RunForward(const std::vector<int64_t>& ids, int64_t batch, int64_t seq,
                                              bool last_only, int micro_batch_rows, int micro_batch_group) {
  BIGPLAN_RETURN_IF_ERROR(CheckInput(ids, batch, seq));
  const auto t0 = Clock::now();
  at::Tensor out;
  if (seq == 1 && pos > 0 && (GraphsEnabled() || (shard_group != nullptr && shard_graphs.enabled()))) {
    Status step = shard_group != nullptr ? RunShardGraphStep(ids, batch, &out) : RunGraphStep(ids, batch, &out);
    if (step.ok() && out.defined()) {
      pos += seq;
      cached_batch = batch;
      ForwardTimings timings;
      timings.wall_start = t0;
      Account(timings, batch, seq, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      std::lock_guard<std::mutex> lock(stats_mu);
      ++stats.graph_steps;
      stats.last_issue_ms = issue_ms;
      return out;
    }
    if (!step.ok()) {
      pos = 0;
      cached_batch = 0;
      return step.take_error();
    }
    // The capture failed: graphs are off now; run the step eagerly.
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.graph_capture_error = capture_error;
  }
  const bool host_pass = host != nullptr && batch * seq <= static_cast<int64_t>(state->host_max_tokens);
  for (const auto& e : experts) e->BeginForward(batch * seq);
  const int64_t mb_rows = MicroBatchRows(batch, seq, micro_batch_rows);
  const bool bucketed = mb_rows == 0 && ranks == nullptr && bucket_graphs.enabled() && pos == 0 && seq > 1 &&
                        batch * bucket_graphs.Bucket(seq, state->info.max_seq_len) <= arch::kPrefillGraphTokens;
  Status run = engine->BeginForward(host_pass);
  if (run.ok()) {
    if (ranks != nullptr) {
      // Every other rank computes its part of this pass: the command carries what it needs.
      std::vector<int64_t> command{kForward, batch, seq, pos, last_only ? 1 : 0};
      command.insert(command.end(), ids.begin(), ids.end());
      run = ranks->Broadcast(command);
      if (run.ok()) run = RunRanked(ids, batch, seq, last_only, &out);
      std::lock_guard<std::mutex> lock(stats_mu);
      if (run.ok() && rank_graph_step) ++stats.graph_steps;
      if (!capture_error.empty()) stats.graph_capture_error = capture_error;
    } else if (mb_rows > 0) {
      run = RunPipelined(ids, batch, seq, last_only, mb_rows,
                         micro_batch_group != 0 ? micro_batch_group : options.micro_batch_group, &out);
    } else if (bucketed) {
      run = RunBucketed(ids, batch, seq, last_only, &out);
    } else if (shard_group != nullptr) {
      run = RunShards(ids, batch, seq, last_only, &out);
    } else {
      run = RunSteps(ids, batch, seq, last_only, &out);
    }
  }
  ForwardTimings timings;
  Status end = engine->EndForward(run.ok() ? &timings : nullptr);
  for (const auto& e : experts) {
    Status experts_end = e->EndForward();
    if (end.ok()) end = std::move(experts_end);
  }
  // No per-block events: the blocks ran once per micro-batch, or as one graph (or its eager form) of padded rows.
  if (mb_rows > 0 || bucketed) timings.steps.clear();
  // A shard that shrank under us was read as zeros (formats/guarded_copy.h): this pass's results are invalid.
  for (size_t i = 0; run.ok() && end.ok() && i < state->shards.size(); ++i) end = state->shards[i]->CheckIntact();
  if (!run.ok() || !end.ok()) {
    // The KV cache may hold part of this pass: start over.
    pos = 0;
    cached_batch = 0;
    return run.ok() ? end.take_error() : run.take_error();
  }
  pos += seq;
  cached_batch = batch;
  Account(timings, batch, seq, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  {
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.last_micro_batches = mb_rows > 0 ? static_cast<uint32_t>((batch + mb_rows - 1) / mb_rows) : 0;
    stats.last_issue_ms = issue_ms;
    stats.graph_prefills = graph_prefills;
    if (!prefill_graphs_ok && !capture_error.empty()) stats.graph_capture_error = capture_error;
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.expert_grouped_prompt = kernels->GroupedPromptExperts();
  }
  for (const auto& engine : experts) {
    // (Taking the events first completes the stats that come from the GPU's timeline.)
    std::vector<executor_internal::ExpertEngine::Event> events;
    if (options.record_trace) events = engine->TakeEvents();
    const executor_internal::ExpertEngine::Stats& es = engine->stats();
    std::lock_guard<std::mutex> lock(stats_mu);
    stats.expert_resident += es.resident;
    stats.expert_copied += es.copied;
    stats.expert_disk += es.disk;
    stats.expert_host += es.host;
    stats.expert_copied_bytes += es.copied_bytes;
    stats.expert_host_bytes += es.host_bytes;
    stats.expert_router_wait_ms += es.wait_router_us / 1e3;
    stats.expert_prefetched += es.prefetched;
    stats.expert_split += es.split;
    stats.expert_prefetch_hits += es.prefetch_hits;
    stats.expert_prefetch_wasted_bytes += es.prefetch_wasted_bytes;
    stats.expert_copy_busy_ms += es.copy_busy_us / 1e3;
    stats.expert_copy_idle_ms += es.copy_idle_us / 1e3;
    stats.expert_host_wait_ms += es.host_wait_us / 1e3;
    stats.expert_host_busy_ms += es.host_busy_us / 1e3;
    stats.expert_host_copy_ms += es.host_copy_us / 1e3;
    stats.expert_share = es.share;
    for (executor_internal::ExpertEngine::Event& e : events) {
      executor_internal::TraceEvent t;
      t.name = std::move(e.name);
      t.track = std::move(e.track);
      t.start_us = std::chrono::duration<double, std::micro>(e.start - created).count();
      t.dur_us = e.dur_us;
      t.args = std::move(e.args);
      trace.Add(std::move(t));
    }
  }
  return out;
}

namespace {

// A model the plan describes that the kernels refuse (bad shapes, rope parameters) is a problem of the plan
// file, not of the caller's arguments: kCorrupt, naming the file.
Error PlanContentError(Error e, const std::string& plan_path) {
  if (e.code == ErrorCode::kInvalidArgument) {
    e.code = ErrorCode::kCorrupt;
    e.message = plan_path + ": " + e.message;
  }
  return e;
}

}  // namespace

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() = default;

Result<std::unique_ptr<Executor>> Executor::Load(const std::string& plan_path, const std::string& checkpoint_dir,
                                                 const ExecutorOptions& options) {
  const auto t0 = Clock::now();
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->created = t0;
  try {
    if (options.cpu_threads > 0) at::set_num_threads(options.cpu_threads);
  } catch (const std::exception& e) {
    return TorchError(e, "setting CPU threads");
  }
  // The plan is read and verified once (schema/plan_io); an architecture without kernels fails here, before any
  // weights are read.
  BIGPLAN_ASSIGN_OR_RETURN(PlanFile plan, PlanFile::Load(plan_path));
  ModelSpec spec = executor_internal::SpecFromPlan(plan.plan());
  spec.fused_kernels = options.fused_kernels;
  spec.grouped_prompt_experts = options.grouped_prompt_experts;
  const uint32_t shards = plan.plan().tensor_parallel();
  if (shards > 0) {
    // A tensor-parallel plan's kernels compute one shard's heads and MLP rows (arch::ShardConfig).
    spec.num_heads /= shards;
    spec.num_kv_heads /= shards;
    spec.intermediate_size /= shards;
    spec.moe_intermediate_size /= shards;
    spec.shared_expert_intermediate_size /= shards;
  }
  auto kernels = MakeModelKernels(spec);
  if (!kernels.ok()) return PlanContentError(kernels.take_error(), plan_path);
  impl->kernels = std::move(*kernels);
  const bool cpu_mode = options.force_cpu || executor_internal::CudaDeviceCount() == 0;
  if (shards > 0 && options.world_size == 0 && cpu_mode) {
    return MakeError(ErrorCode::kUnsupported,
                     plan_path + ": the plan splits every block over " + std::to_string(shards) +
                         " GPUs (tensor parallel), which run in one process on those GPUs or as one rank per shard "
                         "(ExecutorOptions::world_size), not in one process on the CPU: plan for this setup (e.g. "
                         "plan --auto-candidates BPCEIS)");
  }
  if (shards > 0 && options.world_size != 0 && options.world_size != static_cast<int>(shards)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     plan_path + ": the plan splits every block over " + std::to_string(shards) +
                         " GPUs (tensor parallel): it runs as " + std::to_string(shards) + " ranks (rank r computes "
                         "shard r), not " + std::to_string(options.world_size));
  }
  executor_internal::LoadOptions load{.cpu_mode = cpu_mode, .progress = options.progress};
  if (options.world_size != 0) {
    if (options.world_size < 2 || options.rank < 0 || options.rank >= options.world_size) {
      return MakeError(ErrorCode::kInvalidArgument, "rank " + std::to_string(options.rank) + " of world size " +
                                                        std::to_string(options.world_size) +
                                                        ": a world of ranks has at least 2, and 0 <= rank < world size");
    }
    // Rank r computes the plan's cuda:r; every block must be on one of the world's devices.
    for (const schema::Block* b : *plan.plan().blocks()) {
      if (b->device() >= options.world_size) {
        return MakeError(ErrorCode::kInvalidArgument,
                         plan_path + ": block " + b->name()->str() + " is on cuda:" + std::to_string(b->device()) +
                             " but the world has " + std::to_string(options.world_size) +
                             " ranks (rank r computes the plan's cuda:r)");
      }
    }
    load.rank_device = options.rank;
    const int visible = cpu_mode ? 0 : executor_internal::CudaDeviceCount();
    load.local_device = options.local_device >= 0 ? options.local_device : (visible > options.rank ? options.rank : 0);
  }
  BIGPLAN_ASSIGN_OR_RETURN(impl->state,
                           executor_internal::LoadModelState(std::move(plan), plan_path, checkpoint_dir, load));
  BIGPLAN_ASSIGN_OR_RETURN(impl->engine,
                           StreamEngine::Create(impl->state.get(), {.disk_workers = options.disk_workers,
                                                                    .timing = true,
                                                                    .disk_direct_io = options.disk_direct_io}));
  impl->state->info.disk_read_mode = impl->engine->disk_read_mode();
  if (options.host_compute) {
    auto host = executor_internal::HostProducts::Create(*impl->state, options.host_threads);
    if (!host.ok()) return PlanContentError(host.take_error(), plan_path);
    impl->host = std::move(*host);
  }
  if (impl->host != nullptr) {
    ModelInfo& info = impl->state->info;
    info.host_max_tokens = impl->state->host_max_tokens;
    info.host_threads = impl->host->threads();
    for (const auto& b : impl->state->blocks)
      for (const auto& w : b.weights)
        if (w.host_row_begin >= 0) info.host_bytes += static_cast<uint64_t>(w.rows - w.host_row_begin) * w.row_bytes();
  }
  for (size_t ring = 0; ring < impl->state->expert_rings.size(); ++ring) {
    auto experts = executor_internal::ExpertEngine::Create(
        *impl->state, ring, options.host_threads, options.host_compute, options.expert_prefetch,
        options.expert_split_rows < 0 ? executor_internal::ExpertEngine::kSplitRows : options.expert_split_rows,
        options.expert_split_min_bytes < 0 ? executor_internal::ExpertEngine::kSplitMinBytes
                                           : static_cast<uint64_t>(options.expert_split_min_bytes),
        options.host_spin_us, options.adapt_expert_share);
    if (!experts.ok()) return PlanContentError(experts.take_error(), plan_path);
    if (*experts == nullptr) continue;
    (*experts)->SetRecording(options.record_trace);
    impl->experts.push_back(std::move(*experts));
  }
  for (uint32_t b = 0; b < impl->state->blocks.size(); ++b) {
    const BlockRuntime& block = impl->state->blocks[b];
    executor_internal::ExpertEngine* experts = impl->ExpertsFor(block);
    if (experts == nullptr && !impl->state->cpu_mode) {
      for (const auto& w : block.weights) {
        if (w.routed) {
          return PlanContentError(MakeError(ErrorCode::kInvalidArgument,
                                            block.name + " has routed experts but the plan has no expert ring on cuda:" +
                                                std::to_string(block.device)),
                                  plan_path);
        }
      }
    }
    auto w = StepWeights::Make(impl->engine.get(), *impl->state, b, impl->host.get(), experts);
    if (!w.ok()) return PlanContentError(w.take_error(), plan_path);
    impl->weights.push_back(std::move(*w));
  }
  auto kv = executor_internal::MakeKvViews(*impl->state);
  if (!kv.ok()) return PlanContentError(kv.take_error(), plan_path);
  impl->kv = std::move(*kv);
  if (shards > 0 && options.world_size == 0) {
    // The shards' GPUs in shard order, and each shard's context for the kernels.
    std::vector<int> devices(shards, -1);
    for (const BlockRuntime& b : impl->state->blocks) devices[b.shard] = b.device;
    BIGPLAN_ASSIGN_OR_RETURN(impl->shard_group, executor_internal::ShardGroup::Create(devices));
    impl->shard_issuers = std::make_unique<executor_internal::WorkerPool>(static_cast<int>(shards) - 1);
    impl->shard_ctx.resize(shards);
    for (uint32_t s = 0; s < shards; ++s) {
      executor_internal::ShardGroup* group = impl->shard_group.get();
      impl->shard_ctx[s] = ShardContext(impl->state->info.vocab_size, s, shards, [group, s](const at::Tensor& x) {
        return group->AllReduce(static_cast<int>(s), x);
      });
    }
  }
  // A block whose routed experts are read on the device when chosen (BlockWeights::ResidentExperts, decode batches
  // of at most fused_ops::kMoeMaxTokens rows), or that has none: its decode step waits for nothing on the host.
  auto device_routed = [&](const BlockRuntime& b) {
    const size_t first = static_cast<size_t>(arch::ExpertSlot(arch::Slot::kExpertGate, 0));
    const bool has_experts = first < b.slots.size() && b.slots[first] >= 0;
    return !has_experts || (impl->weights[b.index].ResidentExperts() != nullptr &&
                            impl->state->info.max_batch <= fused_ops::kMoeMaxTokens);
  };
  if (shards > 0 && options.world_size == 0) {
    // Decode graphs when every shard rests on its GPU (a streamed shard's steps wait for its copies: eager) and,
    // for mixture-of-experts layers, reads its rows of the chosen experts on the device.
    bool device_steps = true;
    for (const BlockRuntime& b : impl->state->blocks) device_steps &= device_routed(b);
    impl->shard_graphs = executor_internal::GraphCache<Impl::ShardGraph>(
        options.cuda_graphs && impl->state->streams.empty() && device_steps &&
        impl->kernels->GraphDecode(impl->state->info.max_seq_len));
  }
  if (shards == 0 && options.cuda_graphs && !cpu_mode && !impl->state->cuda_devices.empty() &&
      impl->state->streams.empty() && impl->kernels->GraphDecode(impl->state->info.max_seq_len)) {
    bool resident = true;
    for (const BlockRuntime& b : impl->state->blocks) {
      resident &= b.device >= 0 && b.tier == schema::Tier::Gpu && device_routed(b);
    }
    // One segment per run of consecutive steps on one GPU; a later segment takes the hidden state from the one
    // before it through a buffer of its own (its graph's static input).
    const auto& steps = impl->state->steps;
    for (uint32_t i = 0; resident && i < steps.size(); ++i) {
      const int device = impl->state->blocks[steps[i].block].device;
      if (impl->segments.empty() || impl->segments.back().graphs.device() != device) {
        Impl::GraphSegment seg{GraphDecoder(device), i, i, at::Tensor()};
        if (!impl->segments.empty()) seg.hidden_in = impl->DecodeHiddenBuffer(device);
        impl->segments.push_back(std::move(seg));
      }
      impl->segments.back().end = i + 1;
    }
    if (!resident) impl->segments.clear();
  }
  if (options.cuda_graphs && options.world_size == 0 && !cpu_mode && impl->state->cuda_devices.size() == 1 &&
      !impl->state->streams.empty() && impl->engine->CanInline() && impl->host == nullptr &&
      impl->experts.empty() && impl->kernels->StaticDecode(impl->state->info.max_seq_len)) {
    // One GPU streaming pinned units: the decode step is captured with its copies (StreamEngine inline passes).
    bool on_gpu = true;
    for (const BlockRuntime& b : impl->state->blocks) on_gpu &= b.device == impl->state->cuda_devices.front();
    if (on_gpu && !impl->state->steps.empty()) {
      impl->segments.clear();
      impl->segments.push_back(Impl::GraphSegment{GraphDecoder(impl->state->cuda_devices.front()), 0,
                                                  static_cast<uint32_t>(impl->state->steps.size()), at::Tensor()});
      impl->streamed_graphs = true;
    }
  }
  {
    bool resident = !cpu_mode && impl->host == nullptr && impl->experts.empty() && shards == 0 &&
                    impl->state->streams.empty() && impl->state->cuda_devices.size() >= 2;
    for (const BlockRuntime& b : impl->state->blocks) resident &= b.device >= 0 && b.tier == schema::Tier::Gpu;
    impl->pipelinable = resident;
    impl->prefill_graphs_ok = resident && options.cuda_graphs &&
                              impl->kernels->StaticDecode(impl->state->info.max_seq_len);
  }
  if (options.world_size == 0 && options.cuda_graphs && options.prefill_graph_shapes > 0 && !cpu_mode &&
      impl->host == nullptr && impl->experts.empty() && impl->state->streams.empty() &&
      impl->state->cuda_devices.size() == 1 && impl->kernels->StaticDecode(impl->state->info.max_seq_len)) {
    // One GPU, every block resident, and the plan's steps end with its lm_head (which runs outside the graph).
    const auto& steps = impl->state->steps;
    bool resident = true;
    for (const BlockRuntime& b : impl->state->blocks) resident &= b.device >= 0 && b.tier == schema::Tier::Gpu;
    uint32_t head = static_cast<uint32_t>(steps.size());
    while (head > 0 && impl->state->blocks[steps[head - 1].block].kind == arch::BlockKind::kLmHead) --head;
    if (resident && head > 0 && head < steps.size()) {
      impl->head_step = head;
      impl->bucket_graphs = executor_internal::PrefillGraphCache<Impl::BucketGraph>(
          true, static_cast<size_t>(options.prefill_graph_shapes), kPrefillBucketTokens);
    }
  }
  if (options.world_size != 0) {
    if (!cpu_mode) {
      const cudaError_t e = cudaSetDevice(load.local_device);
      if (e != cudaSuccess) return MakeError(ErrorCode::kDevice, std::string("cudaSetDevice: ") + cudaGetErrorString(e));
    }
    BIGPLAN_ASSIGN_OR_RETURN(impl->ranks,
                             executor_internal::RankGroup::Join({.rank = options.rank,
                                                                 .world_size = options.world_size,
                                                                 .address = options.rendezvous,
                                                                 .cuda = !cpu_mode,
                                                                 .timeout_s = options.rendezvous_timeout_s}));
    if (shards > 0) {
      // A tensor-parallel plan: this rank computes shard `rank` of every block, adding the shards' partial sums
      // through the group's all-reduce. Its decode steps replay one graph (its shard of every block, the NCCL
      // all-reduces in it) where the one-process plan's would (every block resident, experts read on the device).
      impl->shard_ctx.resize(shards);
      executor_internal::RankGroup* group = impl->ranks.get();
      impl->shard_ctx[options.rank] =
          ShardContext(impl->state->info.vocab_size, static_cast<uint32_t>(options.rank), shards,
                       [group](const at::Tensor& x) {
                         at::Tensor t = x;
                         return group->AllReduce(&t);
                       });
      bool device_steps = true;
      for (const BlockRuntime& b : impl->state->blocks) device_steps &= b.remote || device_routed(b);
      if (options.cuda_graphs && !cpu_mode && impl->state->streams.empty() && device_steps &&
          impl->kernels->GraphDecode(impl->state->info.max_seq_len)) {
        impl->rank_segments.push_back(Impl::GraphSegment{GraphDecoder(load.local_device), 0,
                                                         static_cast<uint32_t>(impl->state->steps.size()),
                                                         at::Tensor()});
      }
    }
    // Decode graphs: one per run of consecutive steps this rank computes; a run after another rank's steps takes
    // its hidden state through a buffer of its own (the graph's static input), received from that rank.
    if (shards == 0 && options.cuda_graphs && !cpu_mode && impl->state->streams.empty() &&
        impl->kernels->StaticDecode(impl->state->info.max_seq_len)) {
      const auto& steps = impl->state->steps;
      for (uint32_t i = 0; i < steps.size(); ++i) {
        if (impl->state->blocks[steps[i].block].remote) continue;
        if (i > 0 && !impl->state->blocks[steps[i - 1].block].remote) {
          impl->rank_segments.back().end = i + 1;
          continue;
        }
        Impl::GraphSegment seg{GraphDecoder(load.local_device), i, i + 1, at::Tensor()};
        if (i > 0) seg.hidden_in = impl->DecodeHiddenBuffer(load.local_device);
        impl->rank_segments.push_back(std::move(seg));
      }
    }
  }
  for (const BlockRuntime& b : impl->state->blocks) {
    impl->labels.push_back({b.name, arch::BlockKindName(b.kind), TierName(b.tier)});
  }
  impl->stats.loaded_bytes = impl->state->loaded_bytes;
  impl->stats.load_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return std::unique_ptr<Executor>(new Executor(std::move(impl)));
}

Result<Logits> Executor::Forward(const std::vector<int64_t>& token_ids, int batch, bool reset) {
  return Forward(token_ids, batch, ForwardOptions{.reset = reset});
}

Result<Logits> Executor::Forward(const std::vector<int64_t>& token_ids, int batch, const ForwardOptions& options) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (options.reset) {
    impl_->pos = 0;
    impl_->cached_batch = 0;
  }
  const int64_t seq = batch > 0 ? static_cast<int64_t>(token_ids.size()) / batch : 0;
  // Every position's logits of more than arch::kLogitsTokens tokens: consecutive passes of at most that many (at
  // least one position per row), each pass's logits on the host before the next runs, so the device holds the
  // logits the plan reserved room for (arch/temporaries.h). The KV cache continues from pass to pass.
  const int64_t step = std::max<int64_t>(1, arch::kLogitsTokens / std::max<int64_t>(1, batch));
  if (options.last_position_only || seq <= step) {
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor logits, impl_->RunForward(token_ids, batch, seq, options.last_position_only,
                                                                  options.micro_batch_rows, options.micro_batch_group));
    return ToLogits(logits);
  }
  BIGPLAN_RETURN_IF_ERROR(impl_->CheckInput(token_ids, batch, seq));
  Logits out;
  out.batch = batch;
  out.seq = seq;
  std::vector<int64_t> ids;
  for (int64_t s0 = 0; s0 < seq; s0 += step) {
    const int64_t n = std::min(step, seq - s0);
    ids.resize(static_cast<size_t>(batch * n));
    for (int64_t b = 0; b < batch; ++b) {
      std::copy_n(token_ids.begin() + b * seq + s0, n, ids.begin() + b * n);
    }
    BIGPLAN_ASSIGN_OR_RETURN(at::Tensor part, impl_->RunForward(ids, batch, n, false, options.micro_batch_rows,
                                                                options.micro_batch_group));
    if (out.data.empty()) {
      out.vocab = part.size(2);
      out.data.resize(static_cast<size_t>(batch * seq * out.vocab));
    }
    const float* src = part.data_ptr<float>();
    for (int64_t b = 0; b < batch; ++b) {
      std::memcpy(out.data.data() + (b * seq + s0) * out.vocab, src + b * n * out.vocab,
                  static_cast<size_t>(n * out.vocab) * sizeof(float));
    }
  }
  return out;
}

Result<Logits> Executor::Forward(const std::vector<std::vector<int64_t>>& rows, bool reset) {
  return Forward(rows, ForwardOptions{.reset = reset});
}

Result<Logits> Executor::Forward(const std::vector<std::vector<int64_t>>& rows, const ForwardOptions& options) {
  if (rows.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty input: no rows");
  std::vector<int64_t> flat;
  for (const auto& row : rows) {
    if (row.size() != rows[0].size()) {
      return MakeError(ErrorCode::kInvalidArgument, "rows of different lengths (" + std::to_string(rows[0].size()) +
                                                        " and " + std::to_string(row.size()) + " tokens)");
    }
    flat.insert(flat.end(), row.begin(), row.end());
  }
  return Forward(flat, static_cast<int>(rows.size()), options);
}

int64_t Executor::cached_tokens() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->pos;
}

Result<GenerateResult> Executor::Generate(const std::vector<std::vector<int64_t>>& prompts,
                                          const GenerateOptions& options) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  at::Tensor logits;  // the last step's, kept alive for the loop's sampling
  auto forward = [&](int step, const std::vector<int64_t>& tokens, int64_t batch,
                     int64_t seq) -> Result<executor_internal::LastLogits> {
    if (step == 0) {
      impl_->pos = 0;
      impl_->cached_batch = 0;
    }
    BIGPLAN_ASSIGN_OR_RETURN(logits, impl_->RunForward(tokens, batch, seq, true));
    return executor_internal::LastLogits{logits.data_ptr<float>(), logits.size(2)};
  };
  return executor_internal::Generate(prompts, options, impl_->state->info.max_seq_len, forward);
}

Status Executor::Impl::RunRowSteps(const std::vector<RowStep>& rows, at::Tensor* out) {
  if (!experts.empty()) {
    int64_t tokens = 0;
    for (const RowStep& r : rows) tokens += static_cast<int64_t>(r.tokens.size());
    for (const auto& e : experts) e->BeginForward(tokens);
  }
  try {
    c10::InferenceMode inference;
    std::optional<c10::cuda::CUDAMultiStreamGuard> streams_guard;
    GuardComputeStreams(&streams_guard);
    // Groups: the one-token rows together where the kernels take per-row positions; every other row alone.
    struct Group {
      std::vector<size_t> members;  // indices into `rows`
      bool batched = false;         // ForwardContext::rows
      at::Tensor host_ids, host_rows, host_pos;
      std::vector<std::pair<int, std::array<at::Tensor, 3>>> on_device;  // ids, rows, positions per device
      int64_t start_pos = 0, attend_len = 0;
      // Per shard of a tensor-parallel plan (one entry otherwise): each shard keeps its hidden state on its GPU.
      std::vector<at::Tensor> hidden, logits;
    };
    const size_t shards = shard_group != nullptr ? static_cast<size_t>(shard_group->shards()) : 1;
    std::vector<Group> groups;
    const bool per_row = kernels->RowSteps(state->info.max_seq_len);
    Group decode;
    decode.batched = true;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (per_row && rows[i].tokens.size() == 1) {
        decode.members.push_back(i);
      } else {
        Group g;
        g.members = {i};
        g.start_pos = rows[i].start_pos;
        groups.push_back(std::move(g));
      }
    }
    if (!decode.members.empty()) groups.insert(groups.begin(), std::move(decode));
    for (Group& g : groups) {
      g.hidden.resize(shards);
      g.logits.resize(shards);
      const int64_t n = static_cast<int64_t>(g.members.size());
      const int64_t seq = static_cast<int64_t>(rows[g.members[0]].tokens.size());
      g.host_ids = at::empty({n, seq}, at::TensorOptions().dtype(at::kLong));
      g.host_rows = at::empty({n}, at::TensorOptions().dtype(at::kLong));
      g.host_pos = at::empty({n}, at::TensorOptions().dtype(at::kLong));
      for (int64_t j = 0; j < n; ++j) {
        const RowStep& r = rows[g.members[j]];
        std::memcpy(g.host_ids.data_ptr<int64_t>() + j * seq, r.tokens.data(), seq * sizeof(int64_t));
        g.host_rows.data_ptr<int64_t>()[j] = r.row;
        g.host_pos.data_ptr<int64_t>()[j] = r.start_pos;
        g.attend_len = std::max(g.attend_len, r.start_pos + 1);
      }
    }
    // Every group's inputs on every device its blocks run on, before any block is issued: a copy from pageable host
    // memory synchronizes its device's stream, which, in a tensor-parallel plan, may hold a shard's all-reduce
    // waiting for a shard not yet issued.
    std::vector<int> input_devices;
    for (const BlockRuntime& b : state->blocks) {
      if (std::find(input_devices.begin(), input_devices.end(), b.device) == input_devices.end())
        input_devices.push_back(b.device);
    }
    for (Group& g : groups) {
      for (int d : input_devices) {
        const at::Device device = d >= 0 ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d)) : at::Device(at::kCPU);
        g.on_device.emplace_back(d, std::array<at::Tensor, 3>{g.host_ids.to(device), g.host_rows.to(device),
                                                              g.host_pos.to(device)});
      }
    }
    // New sequences start from a cleared row: masked positions must hold finite values.
    for (const RowStep& r : rows) {
      if (r.start_pos != 0) continue;
      for (BlockKv& v : kv) {
        if (!v.has_kv) continue;
        v.kv.k.select(0, r.row).zero_();
        v.kv.v.select(0, r.row).zero_();
      }
    }
    // The steps (of shard `only`, in a tensor-parallel plan: each shard's from its own thread, see IssueShards).
    auto run_steps = [&](int only) -> Status {
      for (uint32_t i = 0; i < state->steps.size(); ++i) {
        const BlockRuntime& b = state->blocks[state->steps[i].block];
        if (only >= 0 && static_cast<int>(b.shard) != only) continue;
        std::optional<c10::cuda::CUDAGuard> device_guard;
        at::Device device(at::kCPU);
        if (b.device >= 0) {
          device_guard.emplace(static_cast<c10::DeviceIndex>(b.device));
          device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(b.device));
        }
        BIGPLAN_RETURN_IF_ERROR(engine->BeginStep(i));
        StepWeights& w = weights[b.index];
        BIGPLAN_RETURN_IF_ERROR(w.Prepare());
        BlockKv& v = kv[b.index];
        for (Group& g : groups) {
          std::array<at::Tensor, 3>* inputs = nullptr;
          for (auto& [d, t] : g.on_device) {
            if (d == b.device) inputs = &t;
          }
          if (inputs == nullptr) return MakeError(ErrorCode::kInternal, "block " + b.name + ": no inputs on its device");
          ForwardContext ctx;
          ctx.token_ids = (*inputs)[0];
          ctx.logits_last_only = true;
          // A tensor-parallel shard's blocks meet the other shards' at the all-reduces, group by group in this order.
          const size_t s = shard_group != nullptr ? b.shard : 0;
          if (shard_group != nullptr) ctx.shards = &shard_ctx[s];
          KvCache row_kv;
          KvCache* block_kv = nullptr;
          if (g.batched) {
            ctx.rows = (*inputs)[1];
            ctx.position = (*inputs)[2];
            ctx.attend_len = g.attend_len;
            ctx.start_pos = g.attend_len - 1;
            if (v.has_kv) block_kv = &v.kv;
          } else {
            ctx.start_pos = g.start_pos;
            if (v.has_kv) {
              const int row = rows[g.members[0]].row;
              row_kv.k = v.kv.k.narrow(0, row, 1);
              row_kv.v = v.kv.v.narrow(0, row, 1);
              block_kv = &row_kv;
            }
          }
          at::Tensor& hidden = g.hidden[s];
          if (hidden.defined() && hidden.device() != device) hidden = hidden.to(device);
          Status st = kernels->RunBlock(b.kind, b.name, b.layer, w, ctx, block_kv, &hidden, &g.logits[s]);
          if (!st.ok()) return WithContext(st.take_error(), "block " + b.name);
        }
        BIGPLAN_RETURN_IF_ERROR(engine->EndStep(i));
      }
      return Status::Ok();
    };
    BIGPLAN_RETURN_IF_ERROR(shard_group != nullptr ? OnShardThreads(run_steps) : run_steps(-1));
    const int64_t vocab = state->info.vocab_size;
    at::Tensor result = at::empty({static_cast<int64_t>(rows.size()), 1, vocab}, at::TensorOptions().dtype(at::kFloat));
    for (Group& g : groups) {
      const at::Tensor& logits = g.logits[0];  // (every shard holds them)
      if (!logits.defined()) return MakeError(ErrorCode::kInternal, "the plan's blocks produced no logits");
      at::Tensor l = logits.narrow(1, logits.size(1) - 1, 1).to(at::kCPU, at::kFloat).contiguous();
      for (size_t j = 0; j < g.members.size(); ++j) result[g.members[j]].copy_(l[j]);
    }
    *out = result;
  } catch (const std::exception& e) {
    return TorchError(e, "forward pass (rows)");
  }
  return Status::Ok();
}

Result<Logits> Executor::StepRows(const std::vector<RowStep>& rows) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const ModelInfo& info = impl_->state->info;
  if (impl_->ranks != nullptr) {
    return MakeError(ErrorCode::kUnsupported, "StepRows: plan " + info.plan_path + " runs over ranks (one process per "
                                              "GPU), which serve Forward and Generate only");
  }
  if (rows.empty()) return MakeError(ErrorCode::kInvalidArgument, "StepRows: no rows");
  bool holdable = true;  // every stream's chunks may stay held until their block's step ends
  for (const auto& s : impl_->state->streams) holdable = holdable && s.chunks_holdable;
  if (info.chunk_units > 0 && !holdable) {
    // Row groups run one after another through a block; a chunk whose ring bytes a later chunk of the same block
    // reuses can be read once per pass.
    if (impl_->state->plan->plan().host_max_tokens() > 0) {
      return MakeError(ErrorCode::kUnsupported, "StepRows: plan " + info.plan_path + " splits streamed weights between "
                                                "the host and the GPU (plan --cpu-share), in row chunks, which rows at "
                                                "their own positions cannot share yet; plan without --cpu-share to "
                                                "serve it");
    }
    return MakeError(ErrorCode::kUnsupported, "StepRows: plan " + info.plan_path + " streams weights in row chunks, "
                                              "which rows at their own positions cannot share yet; plan with a larger "
                                              "GPU budget (no row chunks) to serve it");
  }
  std::vector<bool> used(info.max_batch, false);
  int64_t max_seq = 0;
  for (const RowStep& r : rows) {
    if (r.row < 0 || r.row >= static_cast<int>(info.max_batch)) {
      return MakeError(ErrorCode::kInvalidArgument, "StepRows: row " + std::to_string(r.row) +
                                                        " outside the plan's max_batch " + std::to_string(info.max_batch));
    }
    if (used[r.row]) return MakeError(ErrorCode::kInvalidArgument, "StepRows: row " + std::to_string(r.row) + " given twice");
    used[r.row] = true;
    if (r.tokens.empty()) return MakeError(ErrorCode::kInvalidArgument, "StepRows: row " + std::to_string(r.row) + " has no tokens");
    if (r.start_pos < 0 || r.start_pos + static_cast<int64_t>(r.tokens.size()) > info.max_seq_len) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "StepRows: row " + std::to_string(r.row) + ": " + std::to_string(r.start_pos) + " cached + " +
                           std::to_string(r.tokens.size()) + " new tokens exceeds the plan's max_seq_len " +
                           std::to_string(info.max_seq_len));
    }
    for (int64_t id : r.tokens) {
      if (id < 0 || id >= info.vocab_size) {
        return MakeError(ErrorCode::kInvalidArgument, "StepRows: row " + std::to_string(r.row) + ": token id " +
                                                          std::to_string(id) + " is outside the vocabulary [0, " +
                                                          std::to_string(info.vocab_size) + ")");
      }
    }
    max_seq = std::max<int64_t>(max_seq, static_cast<int64_t>(r.tokens.size()));
  }
  impl_->pos = 0;  // Forward's sequence is gone
  impl_->cached_batch = 0;
  const auto t0 = Clock::now();
  at::Tensor out;
  int64_t total_tokens = 0;
  for (const RowStep& r : rows) total_tokens += static_cast<int64_t>(r.tokens.size());
  const bool host_pass =
      impl_->host != nullptr && total_tokens <= static_cast<int64_t>(impl_->state->host_max_tokens);
  Status run = impl_->engine->BeginForward(host_pass, /*hold_chunks=*/info.chunk_units > 0);
  if (run.ok()) {
    run = impl_->RunRowSteps(rows, &out);
    if (impl_->shard_group != nullptr) run = impl_->ShardPassStatus(std::move(run), t0);
  }
  ForwardTimings timings;
  Status end = impl_->engine->EndForward(run.ok() ? &timings : nullptr);
  for (const auto& e : impl_->experts) {
    Status experts_end = e->EndForward();
    if (end.ok()) end = std::move(experts_end);
  }
  if (!run.ok()) return run.take_error();
  if (!end.ok()) return end.take_error();
  impl_->Account(timings, static_cast<int64_t>(rows.size()), max_seq,
                 std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  return ToLogits(out);
}

Status Executor::ServeRank() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl& impl = *impl_;
  if (impl.ranks == nullptr || impl.ranks->rank() == 0) {
    return MakeError(ErrorCode::kInvalidArgument, "ServeRank: only ranks other than 0 serve (ExecutorOptions::world_size)");
  }
  for (;;) {
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> command, impl.ranks->NextCommand());
    if (command.empty()) return Status::Ok();  // rank 0's executor ended
    if (command[0] != Impl::kForward || command.size() < 5) {
      return MakeError(ErrorCode::kInternal, "rank " + std::to_string(impl.ranks->rank()) + ": unknown command");
    }
    const int64_t batch = command[1], seq = command[2];
    if (batch <= 0 || seq <= 0 || static_cast<int64_t>(command.size()) != 5 + batch * seq) {
      return MakeError(ErrorCode::kInternal, "rank " + std::to_string(impl.ranks->rank()) + ": malformed command");
    }
    impl.pos = command[3];
    const std::vector<int64_t> ids(command.begin() + 5, command.end());
    const auto t0 = Clock::now();
    at::Tensor unused;
    Status run = impl.engine->BeginForward(false);
    if (run.ok()) run = impl.RunRanked(ids, batch, seq, command[4] != 0, &unused);
    executor_internal::ForwardTimings timings;
    Status end = impl.engine->EndForward(run.ok() ? &timings : nullptr);
    if (!run.ok()) return run;
    if (!end.ok()) return end;
    impl.pos += seq;
    impl.cached_batch = batch;
    impl.Account(timings, batch, seq, std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    std::lock_guard<std::mutex> lock(impl.stats_mu);
    if (impl.rank_graph_step) ++impl.stats.graph_steps;
    if (!impl.capture_error.empty()) impl.stats.graph_capture_error = impl.capture_error;
  }
}

Status Executor::Reset() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->pos = 0;
  impl_->cached_batch = 0;
  return Status::Ok();
}

Stats Executor::stats() const {
  std::lock_guard<std::mutex> lock(impl_->stats_mu);
  return impl_->stats;
}

const ModelInfo& Executor::info() const { return impl_->state->info; }

Status Executor::WriteTrace(const std::string& path) const {
  if (!impl_->options.record_trace) {
    return MakeError(ErrorCode::kInvalidArgument, "no trace recorded: load with ExecutorOptions::record_trace");
  }
  std::lock_guard<std::mutex> lock(impl_->stats_mu);
  return impl_->trace.Write(path);
}

}  // namespace bigplan
