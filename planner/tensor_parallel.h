// The tensor-parallel candidate (plan version 7; arch/tensor_parallel.h): every block of the model split over the
// budgeted GPUs, shard r of every block on the r-th GPU, all resident. Each shard computes its heads, its rows of the
// MLP and its slice of the vocabulary; the executor adds the shards' partial sums after each attention output, MLP
// output and embedding (an all-reduce over peer memory) and gathers the logits. A decode step then reads every GPU's
// share of the weights at once, where a split plan reads one GPU's share after the other.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "arch/tensor_parallel.h"
#include "planner/cost_model.h"
#include "planner/model_desc.h"
#include "planner/placement.h"
#include "support/result.h"

namespace bigplan {

struct ShardedModel {
  // N blocks per block of the source model, consecutive, shard 0 first: the same name, kind, layer and prefix, their
  // params sliced (arch::ShardSlice) and a tied read (lm_head's embedding) made a sliced param of its own. Its
  // config is arch::ShardConfig's (heads, key/value heads and intermediate size divided), so the accounting counts a
  // shard's KV cache and activations.
  ModelDescription model;
  uint32_t shards = 0;
  std::vector<uint32_t> shard;  // per block of `model`
  // Per block of `model`: tensor name -> its slice (absent: the whole tensor).
  std::vector<std::map<std::string, arch::TensorSlice>> slices;
};

// A quantized weight (--weights) is split as a plain one: a shard's columns of a per-row-scaled weight are scaled
// per row of those columns; with groups, its columns hold whole groups. kUnsupported (arch::CheckTensorParallel's
// reason, a pre-quantized weight, or groups a shard's columns cut) when the model does not split.
Result<ShardedModel> ShardModel(const ModelDescription& model, uint32_t shards);

// Shard r of every block on gpus[r], every weight resident.
std::vector<BlockPlacement> ShardPlacement(const ShardedModel& sharded, const std::vector<int32_t>& gpus);

// The shards of one GPU as a model of their own (shard `shard`'s blocks, in order): what a GPU of a tensor-parallel
// plan computes, for placing and predicting one shard.
ModelDescription ShardOf(const ShardedModel& sharded, uint32_t shard);

// When the shards do not fit resident: the last shard (the largest: it holds the vocabulary's remainder) placed by
// the auto strategy's block-granular candidates (B, P, C) on the smallest GPU budget with 1/N of the cpu and disk
// budgets, and every shard placed as it, each on its GPU, so each GPU streams its share of every streamed layer over
// its own PCIe link. A column slice (o_proj, down_proj) cannot be read from disk in rows: kInfeasible when the
// reference placement leaves one there. `one_shard` receives the reference placement (for predicting a shard).
Result<Placement> StreamedShardPlacement(const ShardedModel& sharded, const std::vector<int32_t>& gpus,
                                         const PlacementRequest& request, Placement* one_shard);

// One all-reduce of `bytes` per shard over `shards` GPUs (the executor's one-shot push over peer memory: each shard
// writes its part to every other, then adds them): kAllReduceMicros (kAllReduceEagerMicros between eagerly issued
// kernels) + bytes x (shards - 1) at kPeerGbps.
double AllReduceMicros(double bytes, uint32_t shards, bool graphs);
// The planner chooses candidate T when its predicted decode step takes at most this share of the best other
// placement's and, in a plan for batches (max_batch >= 2), its batched prefill of max_batch rows x max_seq_len / 2
// tokens is predicted no slower than that placement's (pipelined in micro-batches where it can be).
inline constexpr double kTensorParallelGain = 0.9;
// Calibrated on 2x H200 (NV18; tp_allreduce_bench, graphs of 64 calls): 6.3 us for 4096 to 65536 bf16 values,
// 15.8 us for 2^20 and 45.4 us for 2^22 (8 MiB: about 200 GB/s past the fixed cost, kPeerGbps).
inline constexpr double kAllReduceMicros = 6.5;
inline constexpr double kAllReduceEagerMicros = 12.0;

// A pass of a tensor-parallel plan: per source block, its slowest shard's time (`step_us`, per block of
// sharded.model), or, issued eagerly, the host's issue of all its shards when that is longer (`host_us`, empty for
// graphs), plus its all-reduces: arch::LayerAllReduces a decoder layer (tokens x hidden), one for the embedding,
// one for the logits (logit_rows x vocab) at the lm_head.
double TensorParallelPassMicros(const ShardedModel& sharded, const std::vector<double>& step_us,
                                const std::vector<double>& host_us, uint64_t tokens, uint64_t logit_rows,
                                DType exec, bool graphs);

}  // namespace bigplan
