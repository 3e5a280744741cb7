#include "planner/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "arch/registry.h"
#include "formats/checkpoint.h"
#include "planner/hf_import.h"
#include "planner/memory_plan.h"
#include "planner/placement_balanced.h"
#include "planner/plan_builder.h"
#include "planner/tensor_parallel.h"
#include "planner/validate.h"
#include "planner/weight_format.h"
#include "schema/plan_io.h"
#include "support/file_read.h"
#include "support/json_parse.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

bool HasSafetensors(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0) return true;
  }
  return false;
}

// Shard names of DIR/model.safetensors.index.json, in first-appearance order, and each tensor's shard.
Status ReadIndexShards(const std::string& dir, ResolvedModel* out) {
  const std::string path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (!fs::exists(path)) return Status::Ok();
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kIndexFile));
  BIGPLAN_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonStrict(text, path));
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    return MakeError(ErrorCode::kCorrupt, path + ": not a safetensors index (no \"weight_map\" object)");
  std::map<std::string, uint32_t> shard_index;
  // weight_map is ordered by tensor name in nlohmann::json; shard order follows file names for determinism.
  std::set<std::string> files;
  for (const auto& [tensor, file] : j["weight_map"].items()) {
    if (!file.is_string()) return MakeError(ErrorCode::kCorrupt, path + ": weight_map[\"" + tensor + "\"] is not a string");
    BIGPLAN_RETURN_IF_ERROR(CheckShardNameContained(file.get<std::string>(), tensor, path));
    files.insert(file.get<std::string>());
  }
  for (const std::string& f : files) {
    shard_index[f] = static_cast<uint32_t>(out->synthetic_shards.size());
    out->synthetic_shards.push_back(f);
  }
  for (const auto& [tensor, file] : j["weight_map"].items())
    out->synthetic_shard_of[tensor] = shard_index[file.get<std::string>()];
  return Status::Ok();
}

bool SameDirectory(const std::string& a, const std::string& b) {
  std::error_code ec;
  const bool same = fs::equivalent(a.empty() ? "." : a, b.empty() ? "." : b, ec);
  return !ec && same;
}

// The directory's base name, as ImportExample names the bundled examples.
std::string ModelName(const std::string& dir) {
  const fs::path d = fs::path(dir).lexically_normal();
  return d.filename().empty() ? d.parent_path().filename().string() : d.filename().string();
}

void Progress(const PlanRequest& r, const std::string& message) {
  if (r.progress) r.progress(message);
}

}  // namespace

Result<Schedule> ScheduleFor(const ModelDescription& model, const PlanRequest& request, const Placement& placement,
                             DType exec, const HostRows* host_rows) {
  const size_t n = model.blocks.size();
  std::vector<ScheduleBlock> sblocks(n);
  std::map<int32_t, std::vector<size_t>> blocks_of_device;
  const uint64_t kv_per_layer = KvCacheBytesPerLayer(model.config, request.run, exec);
  for (size_t i = 0; i < n; ++i) {
    const BlockPlacement& bp = placement.blocks[i];
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, exec);
    const TieredLayout tiered = LayoutByTier(layout, WeightTiersOf(bp, layout.weights.size()));
    sblocks[i].name = model.blocks[i].name;
    sblocks[i].device = bp.device;
    sblocks[i].resident_bytes = tiered.resident_bytes;
    sblocks[i].host_bytes = bp.device < 0 ? tiered.host_bytes : tiered.host_bytes;
    sblocks[i].kv_bytes = model.blocks[i].kind == BlockKind::kDecoderLayer ? kv_per_layer : 0;
    blocks_of_device[bp.device].push_back(i);
  }
  ScheduleOptions sopt;
  sopt.memory_algorithm = request.memory_algorithm;
  for (const auto& [device, ring] : ExpertRingsFor(model, placement.blocks, exec))
    sopt.expert_rings[device] = {ring.ring_bytes(), ring.disk_ring_bytes()};
  for (const auto& [device, blocks] : blocks_of_device)
    sopt.activation_bytes[device] = EstimateActivations(model, request.run, exec, blocks).total;
  std::vector<DeviceStreamPlan> streams;
  for (const auto& [device, blocks] : blocks_of_device) {
    std::vector<StreamWeight> weights = StreamWeightsFor(model, placement.blocks, exec, device);
    if (weights.empty()) continue;
    StreamOptions so;
    auto ring = placement.ring_bytes.find(device);
    so.ring_bytes = ring != placement.ring_bytes.end() ? ring->second : DefaultRingBytes(weights, 1);
    if (host_rows != nullptr && !host_rows->empty()) {
      const uint64_t before = LargestBlockStream(weights);
      for (StreamWeight& w : weights) {
        auto it = host_rows->find({w.block, w.weight});
        if (it != host_rows->end()) w.host_rows = it->second;
      }
      // A weight split for the host lies in two aligned chunks: keep the slots' count.
      const uint64_t after = LargestBlockStream(weights);
      if (after > before && before > 0) so.ring_bytes = so.ring_bytes / before * after + so.ring_bytes % before;
    }
    auto chunk = placement.chunk_bytes.find(device);
    if (chunk != placement.chunk_bytes.end()) so.chunk_bytes = chunk->second;
    if (request.chunk_bytes) so.chunk_bytes = *request.chunk_bytes;
    if (device < 0) so.disk_slots = 0;
    BIGPLAN_ASSIGN_OR_RETURN(DeviceStreamPlan st, BuildDeviceStream(device, weights, so));
    streams.push_back(std::move(st));
  }
  return BuildSchedule(sblocks, std::move(streams), sopt);
}

