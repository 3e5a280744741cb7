#include "planner/tensor_parallel.h"

#include <algorithm>
#include <unordered_map>

#include "arch/binding.h"

namespace bigplan {

Result<ShardedModel> ShardModel(const ModelDescription& model, uint32_t shards) {
  const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
  if (family == nullptr)
    return MakeError(ErrorCode::kUnsupported, "unsupported architecture \"" + model.architecture + "\"");
  BIGPLAN_RETURN_IF_ERROR(arch::CheckTensorParallel(*family, model.config, shards));
  std::vector<arch::BlockRef> refs;
  std::unordered_map<std::string, const TensorSpec*> params;
  for (const BlockDesc& b : model.blocks) {
    refs.push_back(arch::BlockRef{b.kind, b.prefix, b.layer});
    for (const TensorSpec& t : b.params) params.emplace(t.name, &t);
  }
  ShardedModel out;
  out.shards = shards;
  out.model.name = model.name;
  out.model.architecture = model.architecture;
  out.model.config = arch::ShardConfig(model.config, shards);
  out.model.hf_config = model.hf_config;
  for (size_t i = 0; i < model.blocks.size(); ++i) {
    const BlockDesc& b = model.blocks[i];
    // The block's tensors, own then tied, as the kernels bind them.
    std::vector<const TensorSpec*> specs;
    std::vector<arch::BlockTensor> tensors;
    for (const TensorSpec& t : b.params) specs.push_back(&t);
    for (const std::string& name : b.tied) {
      auto it = params.find(name);
      if (it == params.end())
        return MakeError(ErrorCode::kMismatch, "block " + b.name + ": tied tensor '" + name + "' is no block's param");
      specs.push_back(it->second);
    }
    for (const TensorSpec* t : specs) tensors.push_back(arch::BlockTensor{t->name, t->shape});
    BIGPLAN_ASSIGN_OR_RETURN(arch::SlotTable table,
                             arch::BindBlock(*family, model.config, refs, i, tensors, b.name));
    // (Expert 0's gate is slot kCount: whether a tensor is bound is kept apart.)
    std::vector<arch::Slot> slot_of(specs.size(), arch::Slot::kCount);
    std::vector<bool> bound(specs.size(), false);
    for (size_t s = 0; s < table.size(); ++s) {
      if (table[s] < 0) continue;
      slot_of[table[s]] = static_cast<arch::Slot>(s);
      bound[table[s]] = true;
    }
    for (uint32_t r = 0; r < shards; ++r) {
      BlockDesc shard = b;
      shard.params.clear();
      shard.tied.clear();
      std::map<std::string, arch::TensorSlice> slices;
      for (size_t t = 0; t < specs.size(); ++t) {
        if (!bound[t])
          return MakeError(ErrorCode::kInternal, "block " + b.name + ": " + specs[t]->name + " bound to no slot");
        const arch::TensorRule* rule = arch::FindSlotRule(*family, b.kind, slot_of[t]);
        Result<arch::TensorSlice> slice = arch::ShardSlice(slot_of[t], specs[t]->shape, model.config, r, shards,
                                                           rule != nullptr ? rule->layout : arch::Layout::kLinear);
        if (!slice.ok()) return WithContext(slice.take_error(), "tensor parallelism: block " + b.name + ", " + specs[t]->name);
        TensorSpec p = *specs[t];
        if (!slice->whole()) {
          p.shape[slice->dim] = slice->extent();
          slices[p.name] = *slice;
          if (p.format != quant::Format::kNone && slice->dim == 1 && !slice->more.empty() &&
              p.prequant.kind != PreQuant::Kind::kNone) {
            // (A pre-quantized weight is converted whole at load, then cut to one range of columns.)
            return MakeError(ErrorCode::kUnsupported,
                             "tensor parallelism: block " + b.name + ", " + p.name +
                                 ": a pre-quantized weight's columns split into several ranges (a fused Conv1D "
                                 "weight's) are not taken");
          }
          if (p.format != quant::Format::kNone && slice->dim == 1) {
            // A quantized weight's columns (--weights, or a pre-quantized checkpoint's): scaled per row of the
            // shard's columns where the whole weight was scaled per row (a pre-quantized weight keeps its row's
            // scale), else in the same groups, which the shard's columns must hold whole. Act-order GPTQ permutes
            // its columns at load: a shard cannot take a range of them.
            if (p.prequant.act_order) {
              return MakeError(ErrorCode::kUnsupported,
                               "tensor parallelism: block " + b.name + ", " + p.name +
                                   ": an act-order GPTQ weight (desc_act, or a permuted g_idx) does not split by "
                                   "columns");
            }
            const int64_t whole_cols = specs[t]->shape[1], cols = p.shape[1];
            if (p.group == whole_cols) {
              p.group = cols;
            } else if (p.group <= 0 || cols % p.group != 0 || slice->begin % p.group != 0 ||
                       (slice->end - slice->begin) % p.group != 0 ||
                       std::any_of(slice->more.begin(), slice->more.end(), [&](const auto& range) {
                         return range.first % p.group != 0 || (range.second - range.first) % p.group != 0;
                       })) {
              return MakeError(ErrorCode::kUnsupported,
                               "tensor parallelism: block " + b.name + ", " + p.name + ": " +
                                   quant::FormatName(p.format) + " groups of " + std::to_string(p.group) +
                                   " columns do not fit a shard's " + std::to_string(cols) + " columns" +
                                   (p.prequant.kind != PreQuant::Kind::kNone ? " (the checkpoint's groups)"
                                                                             : " (--weights-group)"));
            }
          }
        }
        shard.params.push_back(std::move(p));
      }
      out.model.blocks.push_back(std::move(shard));
      out.shard.push_back(r);
      out.slices.push_back(std::move(slices));
    }
  }
  return out;
}

std::vector<BlockPlacement> ShardPlacement(const ShardedModel& sharded, const std::vector<int32_t>& gpus) {
  std::vector<BlockPlacement> out(sharded.model.blocks.size());
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].device = gpus[sharded.shard[i]];
    out[i].tier = Tier::kGpu;
  }
  return out;
}

