#include "planner/accounting.h"

#include <algorithm>
#include <optional>
#include <string>

#include "arch/temporaries.h"
#include "support/checked_math.h"
#include "support/units.h"

namespace bigplan {

DType RuntimeDType(DType src_dtype, DType exec_dtype) { return IsFloatingPoint(src_dtype) ? exec_dtype : src_dtype; }

BlockWeightLayout LayoutBlockWeights(const ModelDescription& model, size_t block_index, DType exec_dtype) {
  BlockWeightLayout layout;
  const BlockDesc& b = model.blocks.at(block_index);
  uint64_t offset = 0;
  auto add = [&](const TensorSpec& t, bool tied) {
    WeightSlot w;
    w.tensor = t.name;
    w.tied = tied;
    w.shape = t.shape;
    w.src_dtype = t.dtype;
    w.dtype = RuntimeDType(t.dtype, exec_dtype);
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel = SatMul(numel, d < 0 ? 0 : static_cast<uint64_t>(d));
    w.size_bytes = SatMul(numel, DTypeBytes(w.dtype));
    w.format = t.format;
    w.group = t.group;
    if (t.format != quant::Format::kNone) w.size_bytes = t.bytes_as(exec_dtype);
    w.offset_in_block = offset;
    offset = AlignUp(SatAdd(offset, w.size_bytes));
    layout.weights.push_back(std::move(w));
  };
  for (const TensorSpec& t : b.params) add(t, false);
  for (const std::string& name : b.tied) {
    if (const TensorSpec* t = model.FindParam(name)) add(*t, true);
  }
  layout.total_bytes = offset;
  return layout;
}

uint64_t BlockWeightBytes(const ModelDescription& model, size_t block_index, DType exec_dtype) {
  return LayoutBlockWeights(model, block_index, exec_dtype).total_bytes;
}

std::vector<uint64_t> AllBlockWeightBytes(const ModelDescription& model, DType exec_dtype) {
  std::vector<uint64_t> out(model.blocks.size());
  for (size_t i = 0; i < model.blocks.size(); ++i) out[i] = BlockWeightBytes(model, i, exec_dtype);
  return out;
}

uint64_t KvCacheBytesPerLayer(const ModelConfig& c, const RunShape& run, DType exec_dtype) {
  return AlignUp(SatProduct({2, run.max_batch, run.max_seq_len, c.num_kv_heads, c.head_dim, DTypeBytes(exec_dtype)}));
}

uint64_t AttentionScoresBytes(const ModelConfig& c, const RunShape& run) {
  // One chunk's float32 scores: every query's where they fit the bound, else the bound or one query row.
  const uint64_t whole = SatProduct({run.max_batch, c.num_heads, run.max_seq_len, run.max_seq_len});
  const uint64_t row = SatProduct({run.max_batch, c.num_heads, run.max_seq_len});
  const uint64_t chunk = std::min(whole, std::max<uint64_t>(arch::kAttentionScoreElements, row));
  // LibTorch's eager attention over grouped keys repeats them per head (float32 where it upcasts).
  const uint64_t repeated = c.num_heads != c.num_kv_heads
                                ? SatProduct({2, run.max_batch, c.num_heads, run.max_seq_len, c.head_dim, 4})
                                : 0;
  return AlignUp(SatSum({SatProduct({chunk, 4, arch::kAttentionScoreCopies}), repeated}));
}

namespace {
// Whether any of `blocks` holds a row-quantized weight (plan --weights, or a pre-quantized checkpoint).
bool QuantizedWeights(const ModelDescription& model, const std::vector<size_t>& blocks) {
  for (size_t i : blocks) {
    for (const TensorSpec& p : model.blocks.at(i).params) {
      if (p.format != quant::Format::kNone || p.prequant.kind != PreQuant::Kind::kNone) return true;
    }
  }
  return false;
}
}  // namespace

uint64_t LogitsTokens(const RunShape& run) {
  return std::min<uint64_t>(run.tokens(), std::max<uint64_t>(arch::kLogitsTokens, run.max_batch));
}

ActivationEstimate EstimateActivations(const ModelDescription& model, const RunShape& run, DType exec_dtype,
                                       const std::vector<size_t>& blocks) {
  ActivationEstimate a;
  if (blocks.empty()) return a;
  bool decoder = false, head = false, embed = false;
  for (size_t i : blocks) {
    switch (model.blocks.at(i).kind) {
      case BlockKind::kDecoderLayer: decoder = true; break;
      case BlockKind::kLmHead: head = true; break;
      case BlockKind::kEmbedding:
      case BlockKind::kPositionEmbedding: embed = true; break;
      default: break;
    }
  }
  const ModelConfig& c = model.config;
  const uint64_t t = run.tokens();
  const uint64_t e = DTypeBytes(exec_dtype);
  a.hidden_states = AlignUp(SatProduct({4, t, c.hidden_size, e}));
  if (decoder) {
    a.attention = SatSum({AlignUp(SatProduct({t, uint64_t{c.num_heads} + 2 * uint64_t{c.num_kv_heads}, c.head_dim, e})),
                          AlignUp(SatProduct({t, c.num_heads, c.head_dim, e})), AttentionScoresBytes(c, run)});
    a.mlp = AlignUp(SatProduct({3, t, c.intermediate_size, e}));
    if (c.num_experts > 0) {
      // A prompt over resident experts: one chunk's (token, expert) pairs (arch/temporaries.h); dispatched from the
      // host: one expert's rows at a time, up to every token (its input, [gate; up], SiLU x up, output, weighted).
      const uint64_t pairs =
          SatMul(std::min<uint64_t>(t, arch::kMoeGroupedTokens), std::max<uint32_t>(1, c.num_experts_per_tok));
      const uint64_t per_pair = static_cast<uint64_t>(arch::MoeGroupedBytesPerPair(
          c.hidden_size, c.moe_intermediate_size != 0 ? c.moe_intermediate_size : c.intermediate_size,
          static_cast<int64_t>(e)));
      a.mlp = std::max({a.mlp, AlignUp(SatMul(std::max(pairs, t), per_pair))});
      // Quantized experts' prompts: their dequantized scratch (arch/temporaries.h), or one matrix's dequantized copy
      // where fewer than two experts fit it, beside the pairs' temporaries.
      if (t > 1 && QuantizedWeights(model, blocks)) {
        const uint64_t inter = c.moe_intermediate_size != 0 ? c.moe_intermediate_size : c.intermediate_size;
        const int64_t fit = arch::MoeDequantScratchExperts(static_cast<int64_t>(c.hidden_size),
                                                           static_cast<int64_t>(inter), static_cast<int64_t>(e),
                                                           static_cast<int64_t>(c.num_experts));
        const uint64_t scratch = fit >= 2 ? SatProduct({static_cast<uint64_t>(fit), 3, c.hidden_size, inter, e})
                                          : SatProduct({c.hidden_size, inter, e});
        a.mlp = std::max(a.mlp, SatSum({AlignUp(SatMul(pairs, per_pair)), AlignUp(scratch)}));
      }
    }
  }
  if (head) a.logits = AlignUp(SatProduct({LogitsTokens(run), c.vocab_size, 4}));
  if (embed) a.embedding = AlignUp(SatMul(t, 8));
  a.total = SatSum({a.hidden_states, std::max(a.attention, a.mlp), a.logits, a.embedding});
  return a;
}

ActivationEstimate EstimateActivations(const ModelDescription& model, const RunShape& run, DType exec_dtype) {
  std::vector<size_t> all(model.blocks.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return EstimateActivations(model, run, exec_dtype, all);
}

Status CheckAccountingSizes(const ModelDescription& model, const RunShape& run, DType exec_dtype) {
  const ModelConfig& c = model.config;
  const std::string shape = "run shape batch " + std::to_string(run.max_batch) + " x seq " +
                            std::to_string(run.max_seq_len);
  auto check = [&](std::optional<uint64_t> v, const std::string& what) -> Status {
    if (!v) return MakeError(ErrorCode::kInvalidArgument, shape + ": " + what + " overflow 64 bits");
    if (*v > kMaxAccountedBytes) {
      return MakeError(ErrorCode::kInvalidArgument, shape + ": " + what + " come to " + std::to_string(*v) +
                                                        " bytes, more than the " + std::to_string(kMaxAccountedBytes) +
                                                        " bytes (1 EiB) any plan may account for");
    }
    return Status::Ok();
  };
  const uint64_t e = DTypeBytes(exec_dtype);
  const uint64_t t = run.tokens();
  // Weights: each tensor at its source and runtime dtype, and the model's total.
  uint64_t total = 0;
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& p : b.params) {
      std::optional<uint64_t> numel = 1;
      for (int64_t d : p.shape) numel = numel ? CheckedMul(*numel, d < 0 ? 0 : static_cast<uint64_t>(d)) : numel;
      std::optional<uint64_t> bytes;
      if (numel) bytes = CheckedMul(*numel, std::max<uint64_t>(DTypeBytes(p.dtype), e));
      if (!bytes || *bytes > kMaxAccountedBytes) {
        return MakeError(ErrorCode::kCorrupt, "tensor \"" + p.name + "\" of block " + b.name +
                                                  ": its size overflows (more than 1 EiB)");
      }
      total = SatAdd(total, *bytes);
    }
  }
  if (total > kMaxAccountedBytes) {
    return MakeError(ErrorCode::kCorrupt, "the model's weights come to more than 1 EiB");
  }
  size_t layers = 0;
  for (const BlockDesc& b : model.blocks) layers += b.kind == BlockKind::kDecoderLayer ? 1 : 0;
  const auto kv = CheckedProduct({2, run.max_batch, run.max_seq_len, c.num_kv_heads, c.head_dim, e});
  BIGPLAN_RETURN_IF_ERROR(check(kv, "the KV cache per layer (2 x batch x seq x kv_heads x head_dim x dtype bytes)"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedMul(*kv, layers), "the KV cache of all layers"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedProduct({4, t, c.hidden_size, e}), "the hidden states (4 x batch x seq x hidden)"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedProduct({t, uint64_t{c.num_heads} + 2 * uint64_t{c.num_kv_heads}, c.head_dim, e}),
                                "q, k and v (batch x seq x (heads + 2 x kv_heads) x head_dim)"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedProduct({run.max_batch, c.num_heads, run.max_seq_len, c.head_dim, 8}),
                                "the attention's keys and values repeated per head (2 x batch x heads x seq x head_dim "
                                "x 4 bytes)"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedProduct({3, t, c.intermediate_size, e}), "the MLP temporaries (3 x batch x seq x "
                                                                                 "intermediate)"));
  BIGPLAN_RETURN_IF_ERROR(check(CheckedProduct({LogitsTokens(run), c.vocab_size, 4}),
                                "the logits of one pass (tokens x vocab x 4 bytes)"));
  return Status::Ok();
}