namespace {

struct StepCostOptions {
  bool graph_decode = false;  // decode steps replayed from CUDA graphs (all resident, eligible family)
  uint32_t host_tokens = 0;   // > 0: a decode forward that computes the schedule's host units on the host
};

// Per-block costs of a schedule at `run` (decode: run.max_batch tokens; prefill: run.max_batch x run.max_seq_len),
// each step's hidden-state hop to another GPU included in its decode and prefill times (and given apart too).
struct StepCosts {
  std::vector<BlockWork> work;
  std::vector<BlockCost> blocks;
  std::vector<double> decode_us, prefill_us;
  std::vector<double> prefill_hop_us;  // the hop before the block in a prefill (0 where none)
};

// A graph-captured decode step reads a sparse layer's chosen experts on the device (all resident): the registry's
// kernel count for that path, and its per-choice term (BlockWork::device_expert_choices).
void ExpertsOnDevice(const ModelDescription& model, size_t i, BlockWork* work) {
  if (model.config.num_experts == 0 || model.blocks[i].kind != BlockKind::kDecoderLayer ||
      !model.config.SparseLayer(model.blocks[i].layer) || work->decode_kernels == 0) {
    return;
  }
  if (const arch::FamilyInfo* family = arch::FindFamily(model.architecture)) {
    work->decode_kernels = arch::DecodeBlockKernels(*family, BlockKind::kDecoderLayer, model.config, true);
    work->device_expert_choices = model.config.num_experts_per_tok;
  }
}

StepCosts StepCostsOf(const ModelDescription& model, DType exec, const std::vector<int32_t>& devices,
                      const DeviceProfile& profile, const RunSize& run, const Schedule& sc,
                      const StepCostOptions& opt) {
  const size_t n = model.blocks.size();
  const bool graph_decode = opt.graph_decode;
  const uint32_t host_tokens = opt.host_tokens;
  StepCosts out;
  std::map<uint32_t, uint32_t> chunks_of_block, host_weights_of_block;
  for (const DeviceStreamPlan& st : sc.streams) {
    for (size_t u = 0; u < st.units.size(); ++u) {
      const StreamUnitPlan& un = st.units[u];
      if (un.whole) continue;
      if (host_tokens > 0 && un.host) {
        // The host's product: the activation's cast and copy out, the result's copy in and its placement.
        if (u == 0 || !st.units[u - 1].host) host_weights_of_block[un.block] += 1;
      } else {
        chunks_of_block[un.block] += 1;
      }
    }
  }
  out.work.assign(n, {});
  out.blocks.assign(n, {});
  out.decode_us.assign(n, 0);
  out.prefill_us.assign(n, 0);
  out.prefill_hop_us.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    BlockWork work = DescribeBlockWork(model, i, exec);
    if (graph_decode) ExpertsOnDevice(model, i, &work);
    // A chunked weight is computed chunk by chunk: one matmul and one copy into the output per chunk.
    const uint32_t extra = 2 * chunks_of_block[static_cast<uint32_t>(i)] + 3 * host_weights_of_block[static_cast<uint32_t>(i)];
    work.kernels += extra;
    work.cpu_kernels += extra;
    // Chunked weights are not whole: their layer's products run one by one, as a prefill's do.
    work.decode_kernels =
        chunks_of_block[static_cast<uint32_t>(i)] > 0 || work.decode_kernels == 0 ? 0 : work.decode_kernels + extra;
    out.blocks[i] = EstimateBlockCost(work, run, devices[i], profile);
    out.decode_us[i] = graph_decode ? GraphDecodeMicros(out.blocks[i]) : out.blocks[i].decode_us;
    // A block the host computes part of waits for the GPU at each host product (its input must be on the host):
    // the host cannot dispatch ahead of the GPU, so dispatch and GPU time add up (the products are added by the
    // simulation).
    if (host_weights_of_block[static_cast<uint32_t>(i)] > 0)
      out.decode_us[i] = out.blocks[i].host_us + out.blocks[i].decode_device_us;
    out.prefill_us[i] = out.blocks[i].prefill_us;
    out.work[i] = work;
  }
  // The hidden state's hop to another GPU before a step (cost_model.h kDeviceHopMicros, kDeviceHopEagerMicros).
  int32_t prev = -1;
  for (const ScheduledStep& step : sc.steps) {
    const int32_t d = devices[step.block];
    if (prev >= 0 && d >= 0 && d != prev) {
      const double bytes = static_cast<double>(model.config.hidden_size) * DTypeBytes(exec);
      out.decode_us[step.block] +=
          (graph_decode ? kDeviceHopMicros : kDeviceHopEagerMicros) + bytes * run.max_batch / (kPeerGbps * 1e3);
      out.prefill_hop_us[step.block] =
          kDeviceHopEagerMicros + bytes * run.max_batch * run.max_seq_len / (kPeerGbps * 1e3);
      out.prefill_us[step.block] += out.prefill_hop_us[step.block];
    }
    prev = d;
  }
  return out;
}

// A batched prefill (rows x tokens, the logits of each row's last position) of a tensor-parallel plan: every
// shard at once, issued eagerly, with the all-reduces of rows x tokens hidden states. *host_us: the host's issue
// time.
double TensorParallelBatchedPrefill(const ShardedModel& sharded, const std::vector<int32_t>& devices,
                                    const DeviceProfile& profile, DType exec, uint32_t rows, uint32_t tokens,
                                    double* host_us_total) {
  const size_t n = sharded.model.blocks.size();
  std::vector<double> device_us(n), host_us(n);
  *host_us_total = 0;
  for (size_t i = 0; i < n; ++i) {
    const BlockWork work = DescribeBlockWork(sharded.model, i, exec);
    const bool head = sharded.model.blocks[i].kind == BlockKind::kLmHead;
    const BlockCost c = EstimateBlockCost(work, RunSize{rows, head ? 1 : tokens}, devices[i], profile);
    device_us[i] = c.prefill_device_us;
    host_us[i] = work.kernels * kHostPrefillOpMicros;
    *host_us_total += host_us[i];
  }
  return TensorParallelPassMicros(sharded, device_us, host_us, static_cast<uint64_t>(rows) * tokens, rows, exec,
                                  false);
}

Status CheckAllFit(const std::vector<DeviceAccount>& usage) {
  std::string shortfalls;
  for (const DeviceAccount& a : usage)
    if (!a.fits()) shortfalls += (shortfalls.empty() ? "" : "; ") + a.ShortfallMessage();
  if (shortfalls.empty()) return Status::Ok();
  return MakeError(ErrorCode::kInfeasible, shortfalls);
}

}  // namespace

Result<ResolvedModel> ResolveModel(const PlanRequest& request) {
  ResolvedModel out;
  const int sources = (request.description ? 1 : 0) + (request.description_path.empty() ? 0 : 1) +
                      (request.model_dir.empty() ? 0 : 1);
  if (sources != 1)
    return MakeError(ErrorCode::kInvalidArgument,
                     "give exactly one model source (a description, a description file or a model directory)");
  out.checkpoint_path = request.checkpoint_path;
  if (request.description) {
    out.model = *request.description;
    BIGPLAN_RETURN_IF_ERROR(out.model.Validate());
  } else if (!request.description_path.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(out.model, ModelDescription::Load(request.description_path));
  } else {
    const std::string& dir = request.model_dir;
    if (!fs::is_directory(dir)) return MakeError(ErrorCode::kNotFound, dir + ": no such model directory");
    if (out.checkpoint_path.empty() && HasSafetensors(dir)) out.checkpoint_path = dir;
    std::string config_text;  // the config.json bytes the description was imported from
    if (!out.checkpoint_path.empty()) {
      // The description's dtypes and tensor naming come from the checkpoint.
      BIGPLAN_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(out.checkpoint_path));
      out.checkpoint = std::move(ckpt);
      BIGPLAN_ASSIGN_OR_RETURN(
          out.model,
          ImportHfConfigFile((fs::path(dir) / "config.json").string(), &*out.checkpoint, ModelName(dir), &config_text));
    } else {
      // No weights: config.json, plus tensors.json when present (the bundled examples).
      BIGPLAN_ASSIGN_OR_RETURN(out.model, ImportExample(dir, &config_text));
    }
    if (out.checkpoint_path.empty()) BIGPLAN_RETURN_IF_ERROR(ReadIndexShards(dir, &out));
    // The executor compares this with the config.json next to the shards it loads, so record it only when that is
    // the file the hyperparameters came from.
    if (!out.checkpoint || SameDirectory(out.checkpoint->directory(), dir))
      out.config_sha256 = Sha256Hex(config_text.data(), config_text.size());
  }
  if (!out.checkpoint_path.empty() && !out.checkpoint) {
    BIGPLAN_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(out.checkpoint_path));
    out.checkpoint = std::move(ckpt);
  }
  return out;
}