ModelDescription ShardOf(const ShardedModel& sharded, uint32_t shard) {
  ModelDescription m;
  m.name = sharded.model.name;
  m.architecture = sharded.model.architecture;
  m.config = sharded.model.config;
  m.hf_config = sharded.model.hf_config;
  for (size_t i = 0; i < sharded.model.blocks.size(); ++i)
    if (sharded.shard[i] == shard) m.blocks.push_back(sharded.model.blocks[i]);
  return m;
}

Result<Placement> StreamedShardPlacement(const ShardedModel& sharded, const std::vector<int32_t>& gpus,
                                         const PlacementRequest& request, Placement* one_shard) {
  const uint32_t n = sharded.shards;
  const uint32_t ref = n - 1;
  const ModelDescription shard = ShardOf(sharded, ref);
  PlacementRequest req = request;
  req.model = &shard;
  uint64_t smallest = UINT64_MAX;
  for (int32_t g : gpus) smallest = std::min(smallest, request.budget.gpus.at(g));
  req.budget.gpus = {{gpus[ref], smallest}};
  if (request.budget.cpu) req.budget.cpu = *request.budget.cpu / n;
  if (request.budget.disk) req.budget.disk = *request.budget.disk / n;
  req.options.auto_candidates = "BPC";
  BIGPLAN_ASSIGN_OR_RETURN(Placement p, PlaceModel("auto", req));
  // Every shard as the reference, on its own GPU.
  Placement out;
  out.strategy = p.strategy;
  const size_t per = shard.blocks.size();
  if (per == 0 || sharded.model.blocks.size() != per * n)
    return MakeError(ErrorCode::kInternal, "tensor parallelism: shards of unequal block counts");
  for (size_t i = 0; i < sharded.model.blocks.size(); ++i) {
    const size_t k = i / n;  // the block's position within its shard
    BlockPlacement b = p.blocks[k];
    if (b.device != gpus[ref])
      return MakeError(ErrorCode::kInfeasible, "tensor parallelism: a shard would compute " + shard.blocks[k].name +
                                                   " on the CPU");
    b.device = gpus[sharded.shard[i]];
    const std::vector<Tier> tiers = WeightTiersOf(b, sharded.model.blocks[i].params.size());
    for (size_t w = 0; w < tiers.size(); ++w) {
      auto slice = sharded.slices[i].find(sharded.model.blocks[i].params[w].name);
      if (tiers[w] == Tier::kDisk && slice != sharded.slices[i].end() &&
          (slice->second.dim == 1 || !slice->second.more.empty()))
        return MakeError(ErrorCode::kInfeasible,
                         "tensor parallelism: " + sharded.model.blocks[i].params[w].name + "'s " +
                             (slice->second.dim == 1 ? "columns" : "row ranges") +
                             " would rest on disk, which is read in one range of rows: raise the cpu budget");
    }
    out.blocks.push_back(std::move(b));
  }
  for (int32_t g : gpus) {
    if (auto r = p.ring_bytes.find(gpus[ref]); r != p.ring_bytes.end()) out.ring_bytes[g] = r->second;
    if (auto c = p.chunk_bytes.find(gpus[ref]); c != p.chunk_bytes.end()) out.chunk_bytes[g] = c->second;
  }
  *one_shard = std::move(p);
  return out;
}

double AllReduceMicros(double bytes, uint32_t shards, bool graphs) {
  return (graphs ? kAllReduceMicros : kAllReduceEagerMicros) + bytes * (shards - 1) / (kPeerGbps * 1e3);
}

double TensorParallelPassMicros(const ShardedModel& sharded, const std::vector<double>& step_us,
                                const std::vector<double>& host_us, uint64_t tokens, uint64_t logit_rows, DType exec,
                                bool graphs) {
  const uint32_t n = sharded.shards;
  const ModelConfig& c = sharded.model.config;
  const double e = DTypeBytes(exec);
  const double hidden_bytes = static_cast<double>(tokens) * c.hidden_size * e;
  const arch::FamilyInfo* family = arch::FindFamily(sharded.model.architecture);
  const uint32_t layer_reduces = family != nullptr ? arch::LayerAllReduces(*family) : 2;
  double total = 0;
  for (size_t i = 0; i + n <= sharded.model.blocks.size(); i += n) {
    double device = 0, host = 0;
    for (uint32_t r = 0; r < n; ++r) {
      device = std::max(device, step_us[i + r]);
      if (!host_us.empty()) host += host_us[i + r];
    }
    double reduce = 0;
    switch (sharded.model.blocks[i].kind) {
      case BlockKind::kEmbedding:
        reduce = AllReduceMicros(hidden_bytes, n, graphs);
        break;
      case BlockKind::kDecoderLayer:
        reduce = layer_reduces * AllReduceMicros(hidden_bytes, n, graphs);
        break;
      case BlockKind::kLmHead:
        reduce = AllReduceMicros(static_cast<double>(logit_rows) * c.vocab_size * e, n, graphs);
        break;
      default:
        break;
    }
    total += std::max(device, host) + reduce;
  }
  return total;
}

}  // namespace bigplan
