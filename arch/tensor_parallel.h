// Tensor parallelism (plan version 7): every block of a model split over N GPUs, each GPU ("shard") computing a
// slice of every matrix, as Megatron-LM splits a transformer.
//
//   - attention: q, k, v (and their biases) by heads (rows); o_proj by the same heads (columns); Phi-3's fused
//     qkv_proj as three row ranges (the shard's q, k and v heads) and gate_up_proj as two (its gate and up rows);
//   - MLP: gate and up (and their biases) by rows of the intermediate size; down_proj by the same columns;
//   - mixture of experts: every routed expert (and Qwen2-MoE's shared expert) as an MLP, by rows of its
//     intermediate size, so each shard computes part of every chosen expert; the router and the shared expert's
//     sigmoid gate whole (every shard routes every token alike: the same input, the same kernel);
//   - embedding and lm_head (tied or not): by vocabulary rows, shard r holding rows
//     [vocab x r / N, vocab x (r + 1) / N);
//   - GPT-J: q, k, v by heads, out_proj by the same columns, fc_in and its bias by rows, fc_out by the same columns,
//     lm_head's bias by vocabulary rows; its parallel attention and MLP make one partial sum a layer;
//   - GPT-2 (Conv1D [in, out] weights): c_attn by columns as three ranges (the shard's q, k and v heads) and its
//     bias alike, attn.c_proj by the same rows, mlp.c_fc and its bias by columns, mlp.c_proj by the same rows; wpe
//     whole;
//   - norms (and their biases), and o_proj's and down_proj's biases: whole on every shard (shard 0 adds the biases
//     to its part).
// A shard's attention output (after o_proj) and MLP output (after down_proj, or the weighted sum of the experts) are
// partial sums, as are its embedding
// rows (zero for tokens outside its vocabulary slice) and its logits (its slice): the executor adds them over the
// shards (an all-reduce in shard order) so every shard holds the same hidden state.
//
// The rules are the registry's: one place says which families split and how. No LibTorch.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "arch/registry.h"
#include "support/result.h"

namespace bigplan::arch {

// The most shards a plan may have.
inline constexpr uint32_t kMaxTensorParallel = 8;

// dim -1: the whole tensor; else [begin, end) of dimension `dim` (0: rows, 1: columns).
struct TensorSlice {
  int32_t dim = -1;
  int64_t begin = 0;
  int64_t end = 0;
  // Further ranges of `dim` after [begin, end), increasing; the part is their concatenation (a fused tensor's rows,
  // e.g. Phi-3's [q; k; v], or columns, GPT-2's Conv1D c_attn [hidden, q | k | v]).
  std::vector<std::pair<int64_t, int64_t>> more;
  bool whole() const { return dim < 0; }
  // The part's extent along `dim`.
  int64_t extent() const {
    int64_t n = end - begin;
    for (const auto& [b, e] : more) n += e - b;
    return n;
  }
  bool operator==(const TensorSlice&) const = default;
};

// Whether `family`'s model `config` splits over `shards` GPUs (2..kMaxTensorParallel): a model of a family with
// tensor-parallel rules (Llama, Mistral, Qwen2, Mixtral, Qwen2-MoE, Qwen3-MoE, GPT-2, GPT-J, Phi-3), num_heads,
// num_kv_heads, intermediate_size, moe_intermediate_size and shared_expert_intermediate_size divisible by `shards`,
// vocab_size >= shards.
// kUnsupported naming the reason otherwise.
Status CheckTensorParallel(const FamilyInfo& family, const ModelConfig& config, uint32_t shards);

// The all-reduces a decoder layer of `family` makes in tensor parallel: 2 (after the attention and after the MLP), 1
// for GPT-J (its attention and MLP read the same input and add into one output).
uint32_t LayerAllReduces(const FamilyInfo& family);

// The config a shard's kernels compute with: num_heads, num_kv_heads and the intermediate sizes (dense, routed
// experts', shared expert's) divided by `shards`
// (everything else, vocab_size included, unchanged). Requires CheckTensorParallel.
ModelConfig ShardConfig(const ModelConfig& config, uint32_t shards);

// Shard `shard`'s vocabulary rows [begin, end) of a vocabulary of `vocab` rows split `shards` ways.
TensorSlice VocabSlice(int64_t vocab, uint32_t shard, uint32_t shards);

// The part of the tensor bound to `slot` (of shape `shape`, the model's full tensor, stored in `layout`: a Conv1D
// [in, out] matrix splits along the other dimension than a Linear [out, in] one) that shard `shard` holds.
// Requires CheckTensorParallel; kUnsupported for a slot that has no rule.
Result<TensorSlice> ShardSlice(Slot slot, std::span<const int64_t> shape, const ModelConfig& config, uint32_t shard,
                               uint32_t shards, Layout layout = Layout::kLinear);

}  // namespace bigplan::arch
