// Memory accounting: how many bytes each thing the executor allocates takes, for placement and the memory planner.
//
// Device (GPU) memory, per compute device, all inside that device's arena and counted against its budget:
//   resident weights  sum of the Gpu-tier weights' bytes (each 256-aligned) of the blocks computed there
//   staging           the ring its streamed (Cpu/Disk-tier) weights pass through (planner/streaming.h): the
//                     placement's Placement::ring_bytes, by default min(#streaming blocks, prefetch_depth + 1) slots
//                     of the largest block's streamed bytes (DefaultRingBytes)
//   KV cache          KvCacheBytesPerLayer for each decoder layer computed there
//   activations       EstimateActivations over the kinds of blocks computed there (formula below)
//   workspace reserve GpuWorkspaceReserveBytes() on every device that computes at least one block
// The CUDA context (driver state and loaded kernel images, typically 0.3-0.6 GiB) lives on the card but outside any
// allocation bigplan makes; like Accelerate's max_memory, the budget does NOT include it: leave room for it.
//
// Host memory (the "cpu" budget), all pinned (cudaHostAlloc) except in CPU-only mode:
//   CPU-tier weights  sum of the Cpu-tier weights' bytes, each 256-aligned (at the execution dtype, cast at load)
//   disk staging      per device that streams Disk-tier weights, its pinned disk ring: StreamOptions::disk_slots
//                     slots of its largest disk weight (DiskRingBytes)
//   CPU compute       blocks computed on the CPU (device -1, when no GPU is budgeted): their weights, KV cache and
//                     activations live in the host arena and count against the cpu budget too.
// Disk-tier weights are read from the checkpoint's shards in place; they count against the "disk" budget only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "planner/budget.h"
#include "planner/model_desc.h"