Result<PlanResult> MakePlan(const PlanRequest& request) {
  PlanResult result;
  Progress(request, "reading the model and its checkpoint's headers");
  BIGPLAN_ASSIGN_OR_RETURN(ResolvedModel resolved, ResolveModel(request));
  result.model = std::move(resolved.model);
  const ModelDescription& model = result.model;
  if (Status bind = model.CheckKernelBinding(); !bind.ok()) {
    return WithContext(bind.take_error(), "model " + model.name + ": the kernels cannot run it");
  }

  const std::optional<Checkpoint>& checkpoint = resolved.checkpoint;
  if (checkpoint) {
    Progress(request, "validating against the checkpoint " + resolved.checkpoint_path);
    BIGPLAN_RETURN_IF_ERROR(ValidateAgainstCheckpoint(model, *checkpoint));
  }
  result.synthetic_checkpoint = !checkpoint.has_value();
  if (request.weights == quant::Format::kNone && request.weights_group > 0) {
    return MakeError(ErrorCode::kInvalidArgument, "a weight group size needs a quantized --weights format");
  }
  // A pre-quantized checkpoint's weights keep the checkpoint's format: --weights may only repeat it (a no-op).
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& t : b.params) {
      if (t.prequant.kind == PreQuant::Kind::kNone || request.weights == quant::Format::kNone) continue;
      if (request.weights != t.format || request.weights_group > 0) {
        return MakeError(ErrorCode::kInvalidArgument,
                         "--weights " + std::string(quant::FormatName(request.weights)) +
                             (request.weights_group > 0 ? " --weights-group " + std::to_string(request.weights_group) : "") +
                             ": model " + model.name + " is pre-quantized (" + PreQuantKindName(t.prequant.kind) +
                             ", e.g. " + t.name + " is " + quant::FormatName(t.format) + " in groups of " +
                             std::to_string(t.group) +
                             "); its weights are planned in the checkpoint's format: leave --weights out");
      }
    }
  }
  bool prequantized = false;
  for (const BlockDesc& b : model.blocks)
    for (const TensorSpec& t : b.params) prequantized |= t.prequant.kind != PreQuant::Kind::kNone;
  if (request.weights != quant::Format::kNone && !prequantized) {
    Progress(request, std::string("marking linear-layer weights ") + quant::FormatName(request.weights));
    BIGPLAN_RETURN_IF_ERROR(ApplyWeightFormat(&result.model, request.weights, request.weights_group));
  }

  result.exec_dtype = request.exec_dtype.value_or(DefaultExecDType(model));
  if (!IsFloatingPoint(result.exec_dtype))
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("execution dtype ") + DTypeString(result.exec_dtype) + " is not a floating-point type");
  BIGPLAN_RETURN_IF_ERROR(ValidateRunShape(request.run, model));
  BIGPLAN_RETURN_IF_ERROR(CheckAccountingSizes(model, request.run, result.exec_dtype));
  result.profile = request.profile.value_or(request.budget.gpus.empty() ? DefaultCpuProfile() : DefaultGpuProfile());
  const DType exec = result.exec_dtype;
  if (request.cpu_share_auto || request.cpu_share != 0) {
    if (!request.cpu_share_auto && !(request.cpu_share > 0 && request.cpu_share < 1))
      return MakeError(ErrorCode::kInvalidArgument, "--cpu-share must be \"auto\", \"off\" or a share between 0 and 1, "
                                                    "not " + std::to_string(request.cpu_share));
    if (request.run.max_batch > kMaxHostTokens)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--cpu-share: the host computes decode forwards of at most " + std::to_string(kMaxHostTokens) +
                           " tokens, but the run shape's batch is " + std::to_string(request.run.max_batch));
    if (request.cpu_share_auto && !(result.profile.cpu_gemv_gbps > 0))
      return MakeError(ErrorCode::kInvalidArgument,
                       "--cpu-share: the device profile \"" + result.profile.name +
                           "\" has no cpu_gemv_gbps (the host's measured matrix-vector rate; see "
                           "benchmarks/gpu/measure_profile): give a profile that has it");
  }

  Progress(request, "placing " + std::to_string(model.blocks.size()) + " blocks (" + request.strategy + ")");
  PlacementRequest preq;
  preq.model = &model;
  preq.budget = request.budget;
  preq.run = request.run;
  preq.exec_dtype = exec;
  if (request.prefetch_depth && *request.prefetch_depth == 0)
    return MakeError(ErrorCode::kInvalidArgument, "prefetch depth must be at least 1");
  preq.options.prefetch_depth = request.prefetch_depth.value_or(1);
  preq.options.chunk_bytes = request.chunk_bytes.value_or(0);
  preq.options.device_map = request.device_map;
  // "T" alone: the tensor-parallel candidate or nothing (the others are still weighed, for the report).
  const bool only_tensor_parallel = request.auto_candidates == "T";
  preq.options.auto_candidates = only_tensor_parallel ? "BPCEIS" : request.auto_candidates;
  preq.options.enforce_budget = true;
  RegisterBalancedStrategies();
  BIGPLAN_ASSIGN_OR_RETURN(result.placement, PlaceModel(request.strategy, preq));
  const Placement& placement = result.placement;
  const size_t n = model.blocks.size();

  Progress(request, "streaming units and memory plan (" + request.memory_algorithm + ")");
  BIGPLAN_ASSIGN_OR_RETURN(result.schedule, ScheduleFor(model, request, placement, exec));
  const Schedule& sched = result.schedule;
  std::vector<int32_t> devices(n);
  for (size_t i = 0; i < n; ++i) devices[i] = placement.blocks[i].device;
  for (size_t i = 0; i < n; ++i) {
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, exec);
    const std::vector<Tier> tiers = WeightTiersOf(placement.blocks[i], layout.weights.size());
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      if (layout.weights[w].format != quant::Format::kNone && tiers[w] == Tier::kDisk) {
        return MakeError(ErrorCode::kUnsupported,
                         "the placement leaves the " + std::string(quant::FormatName(layout.weights[w].format)) +
                             " weight " + layout.weights[w].tensor +
                             " on disk, but quantized weights rest on the GPU or in pinned CPU memory (the executor "
                             "quantizes or converts them at load): raise the cpu budget");
      }
    }
  }
  BIGPLAN_RETURN_IF_ERROR(CheckAllFit(PlanUsage(model, request.budget, placement.blocks, sched)));

  // Costs.
  const RunSize run_size{request.run.max_batch, request.run.max_seq_len};
  // The executor replays decode steps of all-resident plans from CUDA graphs (one per device segment;
  // ExecutorOptions::cuda_graphs) where the registry says the family's kernels have a static decode step for this run
  // length: no host dispatch.
  const bool graph_decode = [&] {
    const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
    if (family == nullptr || !arch::GraphDecodeEligible(*family, model.config, request.run.max_seq_len)) return false;
    if (n == 0 || !sched.streams.empty()) return false;
    // All resident on GPUs: one graph per run of blocks on one device (the executor's graph segments).
    for (size_t i = 0; i < n; ++i)
      if (devices[i] < 0 || result.placement.blocks[i].tier != Tier::kGpu) return false;
    // Mixture-of-experts layers: the chosen experts are read on the device for decode batches of at most
    // kGraphDecodeMaxExpertTokens rows of unquantized experts.
    if (model.config.num_experts > 0) {
      if (request.run.max_batch > arch::kGraphDecodeMaxExpertTokens || request.weights != quant::Format::kNone) {
        return false;
      }
      for (size_t i = 0; i < n; ++i)
        for (const TensorSpec& t : model.blocks[i].params)
          if (t.format != quant::Format::kNone && t.name.find(".experts.") != std::string::npos) return false;
    }
    return true;
  }();
  // Per-block costs of a schedule; `host_tokens` > 0: a decode forward that computes the host units on the host.
  auto costs_of = [&](const Schedule& sc, uint32_t host_tokens, std::vector<BlockCost>* block_costs,
                      std::vector<double>* decode, std::vector<double>* prefill) {
    StepCostOptions opt;
    opt.graph_decode = graph_decode;
    opt.host_tokens = host_tokens;
    StepCosts c = StepCostsOf(model, exec, devices, result.profile, run_size, sc, opt);
    *block_costs = std::move(c.blocks);
    *decode = std::move(c.decode_us);
    *prefill = std::move(c.prefill_us);
  };
  std::vector<double> decode_us, prefill_us;
  costs_of(sched, 0, &result.block_costs, &decode_us, &prefill_us);
  Progress(request, "predicting");
  result.decode = SimulateForward(sched, decode_us, devices, result.profile);
  result.prefill = SimulateForward(sched, prefill_us, devices, result.profile);
  result.copy_floor_us = CopyFloorMicros(sched, result.profile);
  result.decode_copy_floor_us = result.copy_floor_us;
  result.decode_streamed_us = result.decode.total_us;
  result.graph_decode = graph_decode;

  // Routed experts: the rings' paths and each sparse layer's prediction (cost_model.h, kRouteSyncMicros). After its
  // router's choices reach the host, a layer takes the longer of its host side (the host's experts, then the GPU's
  // pickup of their sum) and its GPU side (the resident and copied experts' reads, and the copies, which start after
  // the router, less what the previous layer prefetched for it, then the last copied expert's product); then the sum's
  // add and the next attention half and router (SparseLayerDenseMicros). The host's expert time is its bytes at the
  // host's rate over experts (HostExpertGbps) and fixed costs (kHostExpertJobMicros, kHostExpertEachMicros). With an
  // automatic share the planner tries 0, 5%, ..., 90% and keeps the fastest decode; a prefill copies every
  // non-resident expert while the GPU computes.
  result.expert_rings = ExpertRingsFor(model, placement.blocks, exec);
  const bool routed = !result.expert_rings.empty();
  if (routed) {
    const DeviceProfile& pf = result.profile;
    // (The host multiplies bf16 rows and quantized ones, but not act-order GPTQ's permuted columns.)
    bool act_order = false;
    for (const BlockDesc& b : model.blocks)
      for (const TensorSpec& t : b.params) act_order = act_order || t.prequant.act_order;
    const bool host_possible = !request.cpu_share_off && exec == DType::kBF16 && pf.cpu_gemv_gbps > 0 && !act_order;
    std::vector<double> shares;
    if (!host_possible) {
      shares.push_back(0.0);
    } else if (request.cpu_share_auto || request.cpu_share == 0) {
      for (int k = 0; k <= 18; ++k) shares.push_back(0.05 * k);
    } else {
      shares.push_back(request.cpu_share);
    }
    const uint32_t decode_tokens = std::min<uint32_t>(request.run.max_batch, kMaxHostTokens);
    const std::vector<double> base_decode = decode_us, base_prefill = prefill_us;
    // Next-layer prefetch: the request's count, or the better of none and kDefaultExpertPrefetch (a prefetch only
    // fills the copy engine's wait for the next router; an expert whose copy outlasts that wait costs its remainder
    // when the router does not choose it, so large experts are better not prefetched).
    std::vector<int> prefetches;
    if (request.expert_prefetch >= 0) {
      prefetches.push_back(request.expert_prefetch);
    } else {
      prefetches = {0, kDefaultExpertPrefetch};
    }
    std::vector<std::pair<double, int>> candidates;  // (share, prefetch)
    for (double share : shares) {
      for (int prefetch : prefetches) candidates.emplace_back(share, prefetch);
    }
    double best = -1, best_paths = 0;
    for (const auto& [share, prefetch] : candidates) {
      std::map<int32_t, ExpertRingPlan> rings = result.expert_rings;
      PlanExpertPaths(model, placement.blocks, exec, pf, share, decode_tokens, &rings, prefetch);
      std::vector<double> dec = base_decode, pre = base_prefill;
      std::vector<double> dec_paths = base_decode;  // without the host's issue bound: breaks ties between candidates
      double floor_us = 0;
      for (size_t i = 0; i < n; ++i) {
        auto ring = rings.find(devices[i]);
        if (!placement.blocks[i].routed_experts || ring == rings.end()) continue;
        const ExpertRingPlan& ring_plan = ring->second;
        double prefetches = 0;  // what the previous routed layer of this GPU prefetches for this one
        const ExpertBytes b = PrefetchedExpertBytes(model, placement.blocks, i, exec, ring_plan.cpu_share,
                                                    ring_plan.prefetch, ring_plan.slot_bytes, &prefetches);
        // A token whose choices are all resident (b.all_resident of them) reads them on the GPU; the others move the
        // off-GPU bytes / (1 - b.all_resident).
        const double busy = 1.0 - b.all_resident;
        const double moved = busy > 1e-9 ? 1.0 / busy : 0.0;
        const double host_b = b.host * moved, copied_b = (b.copied - b.prefetched) * moved, disk_b = b.disk * moved;
        const double dense_us = SparseLayerDenseMicros(model, i, exec, run_size, pf);
        const double hbm = std::max(1.0, pf.device_mem_gbps) * 1e3;
        // The host's experts: their bytes at the profile's rate, a job's and each expert's fixed cost.
        const double slot = static_cast<double>(std::max<uint64_t>(1, ring_plan.slot_bytes));
        const quant::Format format = ExpertFormat(model, i);
        const double host_gbps = HostExpertGbps(pf, format);
        // The host's side for `bytes` of `experts` experts (then the GPU's pickup of its sum); none for no bytes.
        const auto host_side_of = [&](double bytes, double experts) {
          return bytes > 0 && pf.cpu_gemv_gbps > 0
                     ? kHostExpertJobMicros + kHostExpertEachMicros * experts + bytes / (host_gbps * 1e3) + kHostSumMicros
                     : 0.0;
        };
        const double host_side = host_side_of(host_b, std::max(1.0, std::round(host_b / slot)));
        // Next-layer prefetch: its copies (ring_plan.prefetch experts, issued behind the previous layer's) take the
        // copy engine's wait for this router (the previous layer's tail, attention half and router), or longer; the
        // chosen ones (b.prefetched) are copies this layer no longer waits for.
        // While the host computes experts it shares host memory with the copies: they run at h2d_busy_gbps.
        const double copy_gbps = H2dGbps(pf, b.host > 0);
        const double window = kExpertCopyTailMicros + dense_us + kRouteSyncMicros;
        const double prefetch_us = prefetches * static_cast<double>(ring_plan.slot_bytes) / (copy_gbps * 1e3);
        const double copy_us = copied_b / (copy_gbps * 1e3);
        // Disk-resting experts are read (O_DIRECT, on the dispatching thread) before their copies.
        const double disk_gbps = pf.disk_gbps > 0 ? pf.disk_gbps : 1e-3;
        const double disk_us = disk_b / (disk_gbps * 1e3);
        const double copies_us = std::max(0.0, prefetch_us - window) + disk_us + copy_us;
        // Experts the GPU computes one by one (ExpertsGrouped false): each costs its ops' issue.
        const double task_us = ExpertsGrouped(model, i, exec) ? 0.0 : kExpertTaskMicros / slot;  // per byte
        // The GPU's reads of `bytes` of chosen experts; its side: those reads, or its copies and the last product.
        const auto reads_of = [&](double bytes) { return bytes / hbm + 2 * kGpuKernelMicros + bytes * task_us; };
        const auto gpu_side_of = [&](double bytes, double copies) {
          return std::max(reads_of(bytes), copies > 0 ? copies + kExpertCopyTailMicros : 0.0);
        };
        const double all_resident_us = reads_of(b.resident + b.copied + b.host);
        dec[i] = kRouteSyncMicros + dense_us + b.all_resident * all_resident_us +
                 busy * std::max(host_side, gpu_side_of(b.resident + b.copied, copies_us));
        if (prefetches <= 0 && b.disk == 0 && decode_tokens == 1 && b.pinned_experts > 0 && b.host > 0 &&
            QuantizedExpertsWhole(model, i, exec, slot)) {
          // Quantized experts that go whole to one side: a token's n chosen pinned-resting experts are split
          // HostWholeExperts(share, n) to the host, the rest copied, and the layer waits for the longer side of
          // that split, in expectation over n (with one or two such experts a layer, as Mixtral's, the host may take
          // all while the copy engine idles).
          const uint32_t k = model.config.num_experts_per_tok;
          double paths_us = b.all_resident * all_resident_us;
          for (uint32_t chosen = 1; chosen <= k && chosen <= b.pinned_experts; ++chosen) {
            const double chance = ChoiceCountChance(b.experts, b.pinned_experts, k, chosen);
            const uint32_t on_host = HostWholeExperts(ring_plan.cpu_share, chosen), on_gpu = chosen - on_host;
            const double copies_n = on_gpu * slot / (H2dGbps(pf, on_host > 0) * 1e3);
            paths_us += chance * std::max(host_side_of(on_host * slot, on_host),
                                          gpu_side_of((k - chosen + on_gpu) * slot, copies_n));
          }
          dec[i] = kRouteSyncMicros + dense_us + paths_us;
        }
        // (The host issues the layer's eager steps meanwhile: where the paths are short, that is the bound.)
        dec_paths[i] = dec[i];
        dec[i] = std::max(dec[i], kRouteSyncMicros + SparseLayerIssueMicros(model, i));
        pre[i] = std::max({pre[i], static_cast<double>(b.off_gpu) / (pf.h2d_gbps * 1e3),
                           static_cast<double>(b.off_disk) / (disk_gbps * 1e3)});
        // The floor of the paths: the copies and the host's reads sharing host memory (MixFloorMicros), or the
        // disk reads.
        floor_us += std::max(MixFloorMicros(b.copied, b.host, pf, format), disk_us);
      }
      const ForwardPrediction d = SimulateForward(sched, dec, devices, pf);
      // Equal predictions (the host's issue the bound for both) go to the shorter paths: where a prefetch or a share
      // shortens them, it is the one that leaves the host's issue the whole step.
      const double paths = SimulateForward(sched, dec_paths, devices, pf).total_us;
      if (best < 0 || d.total_us < best - 1e-6 || (d.total_us <= best + 1e-6 && paths < best_paths)) {
        best = d.total_us;
        best_paths = paths;
        result.expert_rings = rings;
        result.expert_floor_us = floor_us;
        result.decode = d;
        result.prefill = SimulateForward(sched, pre, devices, pf);
        result.decode_streamed_us = d.total_us;
      }
    }
  }

  // Host compute in decode: each candidate share's schedule, predicted for a decode forward of max_batch tokens.
  // (A routed-experts placement with every expert resident has no use for a share.)
  const bool expert_placement = std::any_of(placement.blocks.begin(), placement.blocks.end(),
                                            [](const BlockPlacement& b) { return b.routed_experts; });
  if (!expert_placement && (request.cpu_share_auto || request.cpu_share != 0)) {
    std::vector<double> shares;
    if (request.cpu_share_auto) {
      for (int k = 1; k <= 18; ++k) shares.push_back(0.05 * k);
    } else {
      shares.push_back(request.cpu_share);
    }
    Progress(request, "choosing the host's share of the streamed matrices (" + std::to_string(shares.size()) +
                          (shares.size() == 1 ? " share)" : " shares)"));
    const uint32_t tokens = request.run.max_batch;
    bool any_rows = false;
    for (double share : shares) {
      HostRows rows = AssignHostRows(model, placement.blocks, exec, share);
      if (rows.empty()) continue;
      any_rows = true;
      std::set<int32_t> host_devices;
      for (const auto& [key, n] : rows) host_devices.insert(placement.blocks[key.first].device);
      if (host_devices.size() > 1) {
        return MakeError(ErrorCode::kUnsupported,
                         "--cpu-share: the host computes the streamed matrices of one GPU, but this placement streams "
                         "to " + std::to_string(host_devices.size()) + " GPUs");
      }
      Result<Schedule> sc = ScheduleFor(model, request, placement, exec, &rows);
      if (!sc.ok()) {
        if (!request.cpu_share_auto) return sc.take_error();
        continue;
      }
      const std::vector<DeviceAccount> usage = PlanUsage(model, request.budget, placement.blocks, *sc);
      if (!CheckAllFit(usage).ok()) {
        if (!request.cpu_share_auto) BIGPLAN_RETURN_IF_ERROR(CheckAllFit(usage));
        continue;
      }
      std::vector<BlockCost> bc_host, bc_plain;
      std::vector<double> dec_host, pre_host, dec_plain, pre_plain;
      costs_of(*sc, tokens, &bc_host, &dec_host, &pre_host);
      costs_of(*sc, 0, &bc_plain, &dec_plain, &pre_plain);
      ForwardPrediction decode = SimulateForward(*sc, dec_host, devices, result.profile, {}, tokens);
      if (!request.cpu_share_auto || decode.total_us < result.decode.total_us) {
        result.cpu_share = share;
        result.host_rows = std::move(rows);
        result.schedule = std::move(*sc);
        result.decode = decode;
        result.block_costs = bc_host;
        result.prefill = SimulateForward(result.schedule, pre_plain, devices, result.profile);
        result.copy_floor_us = CopyFloorMicros(result.schedule, result.profile);
        result.decode_copy_floor_us = CopyFloorMicros(result.schedule, result.profile, true);
      }
    }
    // (An automatic share where nothing streams, or nothing the host computes, is no share: the plan stands.)
    if (!any_rows && !request.cpu_share_auto)
      return MakeError(ErrorCode::kInvalidArgument,
                       "--cpu-share: no streamed matrix can be computed by the host (it computes linear-layer "
                       "matrices in pinned CPU memory of blocks computed on a GPU, in bf16 or a --weights format, with "
                       "at least " + std::to_string(2 * kHostRowAlign) + " rows)");
    result.host_bytes = HostRowBytes(model, result.host_rows, exec);
  }
  // Candidate T (several GPUs): every block split over the budgeted GPUs (planner/tensor_parallel.h), all resident.
  // Chosen when its predicted decode step is at least kTensorParallelGain faster than the placement's.
  if (request.strategy == "auto" && request.budget.gpus.size() >= 2 && result.host_rows.empty() && !routed) {
    PlacementCandidate cand{"T", false, 0, ""};
    std::vector<int32_t> gpus;
    for (const auto& [ordinal, bytes] : request.budget.gpus) gpus.push_back(ordinal);
    if (request.auto_candidates.find('T') == std::string::npos) {
      cand.why = "not considered";
    } else if (Result<ShardedModel> sm = ShardModel(model, static_cast<uint32_t>(gpus.size())); !sm.ok()) {
      cand.why = sm.error().message;
    } else {
      Placement tp_placement;
      tp_placement.strategy = placement.strategy;
      tp_placement.blocks = ShardPlacement(*sm, gpus);
      tp_placement.block_weight_bytes = AllBlockWeightBytes(sm->model, exec);
      Result<Schedule> sc = ScheduleFor(sm->model, request, tp_placement, exec);
      std::vector<DeviceAccount> usage;
      if (sc.ok()) usage = PlanUsage(sm->model, request.budget, tp_placement.blocks, *sc);
      Status fits = sc.ok() ? CheckAllFit(usage) : Status(sc.error());
      // Too large to rest on the GPUs: every shard streams the same weights over its own GPU's link.
      bool streamed = false;
      Placement one_shard;
      if (!fits.ok()) {
        Result<Placement> sp = StreamedShardPlacement(*sm, gpus, preq, &one_shard);
        if (sp.ok()) {
          tp_placement = std::move(*sp);
          tp_placement.block_weight_bytes = AllBlockWeightBytes(sm->model, exec);
          sc = ScheduleFor(sm->model, request, tp_placement, exec);
          if (sc.ok()) usage = PlanUsage(sm->model, request.budget, tp_placement.blocks, *sc);
          fits = sc.ok() ? CheckAllFit(usage) : Status(sc.error());
          streamed = fits.ok();
        } else {
          fits = MakeError(ErrorCode::kInfeasible,
                           "resident: " + fits.error().message + "; streamed: " + sp.error().message);
        }
      }
      if (!fits.ok()) {
        cand.why = fits.error().message;
      } else {
        const arch::FamilyInfo* family = arch::FindFamily(model.architecture);
        const bool graphs = !streamed && family != nullptr &&
                            arch::GraphDecodeEligible(*family, model.config, request.run.max_seq_len);
        const size_t nb = sm->model.blocks.size();
        std::vector<BlockCost> costs(nb);
        std::vector<double> dec(nb), dec_host(nb), pre(nb), pre_host(nb);
        for (size_t i = 0; i < nb; ++i) {
          BlockWork work = DescribeBlockWork(sm->model, i, exec);
          if (graphs) ExpertsOnDevice(sm->model, i, &work);
          costs[i] = EstimateBlockCost(work, run_size, tp_placement.blocks[i].device, result.profile);
          dec[i] = graphs ? GraphDecodeMicros(costs[i]) : costs[i].decode_device_us;
          dec_host[i] = costs[i].host_us;
          pre[i] = costs[i].prefill_device_us;
          pre_host[i] = costs[i].prefill_host_us;
        }
        const uint64_t batch = request.run.max_batch;
        ForwardPrediction shard_decode, shard_prefill;  // a streamed shard's simulation (streamed only)
        double tp_decode = TensorParallelPassMicros(*sm, dec, graphs ? std::vector<double>() : dec_host, batch, batch,
                                                    exec, graphs);
        double tp_prefill = TensorParallelPassMicros(*sm, pre, pre_host, batch * request.run.max_seq_len,
                                                     batch * request.run.max_seq_len, exec, false);
        if (streamed) {
          // One shard's forward as the planner simulates a one-GPU plan (its copies over its own link), plus the
          // all-reduces (the shards stream and compute alike, at once).
          const ModelDescription shard = ShardOf(*sm, sm->shards - 1);
          Result<Schedule> shard_sc = ScheduleFor(shard, request, one_shard, exec);
          if (shard_sc.ok()) {
            std::vector<int32_t> shard_devices(shard.blocks.size());
            for (size_t i = 0; i < shard.blocks.size(); ++i) shard_devices[i] = one_shard.blocks[i].device;
            StepCosts c = StepCostsOf(shard, exec, shard_devices, result.profile, run_size, *shard_sc, {});
            const std::vector<double> none(nb, 0.0);
            shard_decode = SimulateForward(*shard_sc, c.decode_us, shard_devices, result.profile);
            shard_prefill = SimulateForward(*shard_sc, c.prefill_us, shard_devices, result.profile);
            tp_decode = shard_decode.total_us + TensorParallelPassMicros(*sm, none, {}, batch, batch, exec, false);
            tp_prefill = shard_prefill.total_us + TensorParallelPassMicros(*sm, none, {}, batch * request.run.max_seq_len,
                                                                           batch * request.run.max_seq_len, exec, false);
          }
        }
        cand.feasible = true;
        for (const DeviceAccount& a : usage) cand.resident_bytes += a.device == "cpu" || a.device == "disk" ? 0 : a.resident_weights;
        auto ms = [](double us) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "%.3f ms", us / 1e3);
          return std::string(buf);
        };
        Progress(request, "tensor-parallel candidate T: decode " + ms(tp_decode) + " against " +
                              ms(result.decode.total_us) + " for candidate " + placement.chosen);
        // A plan for batches (max_batch >= 2) keeps the placement whose batched prefill (max_batch rows of half
        // the run's positions, pipelined where it can be) is faster, as the report predicts it.
        bool prefill_ok = true;
        if (request.run.max_batch >= 2) {
          const uint32_t tokens = std::max<uint32_t>(1, request.run.max_seq_len / 2);
          double host_us = 0;
          std::vector<int32_t> tp_devices;
          for (const BlockPlacement& b : tp_placement.blocks) tp_devices.push_back(b.device);
          const double tp_batched = TensorParallelBatchedPrefill(*sm, tp_devices, result.profile, exec,
                                                                 request.run.max_batch, tokens, &host_us);
          Result<BatchedPrefillPrediction> other = PredictBatchedPrefill(result, request.run.max_batch, tokens);
          prefill_ok = !other.ok() || tp_batched <= other->total_us;
          Progress(request, "tensor-parallel candidate T: batched prefill " + ms(tp_batched) + " against " +
                                (other.ok() ? ms(other->total_us) : std::string("?")));
        }
        if (only_tensor_parallel || (tp_decode < kTensorParallelGain * result.decode.total_us && prefill_ok)) {
          const uint32_t shards = sm->shards;
          result.source_model = std::move(result.model);
          result.model = std::move(sm->model);
          result.shard = std::move(sm->shard);
          result.slices = std::move(sm->slices);
          result.tensor_parallel = shards;
          std::vector<PlacementCandidate> report = std::move(result.placement.candidates);
          result.placement = std::move(tp_placement);
          result.placement.candidates = std::move(report);
          result.placement.chosen = "T";
          result.placement.usage = usage;
          result.schedule = std::move(*sc);
          result.block_costs = costs;
          // (Per shard: a streamed shard's compute and its waits for copies; the all-reduces count as compute.)
          result.decode = ForwardPrediction{};
          result.decode.total_us = tp_decode;
          result.decode.compute_us = tp_decode - shard_decode.compute_stall_us;
          result.decode.compute_stall_us = shard_decode.compute_stall_us;
          result.prefill = ForwardPrediction{};
          result.prefill.total_us = tp_prefill;
          result.prefill.compute_us = tp_prefill - shard_prefill.compute_stall_us;
          result.prefill.compute_stall_us = shard_prefill.compute_stall_us;
          result.copy_floor_us = result.decode_copy_floor_us = CopyFloorMicros(result.schedule, result.profile);
          result.decode_streamed_us = tp_decode;
          result.graph_decode = graphs;
          // Per-block predictions for the plan's steps: each shard's own time.
          for (size_t i = 0; i < nb; ++i) result.block_costs[i].decode_us = dec[i];
        }
      }
    }
    result.placement.candidates.push_back(cand);
    if (only_tensor_parallel && result.tensor_parallel == 0)
      return MakeError(ErrorCode::kInfeasible, "--auto-candidates T: " + cand.why);
  }
  if (only_tensor_parallel && result.tensor_parallel == 0)
    return MakeError(ErrorCode::kInvalidArgument, "--auto-candidates T: tensor parallelism needs the auto strategy, "
                                                  "two or more GPU budgets and no host compute or routed experts");
  result.usage = PlanUsage(model, request.budget, placement.blocks, result.schedule);
  BIGPLAN_RETURN_IF_ERROR(CheckAllFit(result.usage));
  for (const DeviceStreamPlan& st : result.schedule.streams) result.streamed_bytes += st.streamed_bytes();

  Progress(request, "writing the plan");
  PlanContent content;
  content.model = &model;
  content.tensor_parallel = result.tensor_parallel;
  content.source_model = &result.source_model;
  content.shard = &result.shard;
  content.slices = &result.slices;
  content.checkpoint = checkpoint ? &*checkpoint : nullptr;
  content.synthetic_shards = resolved.synthetic_shards;
  content.synthetic_shard_of = resolved.synthetic_shard_of;
  content.config_sha256 = resolved.config_sha256;
  content.budget = request.budget;
  content.run = request.run;
  content.exec_dtype = exec;
  content.weights = request.weights;
  content.strategy = placement.strategy;
  content.profile = result.profile;
  content.placement = placement.blocks;
  content.schedule = &result.schedule;
  content.host_max_tokens = result.host_rows.empty() ? 0 : request.run.max_batch;
  content.expert_rings = result.expert_rings;
  content.block_costs = result.block_costs;
  content.predicted_decode_us = result.decode.total_us;
  content.predicted_prefill_us = result.prefill.total_us;
  content.usage = result.usage;
  BIGPLAN_ASSIGN_OR_RETURN(result.bytes, BuildPlan(content));
  return result;
}

