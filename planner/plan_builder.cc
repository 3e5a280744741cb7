#include "planner/plan_builder.h"

#include <algorithm>
#include <set>

#include "arch/registry.h"
#include "planner/overlap_check.h"
#include "schema/plan_io.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

schema::DType ToSchema(DType d) { return static_cast<schema::DType>(static_cast<uint8_t>(d)); }

std::string DeviceName(int32_t device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

}  // namespace

bool IsSyntheticFingerprint(const std::string& digest) {
  return digest.rfind(kSyntheticDigestPrefix, 0) == 0;
}

CheckpointFingerprint SyntheticFingerprint(const std::vector<std::string>& shard_names) {
  CheckpointFingerprint fp;
  std::string names;
  for (const std::string& n : shard_names) {
    fp.shards.push_back(ShardFingerprint{n, 0, ""});
    names += n + "\n";
  }
  fp.digest = std::string(kSyntheticDigestPrefix) + Sha256Hex(names);
  return fp;
}

std::vector<DeviceAccount> PlanUsage(const ModelDescription& model, const MemoryBudget& budget,
                                     const std::vector<BlockPlacement>& placement, const Schedule& schedule) {
  struct Sums {
    uint64_t resident = 0, kv = 0, act = 0;
  };
  std::map<int32_t, Sums> arena;  // device arenas (-1 = CPU)
  uint64_t host_weights = 0;
  for (const ScheduledBuffer& b : schedule.buffers) {
    if (b.request.pool.pool != schema::Pool::DeviceArena) {
      if (b.kind == schema::BufferKind::HostWeights) host_weights += b.request.size;
      continue;
    }
    Sums& s = arena[b.request.pool.device];
    if (b.kind == schema::BufferKind::ResidentWeights) s.resident += b.request.size;
    if (b.kind == schema::BufferKind::KvCache) s.kv += b.request.size;
    if (b.kind == schema::BufferKind::Activations) s.act += b.request.size;
  }
  std::vector<DeviceAccount> out;
  std::set<int32_t> gpus;
  for (const auto& [ordinal, bytes] : budget.gpus) gpus.insert(ordinal);
  for (const auto& [device, sums] : arena)
    if (device >= 0) gpus.insert(device);
  for (int32_t g : gpus) {
    DeviceAccount a;
    a.device = DeviceName(g);
    auto it = arena.find(g);
    const uint64_t size = schedule.memory.ArenaSizeOf({schema::Pool::DeviceArena, g});
    if (it != arena.end()) {
      a.resident_weights = it->second.resident;
      a.kv_cache = it->second.kv;
      a.activations = it->second.act;
      a.staging = size - std::min(size, a.resident_weights + a.kv_cache + a.activations);
      a.workspace_reserve = GpuWorkspaceReserveBytes();
    }
    a.total = size + a.workspace_reserve;
    auto b = budget.gpus.find(g);
    if (b != budget.gpus.end()) a.budget = b->second;
    out.push_back(a);
  }
  const uint64_t pinned = schedule.memory.ArenaSizeOf({schema::Pool::PinnedHost, -1});
  const uint64_t cpu_arena = schedule.memory.ArenaSizeOf({schema::Pool::DeviceArena, -1});
  if (budget.cpu || pinned > 0 || cpu_arena > 0) {
    DeviceAccount a;
    a.device = "cpu";
    a.resident_weights = host_weights;
    a.staging = pinned - std::min(pinned, host_weights);
    auto it = arena.find(-1);
    if (it != arena.end()) {
      a.resident_weights += it->second.resident;
      a.kv_cache = it->second.kv;
      a.activations = it->second.act;
      a.staging += cpu_arena - std::min(cpu_arena, it->second.resident + it->second.kv + it->second.act);
    }
    a.total = pinned + cpu_arena;
    a.budget = budget.cpu.value_or(0);
    a.unlimited = !budget.cpu.has_value();  // no cpu budget: disk staging is not capped (as Accelerate)
    out.push_back(a);
  }
  uint64_t disk = 0;
  for (size_t i = 0; i < model.blocks.size() && i < placement.size(); ++i) {
    const std::vector<Tier> tiers = WeightTiersOf(placement[i], model.blocks[i].params.size() + model.blocks[i].tied.size());
    for (size_t w = 0; w < model.blocks[i].params.size(); ++w)
      if (tiers[w] == Tier::kDisk) disk += model.blocks[i].params[w].bytes();
  }
  if (budget.disk || disk > 0) {
    DeviceAccount a;
    a.device = "disk";
    a.resident_weights = disk;
    a.total = disk;
    a.budget = budget.disk.value_or(0);
    a.unlimited = !budget.disk.has_value();
    out.push_back(a);
  }
  return out;
}