namespace bigplan {

inline constexpr uint64_t kWeightAlignment = 256;
// Saturates: a value within `alignment` of 2^64 rounds to the largest multiple below it, never wraps to 0.
constexpr uint64_t AlignUp(uint64_t value, uint64_t alignment = kWeightAlignment) {
  if (value > ~uint64_t{0} - (alignment - 1)) return ~uint64_t{0} / alignment * alignment;
  return (value + alignment - 1) / alignment * alignment;
}

// The most bytes any accounted quantity may reach (1 EiB): far above any machine, low enough that sums of a few
// such terms cannot wrap around 64 bits.
inline constexpr uint64_t kMaxAccountedBytes = uint64_t{1} << 60;

// Computes every size the accounting below derives from the model and the run shape (each tensor at its runtime
// dtype, the whole model, the KV cache per layer and for all layers, each activation term) with overflow-checked
// arithmetic. kInvalidArgument naming the quantity and the run shape when one overflows 64 bits or exceeds
// kMaxAccountedBytes (e.g. "run shape batch 65536 x seq 2147483648: the attention scores (batch x heads x seq^2 x 4
// bytes) overflow 64 bits"); kCorrupt naming the tensor for a tensor whose size overflows. The planner calls it
// before placing anything, so no wrapped-around size can reach a plan. (The functions below saturate at 2^64 - 1
// instead of wrapping, as a second line of defense.)
Status CheckAccountingSizes(const ModelDescription& model, const RunShape& run, DType exec_dtype);

// The dtype a param is held in at run time: floating params are cast to the execution dtype, others keep theirs.
DType RuntimeDType(DType src_dtype, DType exec_dtype);

// One weight inside a block's weight buffer.
struct WeightSlot {
  std::string tensor;           // param name (for a tied read: the owner's param name)
  bool tied = false;            // a read of a param owned by another block
  std::vector<int64_t> shape;
  DType src_dtype = DType::kF32;
  DType dtype = DType::kF32;    // RuntimeDType(src_dtype, exec)
  uint64_t size_bytes = 0;      // numel x DTypeBytes(dtype), or the quantized size (TensorSpec::bytes_as)
  uint64_t offset_in_block = 0; // 256-aligned
  quant::Format format = quant::Format::kNone;  // the param's TensorSpec::format / group
  int64_t group = 0;
};

// A block's weight buffer: its own params in description order, then its tied reads (each tied tensor is copied
// into every block that reads it, so blocks stay independent units of placement and streaming). Each weight starts
// at a 256-byte aligned offset; total_bytes = AlignUp(end of the last weight) (0 for a block without weights).
struct BlockWeightLayout {
  std::vector<WeightSlot> weights;
  uint64_t total_bytes = 0;
};
BlockWeightLayout LayoutBlockWeights(const ModelDescription& model, size_t block_index, DType exec_dtype);
uint64_t BlockWeightBytes(const ModelDescription& model, size_t block_index, DType exec_dtype);
std::vector<uint64_t> AllBlockWeightBytes(const ModelDescription& model, DType exec_dtype);

// K and V of one decoder layer for the run shape: 2 x max_batch x max_seq_len x num_kv_heads x head_dim x
// DTypeBytes(exec), rounded up to 256 bytes.
uint64_t KvCacheBytesPerLayer(const ModelConfig& config, const RunShape& run, DType exec_dtype);

// Peak activation/temporary bytes of a forward pass at the run shape (prefill of max_batch x max_seq_len tokens,
// the worst case; decode needs less). With T = max_batch x max_seq_len, e = DTypeBytes(exec):
//   hidden_states = 4 x T x hidden x e         (input, residual, normed input, block output)
//   attention     = T x (num_heads + 2 x num_kv_heads) x head_dim x e    (q, k, v)
//                 + T x num_heads x head_dim x e                          (attention output)
//                 + AttentionScoresBytes                                   (the eager path's scores, see there)
//   mlp           = 3 x T x intermediate x e   (gate, up and their product; act(fc_in) for GPT-2/GPT-J);
//                   mixture of experts: at least max(T, min(T, arch::kMoeGroupedTokens) x num_experts_per_tok) x
//                   arch::MoeGroupedBytesPerPair(hidden, moe_intermediate, e) (a prompt's grouped expert products,
//                   or one host-dispatched expert's rows, up to every token); where the blocks hold quantized
//                   weights and T > 1, at least min(T, kMoeGroupedTokens) x num_experts_per_tok pairs' bytes plus
//                   the dequantized scratch of a prompt's quantized experts (arch::MoeDequantScratchExperts (at most
//                   num_experts) x 3 x
//                   hidden x moe_intermediate x e, or hidden x moe_intermediate x e where fewer than two fit)
//   logits        = LogitsTokens x vocab x 4   (fp32 logits of one pass; only on the device that computes the lm_head)
//   embedding     = T x 8                      (token ids / positions; only where an embedding block runs)
//   total = hidden_states + max(attention, mlp) (if it computes a decoder layer) + logits + embedding, each
//   term rounded up to 256 bytes.
// Attention and MLP temporaries are not alive at once (the MLP starts after attention's output is added to the
// residual); GPT-J's parallel block runs them on the same normed input, one after the other, so the same max holds.
// The float32 scores of one chunk of queries of the eager attention, which the executor keeps within
// arch::kAttentionScoreElements (arch/temporaries.h; queries in chunks, at least one row): min(max_batch x num_heads x
// max_seq_len^2, max(kAttentionScoreElements, max_batch x num_heads x max_seq_len)) x 4 bytes x kAttentionScoreCopies,
// plus, for grouped-query attention, the keys and values repeated per head (2 x max_batch x num_heads x max_seq_len x
// head_dim x 4 bytes); rounded up to 256 bytes. (A causal prompt in half precision on a GPU takes the fused kernel,
// which holds none of this; the estimate does not count on it.)
uint64_t AttentionScoresBytes(const ModelConfig& config, const RunShape& run);
// Tokens whose float32 logits one pass holds: min(max_batch x max_seq_len, max(arch::kLogitsTokens, max_batch))
// (Executor::Forward computes every position's logits of longer inputs in consecutive passes).
uint64_t LogitsTokens(const RunShape& run);

struct ActivationEstimate {
  uint64_t hidden_states = 0;
  uint64_t attention = 0;
  uint64_t mlp = 0;
  uint64_t logits = 0;
  uint64_t embedding = 0;
  uint64_t total = 0;
};
// For a device that computes `blocks` (indices into model.blocks); empty -> all zero.
ActivationEstimate EstimateActivations(const ModelDescription& model, const RunShape& run, DType exec_dtype,
                                       const std::vector<size_t>& blocks);
// For a device that computes every block.
ActivationEstimate EstimateActivations(const ModelDescription& model, const RunShape& run, DType exec_dtype);

// Reserve on every GPU that computes a block, for memory LibTorch allocates outside the plan:
//   kAllocatorSlackBytes   kernel temporaries (softmax, casts, index tensors) and caching-allocator rounding
//   kCublasWorkspaceBytes  cuBLAS + cuBLASLt workspaces for the compute stream (32 MiB each on Hopper)
inline constexpr uint64_t kAllocatorSlackBytes = uint64_t{256} << 20;
inline constexpr uint64_t kCublasWorkspaceBytes = uint64_t{64} << 20;
constexpr uint64_t GpuWorkspaceReserveBytes() { return kAllocatorSlackBytes + kCublasWorkspaceBytes; }

// Number of staging buffers for `streamed_blocks` streamed blocks at a prefetch depth (blocks copied ahead of the
// one computing): min(streamed_blocks, prefetch_depth + 1).
uint64_t StagingBufferCount(uint64_t streamed_blocks, uint32_t prefetch_depth);

// What one device holds (bytes), the planner's accounting for humans and for feasibility. Mirrors schema
// DeviceUsage. For "cpu": resident_weights = CPU-tier weights (+ weights of CPU-computed blocks), staging = disk
// staging. For "disk": resident_weights = Disk-tier weights.
struct DeviceAccount {
  std::string device;  // "cuda:0", "cpu", "disk"
  uint64_t resident_weights = 0;
  uint64_t staging = 0;
  uint64_t kv_cache = 0;
  uint64_t activations = 0;
  uint64_t workspace_reserve = 0;
  uint64_t total = 0;      // the sum of the above
  uint64_t budget = 0;
  bool unlimited = false;  // no budget given (disk)

  bool fits() const { return unlimited || total <= budget; }
  // "cuda:0 needs 5.12 GiB (resident 3.90 GiB + staging 810.00 MiB + KV 256.00 MiB + activations 120.00 MiB +
  //  reserve 320.00 MiB) but its budget is 4.00 GiB: short by 1.12 GiB"   (zero terms are left out)
  std::string ShortfallMessage() const;
  // "cuda:0: 3.90 GiB of 4.00 GiB (resident ..., ...)"
  std::string Summary() const;
};

}  // namespace bigplan