bool PipelinablePlan(const PlanResult& plan) {
  if (plan.tensor_parallel > 0) return false;  // its shards run every block at once
  if (!plan.schedule.streams.empty() || !plan.expert_rings.empty() || !plan.host_rows.empty()) return false;
  std::set<int32_t> devices;
  for (const BlockPlacement& b : plan.placement.blocks) {
    if (b.device < 0 || b.tier != Tier::kGpu || b.routed_experts) return false;
    devices.insert(b.device);
  }
  return devices.size() >= 2;
}

RanksDecodePrediction PredictRanksDecode(const PlanResult& plan) {
  RanksDecodePrediction out;
  if (plan.tensor_parallel > 0) {
    // One rank per shard, meeting at every all-reduce; a streamed shard does not run as a rank.
    for (const BlockPlacement& b : plan.placement.blocks)
      if (b.device < 0 || b.tier != Tier::kGpu) return out;
    const arch::FamilyInfo* family = arch::FindFamily(plan.model.architecture);
    const uint32_t layer_reduces = family != nullptr ? arch::LayerAllReduces(*family) : 2;
    for (const BlockDesc& b : plan.model.blocks) {
      if (b.kind == BlockKind::kEmbedding || b.kind == BlockKind::kLmHead) out.all_reduces += 1;
      if (b.kind == BlockKind::kDecoderLayer) out.all_reduces += layer_reduces;
    }
    out.all_reduces /= plan.tensor_parallel;  // (the model's blocks are the shards)
    out.ranks = plan.tensor_parallel;
    out.total_us = plan.decode.total_us +
                   out.all_reduces * (plan.graph_decode ? kRankAllReduceExtraMicros : kRankAllReduceExtraEagerMicros);
    return out;
  }
  std::set<int32_t> gpus;
  int32_t prev = -1, last = -1;
  for (const ScheduledStep& step : plan.schedule.steps) {
    if (step.block >= plan.placement.blocks.size()) continue;
    const int32_t d = plan.placement.blocks[step.block].device;
    // A block the host computes, or one not resident (streamed, partly resident, routed experts): ranks run plans
    // whose every block is resident on a GPU.
    if (d < 0 || plan.placement.blocks[step.block].tier != Tier::kGpu) return out;
    gpus.insert(d);
    if (prev >= 0 && d != prev) ++out.crossings;
    prev = last = d;
  }
  if (gpus.size() < 2) return RanksDecodePrediction{};
  if (last != 0) ++out.crossings;  // the logits go back to rank 0
  out.ranks = static_cast<uint32_t>(*gpus.rbegin() + 1);
  out.total_us = plan.decode.total_us +
                 out.crossings * (plan.graph_decode ? kRankHopExtraMicros : kRankHopExtraEagerMicros);
  return out;
}