Result<std::vector<uint8_t>> BuildPlan(const PlanContent& c) {
  if (!c.model || !c.schedule) return MakeError(ErrorCode::kInternal, "BuildPlan: model or schedule missing");
  const ModelDescription& model = *c.model;
  const bool tp = c.tensor_parallel > 0;
  if (tp && (c.source_model == nullptr || c.shard == nullptr || c.slices == nullptr ||
             c.shard->size() != model.blocks.size() || c.slices->size() != model.blocks.size()))
    return MakeError(ErrorCode::kInternal, "BuildPlan: a tensor-parallel plan without its shards");
  // The model as read: the plan's tensors, config, name and digest.
  const ModelDescription& source = tp ? *c.source_model : model;
  const Schedule& sched = *c.schedule;
  const size_t n = model.blocks.size();
  if (c.placement.size() != n || sched.steps.size() != n || c.block_costs.size() != n)
    return MakeError(ErrorCode::kInternal, "BuildPlan: placement, schedule and costs disagree on the block count");

  flatbuffers::FlatBufferBuilder fb(1 << 16);

  // Checkpoint fingerprint and tensors.
  CheckpointFingerprint fp;
  if (c.checkpoint) {
    fp = c.checkpoint->fingerprint();
  } else {
    fp = SyntheticFingerprint(c.synthetic_shards.empty() ? std::vector<std::string>{"model.safetensors"}
                                                         : c.synthetic_shards);
  }
  std::vector<flatbuffers::Offset<schema::ShardInfo>> shards;
  for (const ShardFingerprint& s : fp.shards)
    shards.push_back(schema::CreateShardInfoDirect(fb, s.file_name.c_str(), s.size_bytes, s.header_digest.c_str()));
  auto fingerprint = schema::CreateFingerprintDirect(fb, &shards, fp.digest.c_str(),
                                                     c.config_sha256.empty() ? nullptr : c.config_sha256.c_str());

  std::map<std::string, uint32_t> tensor_index;
  std::vector<flatbuffers::Offset<schema::Tensor>> tensors;
  // Where a checkpoint tensor lies: from the checkpoint, or (planning without weights) its synthetic shard and the
  // given size, dtype and shape. `role` is added to the message when the checkpoint lacks it.
  struct Location {
    uint32_t shard = 0;
    uint64_t offset = 0, size = 0;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  auto locate = [&](const std::string& name, Location fallback, const std::string& role) -> Result<Location> {
    if (c.checkpoint) {
      const TensorLocation* loc = c.checkpoint->Find(name);
      if (!loc)
        return MakeError(ErrorCode::kMismatch,
                         "checkpoint " + c.checkpoint->directory() + " lacks tensor " + name + role);
      return Location{loc->shard, loc->offset, loc->size_bytes, loc->dtype, loc->shape};
    }
    auto it = c.synthetic_shard_of.find(name);
    if (it != c.synthetic_shard_of.end()) fallback.shard = it->second;
    return fallback;
  };
  for (const BlockDesc& block : source.blocks) {
    for (const TensorSpec& p : block.params) {
      if (p.prequant.kind != PreQuant::Kind::kNone) {
        // (v5) A pre-quantized weight: its source tensors, and its own location that of the first.
        std::vector<flatbuffers::Offset<schema::SourceTensor>> sources;
        Location first;
        for (size_t i = 0; i < p.prequant.sources.size(); ++i) {
          const std::string& name = p.prequant.sources[i];
          Location fallback;
          fallback.dtype = p.prequant.kind == PreQuant::Kind::kFp8 ? (i == 0 ? DType::kF8E4M3 : DType::kF32)
                                                                    : (i == 2 ? p.dtype : DType::kI32);
          BIGPLAN_ASSIGN_OR_RETURN(Location loc, locate(name, fallback, " (a source of " + p.name + ")"));
          if (i == 0) first = loc;
          sources.push_back(schema::CreateSourceTensorDirect(fb, name.c_str(), loc.shard, loc.offset, loc.size,
                                                             ToSchema(loc.dtype), &loc.shape));
        }
        tensor_index[p.name] = static_cast<uint32_t>(tensors.size());
        const schema::PreQuantKind kind =
            p.prequant.kind == PreQuant::Kind::kFp8 ? schema::PreQuantKind::Fp8 : schema::PreQuantKind::Gptq;
        tensors.push_back(schema::CreateTensorDirect(
            fb, p.name.c_str(), first.shard, first.offset, first.size, ToSchema(first.dtype), &p.shape, kind,
            static_cast<uint32_t>(p.prequant.block_rows), static_cast<uint32_t>(p.prequant.block_cols),
            p.prequant.v1_zero_offset, &sources));
        continue;
      }
      BIGPLAN_ASSIGN_OR_RETURN(Location loc, locate(p.name, Location{0, 0, p.bytes(), p.dtype, p.shape}, ""));
      tensor_index[p.name] = static_cast<uint32_t>(tensors.size());
      tensors.push_back(schema::CreateTensorDirect(fb, p.name.c_str(), loc.shard, loc.offset, loc.size,
                                                   ToSchema(loc.dtype), &loc.shape));
    }
  }

  // Blocks.
  std::vector<flatbuffers::Offset<schema::Block>> blocks;
  for (size_t i = 0; i < n; ++i) {
    const BlockDesc& bd = model.blocks[i];
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, c.exec_dtype);
    const std::vector<Tier> tiers = WeightTiersOf(c.placement[i], layout.weights.size());
    const TieredLayout tiered = LayoutByTier(layout, tiers);
    std::vector<flatbuffers::Offset<schema::Weight>> weights;
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const WeightSlot& ws = layout.weights[w];
      auto it = tensor_index.find(ws.tensor);
      if (it == tensor_index.end())
        return MakeError(ErrorCode::kInternal, "block " + bd.name + " reads " + ws.tensor + ", which no block owns");
      const bool routed = c.placement[i].routed_experts && tiers[w] != Tier::kGpu && ExpertOfWeight(model, i, w) >= 0;
      arch::TensorSlice slice;
      if (tp) {
        auto s = (*c.slices)[i].find(ws.tensor);
        if (s != (*c.slices)[i].end()) slice = s->second;
      }
      flatbuffers::Offset<flatbuffers::Vector<int64_t>> more_rows;
      if (!slice.more.empty()) {
        std::vector<int64_t> flat;
        for (const auto& [b, e] : slice.more) {
          flat.push_back(b);
          flat.push_back(e);
        }
        more_rows = fb.CreateVector(flat);
      }
      weights.push_back(schema::CreateWeight(fb, it->second, ToSchema(ws.dtype), ws.size_bytes, tiered.offset[w],
                                             ToSchemaTier(tiers[w]), ToSchemaFormat(ws.format),
                                             static_cast<uint32_t>(ws.group), routed, slice.dim, slice.begin,
                                             slice.end, more_rows));
    }
    const BlockBuffers& bb = sched.block_buffers[i];
    blocks.push_back(schema::CreateBlockDirect(fb, bd.name.c_str(), BlockKindName(bd.kind), bd.layer,
                                               bd.prefix.c_str(), c.placement[i].device,
                                               ToSchemaTier(SlowestTier(tiers)), &weights, layout.total_bytes, bb.home,
                                               -1, -1, bb.kv, bb.host, ToSchemaBlockKind(bd.kind),
                                               tp ? (*c.shard)[i] : 0));
  }

  std::vector<flatbuffers::Offset<schema::Buffer>> buffers;
  for (const ScheduledBuffer& b : sched.buffers)
    buffers.push_back(schema::CreateBufferDirect(fb, b.request.name.c_str(), b.kind, b.request.pool.pool,
                                                 b.request.pool.pool == schema::Pool::PinnedHost ? -1
                                                                                                 : b.request.pool.device,
                                                 b.offset, b.request.size, b.request.first_step, b.request.last_step));
  std::vector<flatbuffers::Offset<schema::Arena>> arenas;
  for (const ArenaSize& a : sched.memory.arenas)
    arenas.push_back(schema::CreateArena(fb, a.pool.pool, a.pool.device, a.size));

  std::vector<flatbuffers::Offset<schema::Step>> steps;
  std::map<uint32_t, double> copy_us_of_block;
  for (const DeviceStreamPlan& st : sched.streams)
    for (const StreamUnitPlan& u : st.units) copy_us_of_block[u.block] += UnitCopyMicros(u.bytes, c.profile);
  for (size_t i = 0; i < n; ++i) {
    const ScheduledStep& st = sched.steps[i];
    std::vector<flatbuffers::Offset<schema::Copy>> copies;
    steps.push_back(schema::CreateStepDirect(fb, st.block, &copies, &st.frees, copy_us_of_block[st.block],
                                             c.block_costs[st.block].decode_us, c.block_costs[st.block].prefill_us));
  }

  std::vector<flatbuffers::Offset<schema::Stream>> streams;
  for (const DeviceStreamPlan& st : sched.streams) {
    if (st.units.empty()) continue;
    std::vector<flatbuffers::Offset<schema::Unit>> units;
    for (const StreamUnitPlan& u : st.units) {
      double us = UnitCopyMicros(u.bytes, c.profile);
      if (u.source == Tier::kDisk) us += UnitReadMicros(u.file_bytes, c.profile);
      units.push_back(schema::CreateUnit(fb, u.block, u.weight, u.row_begin, u.row_end, ToSchemaTier(u.source),
                                         u.bytes, u.whole, u.ring_offset, u.wait_unit, u.disk_slot_offset,
                                         u.disk_slot_bytes, u.disk_wait_unit, us, u.host));
    }
    auto ring = sched.ring_buffer.find(st.device);
    auto disk_ring = sched.disk_ring_buffer.find(st.device);
    streams.push_back(schema::CreateStreamDirect(fb, st.device, ring == sched.ring_buffer.end() ? -1 : ring->second,
                                                 disk_ring == sched.disk_ring_buffer.end() ? -1 : disk_ring->second,
                                                 st.chunk_bytes, &units));
  }

  std::vector<flatbuffers::Offset<schema::ExpertRing>> experts;
  for (const auto& [device, r] : c.expert_rings) {
    auto ring = sched.expert_ring_buffer.find(device);
    auto disk = sched.expert_disk_ring_buffer.find(device);
    if (ring == sched.expert_ring_buffer.end())
      return MakeError(ErrorCode::kInternal, "BuildPlan: the schedule has no expert ring for " + DeviceName(device));
    experts.push_back(schema::CreateExpertRing(
        fb, device, ring->second, r.slots, r.slot_bytes, disk == sched.expert_disk_ring_buffer.end() ? -1 : disk->second,
        r.disk_slots, r.cpu_share, r.decode_max_tokens, r.copy_all_tokens, r.expected_resident_bytes,
        r.expected_copied_bytes, r.expected_host_bytes, r.prefetch));
  }

  std::vector<flatbuffers::Offset<schema::Budget>> budgets;
  for (const auto& [device, bytes] : c.budget.Entries())
    budgets.push_back(schema::CreateBudgetDirect(fb, device.c_str(), bytes));

  std::vector<flatbuffers::Offset<schema::DeviceUsage>> usage;
  for (const DeviceAccount& a : c.usage)
    usage.push_back(schema::CreateDeviceUsageDirect(fb, a.device.c_str(), a.resident_weights, a.staging, a.kv_cache,
                                                    a.activations, a.workspace_reserve, a.total, a.budget));

  const ModelConfig& mc = source.config;
  // The RoPE the executor computes, resolved here once (the description was checked with the same rules).
  Result<const arch::FamilyInfo*> family = arch::LookupFamily(source.architecture);
  if (!family.ok()) return WithContext(family.take_error(), "BuildPlan");
  Result<arch::RopeParams> rope_params = arch::ResolveRope(**family, mc);
  if (!rope_params.ok()) return WithContext(rope_params.take_error(), "BuildPlan: model " + source.name);
  auto rope_table = CreateRopeParams(fb, *rope_params);
  const std::string rope = mc.rope_scaling.is_null() ? "" : mc.rope_scaling.dump();
  const std::string config_json = source.hf_config.is_null() ? "{}" : source.hf_config.dump();
  const std::vector<uint8_t> sliding_layers(mc.sliding_window_layers.begin(), mc.sliding_window_layers.end());
  const std::vector<uint8_t> sparse_layers(mc.sparse_layers.begin(), mc.sparse_layers.end());
  auto config = schema::CreateModelConfigDirect(
      fb, source.architecture.c_str(), mc.hidden_size, mc.num_layers, mc.num_heads, mc.num_kv_heads, mc.head_dim,
      mc.intermediate_size, mc.vocab_size, mc.max_position_embeddings, mc.norm_eps, rope_params->theta, mc.rotary_dim,
      mc.attention_bias, mc.mlp_bias, mc.tie_word_embeddings, mc.activation.c_str(), rope.c_str(),
      config_json.c_str(), mc.bos_token_id, &mc.eos_token_ids, mc.sliding_window,
      sliding_layers.empty() ? nullptr : &sliding_layers, mc.scale_attn_weights, mc.scale_attn_by_inverse_layer_idx,
      mc.reorder_and_upcast_attn, rope_table, mc.num_experts, mc.num_experts_per_tok, mc.moe_intermediate_size,
      mc.shared_expert_intermediate_size, mc.norm_topk_prob, sparse_layers.empty() ? nullptr : &sparse_layers,
      mc.qk_norm);

  const DeviceProfile& p = c.profile;
  auto profile = schema::CreateDeviceProfileDirect(fb, p.name.c_str(), p.h2d_gbps, p.d2h_gbps, p.disk_gbps,
                                                   p.device_mem_gbps, p.matmul_tflops, p.cpu_mem_gbps, p.cpu_gflops,
                                                   p.cpu_gemv_gbps, p.h2d_busy_gbps, p.cpu_gemv_fp8_gbps,
                                                   p.cpu_gemv_int8_gbps, p.cpu_gemv_int4_gbps);
  auto run_shape = schema::CreateRunShape(fb, c.run.max_batch, c.run.max_seq_len);
  const std::string digest = source.Digest();
  auto plan = schema::CreatePlanDirect(fb, kPlanVersion, kGeneratorName, c.strategy.c_str(), source.name.c_str(),
                                       digest.c_str(), config, fingerprint, ToSchema(c.exec_dtype), run_shape,
                                       &budgets, profile, &tensors, &blocks, &buffers, &arenas, &steps, &usage,
                                       c.predicted_decode_us, c.predicted_prefill_us, kPlanChecksumPlaceholder,
                                       &streams, ToSchemaFormat(c.weights), c.host_max_tokens,
                                       experts.empty() ? nullptr : &experts, c.tensor_parallel);
  schema::FinishPlanBuffer(fb, plan);
  std::vector<uint8_t> bytes(fb.GetBufferPointer(), fb.GetBufferPointer() + fb.GetSize());
  BIGPLAN_RETURN_IF_ERROR(SealPlan(&bytes));

  auto verified = VerifyPlan(bytes.data(), bytes.size(), "new plan");
  if (!verified.ok()) return MakeError(ErrorCode::kInternal, "the planner wrote an invalid plan: " + verified.error().message);
  Status check = CheckPlanMemory(**verified);
  if (!check.ok()) return MakeError(ErrorCode::kInternal, "the planner's memory plan is unsafe: " + check.error().message);
  for (const DeviceStreamPlan& st : sched.streams) {
    Status streams_ok = CheckDeviceStream(st);
    if (!streams_ok.ok())
      return MakeError(ErrorCode::kInternal, "the planner's stream is unsafe: " + streams_ok.error().message);
  }
  return bytes;
}

}  // namespace bigplan
