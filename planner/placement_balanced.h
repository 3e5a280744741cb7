// The "balanced" and "balanced_low_0" placement strategies: Hugging Face Accelerate 1.15's device_map="balanced" /
// "balanced_low_0" (accelerate.load_checkpoint_and_dispatch), for the same model and budgets. transformers'
// from_pretrained(device_map=...) has its own copy of get_balanced_memory, which counts F32 buffers at full size (so
// its rebalanced budgets can be a few hundred bytes larger); the device maps agree on all the parity fixtures.
//
// Accelerate spreads a model evenly over the GPUs in two steps:
//   1. get_balanced_memory rewrites max_memory (BalancedMaxMemory below): with N = the number of GPUs whose budget is
//      positive and `total` the model's size (Accelerate's sizes, see below),
//        per_gpu = total / (N - 1 if low_zero else N) + int(1.25 x max(first no-split layer, mean leaf module)),
//      every GPU but the last (by ordinal) gets min(per_gpu, its budget), the last keeps its budget (a safety net in
//      case the extra is not enough), and with low_zero the first GPU gets only what the others cannot hold:
//      min(max(0, total - the other GPUs' balanced budgets), its budget). cpu and disk are unchanged.
//      With one GPU nothing changes (and "balanced_low_0" behaves as "balanced").
//   2. infer_auto_device_map with those budgets: this is the "sequential" strategy (planner/placement.h), run on the
//      rebalanced budget.
// The resulting blocks are then accounted (and, with options.enforce_budget, checked) against the request's own
// budget, not the rebalanced one, with bigplan's full accounting (KV cache, activations, staging, reserve), exactly
// as "sequential" does. As there, Accelerate's "cpu"/"disk" modules become Cpu/Disk-tier blocks computed on the main
// GPU (the GPU of the first GPU-placed block, which for "balanced_low_0" is usually not GPU 0).
//
// Accelerate's sizes: numel x the execution dtype's size for floating params, numel x min(exec, own) dtype size for
// floating runtime buffers (e.g. GPT-J's attn.embed_positions), own size otherwise; a tied param counts once, under
// its owner. Unlike "sequential", the total also counts the parameter-free modules' buffers that the reference model
// allocates and that no block owns: for the "llama" architecture (Llama, Mistral, Qwen2, ...), model.rotary_emb's
// inv_freq and original_inv_freq (F32, rotary_dim / 2 each), which are also one of the leaf modules of the mean.
// The no-split layer is the first decoder layer (Accelerate takes the first module of each no-split class).
//
// Registration: both strategies register themselves with RegisterPlacementStrategy when this library is linked
// (its Bazel target is alwayslink, and the registry of planner/placement.cc is constructed on first use, so there
// is no static-initialization-order dependency); RegisterBalancedStrategies() does the same explicitly and is
// idempotent, for callers that want the dependency visible (or link without whole-archive).
#pragma once

#include <cstdint>
#include <vector>

#include "formats/dtype.h"
#include "planner/budget.h"
#include "planner/model_desc.h"
#include "planner/placement.h"

namespace bigplan {

inline constexpr char kBalancedStrategy[] = "balanced";
inline constexpr char kBalancedLowZeroStrategy[] = "balanced_low_0";

// Registers "balanced" and "balanced_low_0" unless already registered. Safe to call any number of times, from any
// thread, before or after static initialization.
void RegisterBalancedStrategies();

// What get_balanced_memory computed, for inspection and tests.
struct BalancedMemory {
  MemoryBudget budget;          // the rebalanced budget that the sequential replay runs on
  uint64_t total_bytes = 0;     // Accelerate's module size of the whole model
  uint64_t no_split_bytes = 0;  // size of the first decoder layer (0 without decoder layers)
  uint64_t mean_leaf_bytes = 0; // int(mean size of the leaf modules)
  uint64_t per_gpu_bytes = 0;   // total / divisor + int(1.25 x max(no_split, mean_leaf)); 0 without GPUs
  uint32_t num_gpus = 0;        // GPUs with a positive budget
};

// Accelerate's get_balanced_memory(model, max_memory=budget, no_split_module_classes=<decoder layer class>,
// dtype=exec_dtype, low_zero) (see the top of this file). GPUs with a zero budget are left as they are and not
// counted. For low_zero, "GPU 0" is the lowest-ordinal GPU with a positive budget and "the others" are the other
// GPUs with a positive budget (Accelerate indexes ordinals 0..N-1 and fails with other ordinals).
BalancedMemory BalancedMaxMemory(const ModelDescription& model, const MemoryBudget& budget, DType exec_dtype,
                                 bool low_zero);

// Device-to-device activation copies of a placement: for each block (parallel to model.blocks), the bytes of hidden
// state the executor copies to the block's compute device from the previous block's compute device before running
// it: 0 for the first block (its input is the token ids), 0 when both blocks are computed on the same device (a
// streamed block is computed on its `device` too, whatever its tier), and otherwise the hidden state
// [max_batch, max_seq_len, hidden_size] at the execution dtype: max_batch x max_seq_len x hidden_size x
// DTypeBytes(exec_dtype), unaligned. That is the prefill (worst case) size; a decode step copies 1/max_seq_len of it.
// Device -1 (CPU compute) counts as a device of its own (a host <-> GPU copy). The token ids, copied once to each
// device that computes blocks, are not hidden state and not counted. Blocks past the end of `blocks` get 0.
std::vector<uint64_t> BoundaryActivationBytes(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                              const RunShape& run, DType exec_dtype);

}  // namespace bigplan