Result<BatchedPrefillPrediction> PredictBatchedPrefill(const PlanResult& plan, uint32_t rows, uint32_t tokens,
                                                       int micro_batch_rows, int micro_batch_group) {
  if (rows == 0 || tokens == 0)
    return MakeError(ErrorCode::kInvalidArgument, "a batched prefill needs at least one row and one token");
  const ModelDescription& model = plan.model;
  const size_t n = model.blocks.size();
  if (plan.placement.blocks.size() != n)
    return MakeError(ErrorCode::kInvalidArgument, "the plan's placement does not match its model");
  std::vector<int32_t> devices(n);
  for (size_t i = 0; i < n; ++i) devices[i] = plan.placement.blocks[i].device;
  // Per-block costs for a pass of `r` rows: the planner's prefill costs, with the lm_head at one position per row.
  auto costs_for = [&](uint32_t r) {
    StepCosts c = StepCostsOf(model, plan.exec_dtype, devices, plan.profile, RunSize{r, tokens}, plan.schedule, {});
    for (size_t i = 0; i < n; ++i)
      if (model.blocks[i].kind == BlockKind::kLmHead)
        c.blocks[i] = EstimateBlockCost(c.work[i], RunSize{r, 1}, devices[i], plan.profile);
    return c;
  };
  BatchedPrefillPrediction out;
  if (plan.tensor_parallel > 0) {
    const ShardedModel sharded{model, plan.tensor_parallel, plan.shard, plan.slices};
    out.unpipelined_us = out.total_us =
        TensorParallelBatchedPrefill(sharded, devices, plan.profile, plan.exec_dtype, rows, tokens, &out.host_us);
    return out;
  }
  {
    // One pass of all rows, issued eagerly: the planner's simulation of a forward, with each step's device time (and
    // hop) and the host issuing its ops at the prefill rate.
    const StepCosts all = costs_for(rows);
    std::vector<double> device_us, host_us;
    for (const ScheduledStep& step : plan.schedule.steps) {
      device_us.push_back(all.blocks[step.block].prefill_device_us + all.prefill_hop_us[step.block]);
      host_us.push_back(devices[step.block] < 0 ? 0.0 : all.work[step.block].kernels * kHostPrefillOpMicros);
      out.host_us += host_us.back();
    }
    out.unpipelined_us = SimulateForward(plan.schedule, device_us, devices, plan.profile, host_us).total_us;
  }
  out.total_us = out.unpipelined_us;
  // The executor's rule (Executor::Impl::MicroBatchRows).
  if (!PipelinablePlan(plan) || micro_batch_rows < 0 || rows < 2) return out;
  uint32_t r = micro_batch_rows > 0 ? static_cast<uint32_t>(micro_batch_rows)
                                      : (kMicroBatchTokens + tokens - 1) / tokens;
  if (micro_batch_rows == 0) {
    // Doubled while that leaves more than two micro-batches per GPU.
    std::set<int32_t> gpus(devices.begin(), devices.end());
    const uint64_t most = 2ull * gpus.size();
    while ((rows + r - 1) / r > most && 4ull * r <= rows) r *= 2;
  }
  if (2ull * r > rows) return out;
  const uint32_t m = (rows + r - 1) / r;
  const StepCosts mb = costs_for(r);
  std::vector<double> device_us, hop_us;
  std::vector<int32_t> step_devices;
  size_t segments = 0;
  for (const ScheduledStep& step : plan.schedule.steps) {
    const int32_t d = devices[step.block];
    if (step_devices.empty() || step_devices.back() != d) ++segments;
    device_us.push_back(mb.blocks[step.block].prefill_device_us);
    hop_us.push_back(mb.prefill_hop_us[step.block]);
    step_devices.push_back(d);
  }
  out.micro_batches = m;
  out.rows_per_micro_batch = r;
  out.total_us = SimulatePipelinedPass(device_us, step_devices, hop_us, m, kHostGraphTaskMicros,
                                       static_cast<uint32_t>(std::max(0, micro_batch_group)));
  out.host_us = static_cast<double>(m * segments) * kHostGraphTaskMicros;
  return out;
}

}  // namespace bigplan
