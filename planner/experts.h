// Routed experts (mixture-of-experts models): which weights are an expert's matrices, how the placement spreads
// resident experts over the sparse layers, and the rings and paths a compute device serves the others with
// (schema/plan.fbs ExpertRing).
//
// A block placed with `routed_experts` keeps its resident experts in its Gpu-tier buffer and every other expert's
// matrices in the CPU tier (its pinned host buffer) or on disk, outside the weight stream: after each sparse
// layer's router the executor copies the chosen non-resident experts into the device's expert ring (slots of one
// expert each), or, in forwards of at most decode_max_tokens tokens, has the host CPU compute a share of them from
// pinned memory; disk-resting experts are read into a pinned disk ring first.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "formats/dtype.h"
#include "planner/device_profile.h"
#include "planner/model_desc.h"
#include "planner/placement.h"

namespace bigplan {

// The expert index of weight `weight` (LayoutBlockWeights order) of block `block` when it is a routed expert's
// matrix (the registry's "{e}" rules), else -1.
int32_t ExpertOfWeight(const ModelDescription& model, size_t block, size_t weight);
// The format of block `block`'s routed-expert matrices (--weights, or a pre-quantized checkpoint's): that of its
// first expert matrix; kNone for plain ones or a block without experts.
quant::Format ExpertFormat(const ModelDescription& model, size_t block);
// Whether the executor computes block `block`'s experts on the GPU in decode as grouped products (a few launches a
// layer, executor/expert_engine.h): plain matrices in a 16-bit `exec_dtype` or float32, or quantized ones it
// batches (per-row fp8/int8 with columns a multiple of 4; int4 in groups of a multiple of 8 columns) in bf16/fp16.
// Otherwise (e.g. FP8 checkpoints with block scales) each chosen expert is a task of its own, its ops issued by
// the host (kExpertTaskMicros).
bool ExpertsGrouped(const ModelDescription& model, size_t block, DType exec_dtype);

// The slots of a device's expert ring: room for the experts two tokens' routers pick (2 num_experts_per_tok),
// at least 4 and at most 32. (Tried: num_experts_per_tok + 1 for batch-1 runs, one token's choices and a
// prefetch. On 2x H200 the Mixtral-8x7B shape at 16 GiB decoded in 16.25 ms against 16.30 with 4 slots, one more
// 352 MB expert resident; the Qwen3-30B-A3B shape at 8 GiB in 16.32 ms against 15.14 with 16 slots.)
uint32_t ExpertRingSlots(const ModelConfig& config);
// Pinned slots for disk-resting experts: 4.
inline constexpr uint32_t kExpertDiskSlots = 4;

struct ExpertRingPlan {
  int32_t device = 0;
  uint32_t slots = 0;
  uint64_t slot_bytes = 0;       // the largest routed expert: its gate, up and down matrices, each 256-aligned
  uint32_t disk_slots = 0;       // 0: no disk-resting experts
  uint64_t disk_slot_bytes = 0;  // slot_bytes rounded to the disk alignment (O_DIRECT)
  // Filled by PlanExpertPaths:
  double cpu_share = 0;          // of a forward's non-resident chosen experts, the host computes this share
  uint32_t decode_max_tokens = 0;
  uint32_t copy_all_tokens = 0;
  uint32_t prefetch = 0;         // next-layer experts prefetched per sparse layer in decode (executor/expert_engine.h)
  double expected_resident_bytes = 0, expected_copied_bytes = 0, expected_host_bytes = 0;  // per decode token
  double expected_disk_bytes = 0;  // of expected_copied_bytes, read from disk first
  uint64_t ring_bytes() const { return uint64_t{slots} * slot_bytes; }
  uint64_t disk_ring_bytes() const { return uint64_t{disk_slots} * disk_slot_bytes; }
};

// The expert rings of a placement: one per compute device (a GPU) that computes a block with routed experts
// resting off the GPU. Deterministic in the placement (the accounting, the schedule and the plan agree).
std::map<int32_t, ExpertRingPlan> ExpertRingsFor(const ModelDescription& model,
                                                 const std::vector<BlockPlacement>& blocks, DType exec_dtype);

// The paths of each ring: the host's share of the non-resident experts chosen in a decode forward (0 unless the
// execution dtype is bf16, which the host multiplies; `cpu_share` <
// 0: from the profile, the share that makes the host finish with the copies, cpu_gemv_gbps / (cpu_gemv_gbps +
// h2d_gbps), 0 when the profile has no host rate; otherwise the given share, clamped to [0, 1]), the forward sizes
// (decode_max_tokens = `decode_tokens`; copy_all_tokens: forwards whose tokens choose, on average, every expert
// twice), and the expected bytes per decode token by path under uniform routing.
// `prefetch`: the next-layer experts prefetched per sparse layer in decode (-1: kDefaultExpertPrefetch), clamped to
// num_experts_per_tok and to what the ring holds beside one token's choices (slots - num_experts_per_tok); 0 when
// no routed expert rests in pinned memory.
void PlanExpertPaths(const ModelDescription& model, const std::vector<BlockPlacement>& blocks, DType exec_dtype,
                     const DeviceProfile& profile, double cpu_share, uint32_t decode_tokens,
                     std::map<int32_t, ExpertRingPlan>* rings, int prefetch = -1);
// Next-layer experts prefetched per sparse layer by default: one, the most probable under the next router run on
// this layer's MoE input. Its copy fills the copy engine's wait for the next router; see kExpertPrefetchHitRate.
inline constexpr int kDefaultExpertPrefetch = 1;

// A sparse layer's expected expert bytes per decode token under uniform routing (num_experts_per_tok of
// num_experts chosen): read where resident, copied over PCIe, read by the host (the chosen pinned-resting ones split
// by `cpu_share`; the host does not compute disk-resting experts), and every non-resident expert's bytes (what a
// copy-all forward moves), of which those resting on disk.
struct ExpertBytes {
  double resident = 0, copied = 0, host = 0;
  double disk = 0;        // of `copied`, read from disk first (disk-resting experts)
  uint64_t off_gpu = 0;
  uint64_t off_disk = 0;  // of off_gpu, on disk
  double prefetched = 0;  // of `copied`, what next-layer prefetches move before the router (WithPrefetch)
  // The chance that all of a token's choices are resident (none copied or computed by the host), for distinct
  // choices drawn uniformly: C(resident experts, k) / C(experts, k). The off-GPU bytes above are expectations over
  // every token: a token that moves any moves them / (1 - all_resident).
  double all_resident = 1;
  // The layer's experts: all of them, those resident on the GPU, those resting in pinned memory (the rest on disk).
  uint32_t experts = 0, resident_experts = 0, pinned_experts = 0;
};
ExpertBytes ExpectedExpertBytes(const ModelDescription& model, size_t block, const BlockPlacement& placement,
                                DType exec_dtype, double cpu_share);

// The executor splits a chosen expert between the host and the GPU only from this size on (ExpertEngine's
// kSplitMinBytes), plain ones and row-quantized ones its grouped products take (ExpertsGrouped); smaller ones go
// whole to one side.
inline constexpr uint64_t kExpertSplitMinBytes = 32ull << 20;
// Whether the executor keeps layer `block`'s quantized experts (of `expert_bytes` each) whole, to the host or to the
// GPU: quantized, and smaller than kExpertSplitMinBytes or in a layout the grouped products do not take. False for
// plain experts.
bool QuantizedExpertsWhole(const ModelDescription& model, size_t block, DType exec_dtype, double expert_bytes);
// How many of `n` equal whole experts the host takes at `cpu_share` (ShareHostRows: an expert the share covers at
// least half of): round(cpu_share x n), halves up.
uint32_t HostWholeExperts(double cpu_share, uint32_t n);
// The chance that exactly `n` of a token's k distinct choices (uniform over `experts`) fall among `subset` of them:
// C(subset, n) C(experts - subset, k - n) / C(experts, k).
double ChoiceCountChance(uint32_t experts, uint32_t subset, uint32_t k, uint32_t n);

// `b` (ExpectedExpertBytes at `cpu_share`) when the previous layer prefetches `prefetch` experts of `expert_bytes`
// each (an expectation: ExpectedPrefetches), kExpertPrefetchHitRate of them chosen (pinned-resting ones only): those
// are copied before the router (prefetched, counted in copied too), and the host's share applies to the other chosen
// pinned-resting experts (as a share of their bytes). `b` itself for no prefetch.
ExpertBytes WithPrefetch(const ExpertBytes& b, double cpu_share, double prefetch, uint64_t expert_bytes);
// The experts a routed layer (`b`: its ExpectedExpertBytes) receives, in expectation under uniform routing, from the
// previous routed layer's prefetch of up to `prefetch` (the executor's ExpertEngine): none for the first routed layer
// of its GPU (`previous_routed` false); else the pinned-resting ones among the next router's predicted top
// max(prefetch, k) (at most 64), at most `prefetch` of them (a resident or disk-resting prediction is passed over).
double ExpectedPrefetches(const ExpertBytes& b, uint32_t k, uint32_t prefetch, bool previous_routed);
// Layer `block`'s ExpectedExpertBytes at `cpu_share` with the prefetch it receives from a ring of `prefetch`
// (ExpectedPrefetches: none unless a routed layer of its GPU comes before it) of `expert_bytes` each (WithPrefetch);
// *prefetches, where given, receives the expected count.
ExpertBytes PrefetchedExpertBytes(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                  size_t block, DType exec_dtype, double cpu_share, uint32_t prefetch,
                                  uint64_t expert_bytes, double* prefetches = nullptr);

// Spreads `resident` experts over the sparse layers of the blocks (each a decoder layer on a GPU, already placed
// with its other weights; `device` >= 0: only the layers placed on that GPU): layer by layer round-robin, the
// lower-indexed experts of each layer first. Sets those layers' weight_tiers (Gpu for the kept experts and every
// non-expert weight, Cpu for the rest) and routed_experts.
void SpreadResidentExperts(const ModelDescription& model, DType exec_dtype, uint64_t resident_expert_bytes,
                           std::vector<BlockPlacement>* blocks, int device = -1);

}  // namespace bigplan