uint64_t StagingBufferCount(uint64_t streamed_blocks, uint32_t prefetch_depth) {
  return std::min<uint64_t>(streamed_blocks, uint64_t{prefetch_depth} + 1);
}

namespace {

std::string Breakdown(const DeviceAccount& a) {
  std::string s;
  auto term = [&](const char* label, uint64_t v) {
    if (v == 0) return;
    s += (s.empty() ? "" : " + ") + std::string(label) + " " + FormatBytes(v);
  };
  const bool host = a.device == "cpu" || a.device == "disk";
  term(host ? "weights" : "resident", a.resident_weights);
  term(a.device == "cpu" ? "disk staging" : "staging", a.staging);
  term("KV", a.kv_cache);
  term("activations", a.activations);
  term("reserve", a.workspace_reserve);
  return s.empty() ? "nothing" : s;
}

}  // namespace

std::string DeviceAccount::ShortfallMessage() const {
  std::string msg = device + " needs " + FormatBytes(total) + " (" + Breakdown(*this) + ") but its budget is " +
                    FormatBytes(budget);
  if (total > budget) msg += ": short by " + FormatBytes(total - budget);
  return msg;
}

std::string DeviceAccount::Summary() const {
  return device + ": " + FormatBytes(total) + " of " + (unlimited ? std::string("unlimited") : FormatBytes(budget)) + " (" +
         Breakdown(*this) + ")";
}

}  // namespace bigplan
