#include "arch/tensor_parallel.h"

namespace bigplan::arch {

Status CheckTensorParallel(const FamilyInfo& family, const ModelConfig& c, uint32_t shards) {
  auto no = [&](const std::string& why) {
    return MakeError(ErrorCode::kUnsupported, "tensor parallelism over " + std::to_string(shards) + " GPUs: " + why);
  };
  if (shards < 2 || shards > kMaxTensorParallel)
    return no("takes 2 to " + std::to_string(kMaxTensorParallel) + " GPUs");
  const bool moe = family.family == Family::kMixtral || family.family == Family::kQwen2Moe ||
                   family.family == Family::kQwen3Moe;
  if (family.family != Family::kLlama && family.family != Family::kGpt2 && family.family != Family::kGptj &&
      family.family != Family::kPhi3 && !moe) {
    return no(std::string("the ") + family.name + " family has no tensor-parallel rules (llama, mistral, qwen2, "
              "mixtral, qwen2_moe, qwen3_moe, gpt2, gptj, phi3 do)");
  }
  if (!moe && c.num_experts > 0) return no("mixture-of-experts layers of the " + std::string(family.name) +
                                           " family are not split");
  if (c.num_heads % shards != 0 || c.num_kv_heads % shards != 0)
    return no(std::to_string(c.num_heads) + " heads and " + std::to_string(c.num_kv_heads) +
              " key/value heads do not divide evenly");
  if (c.intermediate_size % shards != 0)
    return no("intermediate_size " + std::to_string(c.intermediate_size) + " does not divide evenly");
  if (c.num_experts > 0 && c.moe_intermediate_size % shards != 0)
    return no("moe_intermediate_size " + std::to_string(c.moe_intermediate_size) + " does not divide evenly");
  if (c.shared_expert_intermediate_size % shards != 0) {
    return no("shared_expert_intermediate_size " + std::to_string(c.shared_expert_intermediate_size) +
              " does not divide evenly");
  }
  if (c.vocab_size < shards) return no("the vocabulary is smaller than the GPU count");
  return Status::Ok();
}

uint32_t LayerAllReduces(const FamilyInfo& family) { return family.family == Family::kGptj ? 1 : 2; }

ModelConfig ShardConfig(const ModelConfig& config, uint32_t shards) {
  ModelConfig c = config;
  c.num_heads /= shards;
  c.num_kv_heads /= shards;
  c.intermediate_size /= shards;
  c.moe_intermediate_size /= shards;
  c.shared_expert_intermediate_size /= shards;
  return c;
}

TensorSlice VocabSlice(int64_t vocab, uint32_t shard, uint32_t shards) {
  return TensorSlice{0, vocab * shard / shards, vocab * (shard + 1) / shards};
}

Result<TensorSlice> ShardSlice(Slot slot, std::span<const int64_t> shape, const ModelConfig& c, uint32_t shard,
                               uint32_t shards, Layout layout) {
  // A Conv1D matrix [in, out] is a Linear one [out, in] transposed: its rule's dimension is the other one.
  const bool conv1d = layout == Layout::kConv1D;
  auto dim_of = [conv1d](int32_t linear_dim) { return conv1d ? 1 - linear_dim : linear_dim; };
  auto part = [&](int32_t dim, int64_t unit) -> Result<TensorSlice> {
    if (dim >= static_cast<int32_t>(shape.size()) || shape[dim] % shards != 0 || unit <= 0 ||
        shape[dim] / shards % unit != 0) {
      return MakeError(ErrorCode::kInvalidArgument, "slot " + SlotName(slot) + ": its dimension " +
                                                        std::to_string(dim) + " does not split " +
                                                        std::to_string(shards) + " ways");
    }
    const int64_t n = shape[dim] / shards;
    return TensorSlice{dim, n * shard, n * (shard + 1)};
  };
  const int64_t hd = c.head_dim;
  if (IsExpertSlot(slot)) {
    // A routed expert as a SwiGLU MLP: gate and up by rows of moe_intermediate_size, down by the same columns.
    return ExpertRole(slot) == Slot::kExpertDown ? part(1, 1) : part(0, 1);
  }
  switch (slot) {
    case Slot::kTokenEmbedding:
    case Slot::kLmHead:
    case Slot::kLmHeadBias:  // (GPT-J) its rows with the lm_head's
      if (shape.empty()) return MakeError(ErrorCode::kInvalidArgument, "slot " + SlotName(slot) + " is a scalar");
      return VocabSlice(shape[0], shard, shards);
    case Slot::kInputNorm:
    case Slot::kInputNormBias:
    case Slot::kPostNorm:
    case Slot::kPostNormBias:
    case Slot::kPositionEmbedding:  // (GPT-2's wpe) every shard adds it to the whole hidden state
    case Slot::kFinalNorm:
    case Slot::kFinalNormBias:
    case Slot::kQNorm:
    case Slot::kKNorm:
    case Slot::kOBias:      // added once, by shard 0, to the sum
    case Slot::kDownBias:
    case Slot::kRouter:            // every shard routes every token alike
    case Slot::kSharedExpertGate:  // [1, hidden]: the same scale of every shard's part of the shared expert
      return TensorSlice{};
    case Slot::kQ:
    case Slot::kQBias:
    case Slot::kK:
    case Slot::kKBias:
    case Slot::kV:
    case Slot::kVBias:
      return part(0, hd);  // whole heads
    case Slot::kO:
      return part(dim_of(1), hd);
    case Slot::kQkv:
    case Slot::kQkvBias: {
      // [q; k; v] rows (a Conv1D weight's columns, a bias's elements): the shard's q heads, then its k heads, then
      // its v heads.
      const int32_t dim = slot == Slot::kQkvBias ? 0 : dim_of(0);
      const size_t rank = slot == Slot::kQkvBias ? 1 : 2;
      const int64_t q = int64_t{c.num_heads} * hd, kv = int64_t{c.num_kv_heads} * hd;
      if (shape.size() != rank || shape[dim] != q + 2 * kv || q % shards != 0 || kv % shards != 0 ||
          q / shards % hd != 0 || kv / shards % hd != 0) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "slot " + SlotName(slot) + ": its " +
                             std::to_string(shape.size() > static_cast<size_t>(dim) ? shape[dim] : 0) + " " +
                             (dim == 0 ? "rows" : "columns") + " do not split into whole heads " +
                             std::to_string(shards) + " ways");
      }
      const int64_t qs = q / shards, ks = kv / shards;
      return TensorSlice{dim, qs * shard, qs * (shard + 1),
                         {{q + ks * shard, q + ks * (shard + 1)}, {q + kv + ks * shard, q + kv + ks * (shard + 1)}}};
    }
    case Slot::kGateUp: {
      // [gate; up] rows: the shard's gate rows, then its up rows.
      const int64_t inter = c.intermediate_size;
      if (shape.size() != 2 || shape[0] != 2 * inter || inter % shards != 0) {
        return MakeError(ErrorCode::kInvalidArgument, "slot gate_up: its " +
                                                          std::to_string(shape.empty() ? 0 : shape[0]) +
                                                          " rows do not split " + std::to_string(shards) + " ways");
      }
      const int64_t is = inter / shards;
      return TensorSlice{0, is * shard, is * (shard + 1), {{inter + is * shard, inter + is * (shard + 1)}}};
    }
    case Slot::kGate:
    case Slot::kGateBias:
    case Slot::kUp:
    case Slot::kUpBias:
      return part(0, 1);
    case Slot::kSharedGate:
    case Slot::kSharedUp:
    case Slot::kFcIn:      // (GPT-J, GPT-2) by rows of the intermediate size, as gate and up
      return part(dim_of(0), 1);
    case Slot::kFcInBias:
      return part(0, 1);
    case Slot::kDown:
    case Slot::kSharedDown:
      return part(dim_of(1), 1);
    default:
      return MakeError(ErrorCode::kUnsupported, "slot " + SlotName(slot) + " has no tensor-parallel rule");
  }
}

}  // namespace bigplan::arch
