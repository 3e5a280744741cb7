#include "planner/planner.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "formats/checkpoint.h"
#include "planner/hf_import.h"
#include "planner/memory_plan.h"
#include "planner/placement_balanced.h"
#include "planner/plan_builder.h"
#include "planner/validate.h"
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

  const std::optional<Checkpoint>& checkpoint = resolved.checkpoint;
  if (checkpoint) {
    Progress(request, "validating against the checkpoint " + resolved.checkpoint_path);
    BIGPLAN_RETURN_IF_ERROR(ValidateAgainstCheckpoint(model, *checkpoint));
  }
  result.synthetic_checkpoint = !checkpoint.has_value();

  result.exec_dtype = request.exec_dtype.value_or(DefaultExecDType(model));
  if (!IsFloatingPoint(result.exec_dtype))
    return MakeError(ErrorCode::kInvalidArgument,
                     std::string("execution dtype ") + DTypeString(result.exec_dtype) + " is not a floating-point type");
  BIGPLAN_RETURN_IF_ERROR(ValidateRunShape(request.run, model));
  BIGPLAN_RETURN_IF_ERROR(CheckAccountingSizes(model, request.run, result.exec_dtype));
  result.profile = request.profile.value_or(request.budget.gpus.empty() ? DefaultCpuProfile() : DefaultGpuProfile());
  const DType exec = result.exec_dtype;

  Progress(request, "placing " + std::to_string(model.blocks.size()) + " blocks (" + request.strategy + ")");
  PlacementRequest preq;
  preq.model = &model;
  preq.budget = request.budget;
  preq.run = request.run;
  preq.exec_dtype = exec;
  preq.options.prefetch_depth = request.prefetch_depth.value_or(1);
  preq.options.device_map = request.device_map;
  preq.options.enforce_budget = true;
  RegisterBalancedStrategies();
  BIGPLAN_ASSIGN_OR_RETURN(result.placement, PlaceModel(request.strategy, preq));
  const Placement& placement = result.placement;
  const size_t n = model.blocks.size();

  // Schedule inputs.
  std::vector<ScheduleBlock> sblocks(n);
  std::vector<int32_t> devices(n);
  std::map<int32_t, std::vector<size_t>> blocks_of_device;
  const uint64_t kv_per_layer = KvCacheBytesPerLayer(model.config, request.run, exec);
  uint32_t cpu_streamed = 0, disk_streamed = 0;
  for (size_t i = 0; i < n; ++i) {
    const BlockPlacement& bp = placement.blocks[i];
    sblocks[i].name = model.blocks[i].name;
    sblocks[i].device = bp.device;
    sblocks[i].tier = static_cast<schema::Tier>(static_cast<uint8_t>(bp.tier));
    sblocks[i].weight_bytes = placement.block_weight_bytes[i];
    sblocks[i].kv_bytes = model.blocks[i].kind == BlockKind::kDecoderLayer ? kv_per_layer : 0;
    devices[i] = bp.device;
    blocks_of_device[bp.device].push_back(i);
    if (bp.tier == Tier::kCpu) ++cpu_streamed;
    if (bp.tier == Tier::kDisk) ++disk_streamed;
  }
  ScheduleOptions sopt;
  sopt.memory_algorithm = request.memory_algorithm;
  for (const auto& [device, blocks] : blocks_of_device)
    sopt.activation_bytes[device] = EstimateActivations(model, request.run, exec, blocks).total;

  // Costs.
  const RunSize run_size{request.run.max_batch, request.run.max_seq_len};
  result.block_costs.resize(n);
  std::vector<double> decode_us(n), prefill_us(n);
  // The executor replays decode steps of all-resident single-GPU Llama-family plans from a CUDA graph
  // (ExecutorOptions::cuda_graphs), except dynamic NTK RoPE past the model's positions: no host dispatch then.
  const bool graph_decode = [&] {
    if (model.architecture != "llama" || n == 0 || devices[0] < 0) return false;
    for (size_t i = 0; i < n; ++i)
      if (devices[i] != devices[0] || result.placement.blocks[i].tier != Tier::kGpu) return false;
    const auto& rs = model.config.rope_scaling;
    const bool dynamic = rs.is_object() && rs.value("rope_type", rs.value("type", std::string())) == "dynamic";
    return !(dynamic && request.run.max_seq_len > model.config.max_position_embeddings);
  }();
  for (size_t i = 0; i < n; ++i) {
    const BlockWork work = DescribeBlockWork(model, i, exec);
    result.block_costs[i] = EstimateBlockCost(work, run_size, devices[i], result.profile);
    decode_us[i] = graph_decode ? GraphDecodeMicros(result.block_costs[i], work) : result.block_costs[i].decode_us;
    prefill_us[i] = result.block_costs[i].prefill_us;
  }
  auto copy_times = [&](const Schedule& s) {
    std::vector<double> us(s.copies.size());
    for (size_t k = 0; k < s.copies.size(); ++k) us[k] = CopyMicros(s.copies[k].bytes, s.copies[k].source, result.profile);
    return us;
  };

  // Prefetch depths: see planner/cost_model.h.
  Progress(request, "scheduling and planning memory (" + request.memory_algorithm + ")");
  auto build = [&](uint32_t cpu_depth, uint32_t disk_depth) -> Result<Schedule> {
    ScheduleOptions o = sopt;
    o.cpu_prefetch_depth = cpu_depth;
    o.disk_prefetch_depth = disk_depth;
    return BuildSchedule(sblocks, o);
  };
  auto fits = [&](const Schedule& s) { return CheckAllFit(PlanUsage(model, request.budget, placement.blocks, s)); };
  const uint32_t cpu_cap = std::max<uint32_t>(1, std::min(kMaxPrefetchDepth, cpu_streamed));
  const uint32_t disk_cap = std::max<uint32_t>(1, std::min(kMaxPrefetchDepth, disk_streamed));
  uint32_t cpu_depth = 1, disk_depth = 1;
  if (request.prefetch_depth) {
    if (*request.prefetch_depth == 0)
      return MakeError(ErrorCode::kInvalidArgument, "prefetch depth must be at least 1");
    cpu_depth = std::min(*request.prefetch_depth, std::max<uint32_t>(1, cpu_streamed));
    disk_depth = std::min(*request.prefetch_depth, std::max<uint32_t>(1, disk_streamed));
  }
  BIGPLAN_ASSIGN_OR_RETURN(Schedule schedule, build(cpu_depth, disk_depth));
  // A fixed depth that does not fit is lowered until it does.
  while (!fits(schedule).ok() && (cpu_depth > 1 || disk_depth > 1)) {
    cpu_depth = std::max<uint32_t>(1, cpu_depth - 1);
    disk_depth = std::max<uint32_t>(1, disk_depth - 1);
    BIGPLAN_ASSIGN_OR_RETURN(schedule, build(cpu_depth, disk_depth));
  }
  BIGPLAN_RETURN_IF_ERROR(fits(schedule));
  if (!request.prefetch_depth) {
    bool grow_cpu = cpu_streamed > 0, grow_disk = disk_streamed > 0;
    while (grow_cpu || grow_disk) {
      ForwardPrediction f = SimulateForward(schedule, decode_us, copy_times(schedule), devices);
      grow_cpu = grow_cpu && f.held_cpu_copies > 0 && cpu_depth < cpu_cap;
      grow_disk = grow_disk && f.held_disk_copies > 0 && disk_depth < disk_cap;
      if (!grow_cpu && !grow_disk) break;
      // Deepen both tiers that need it; if that does not fit, each alone; a tier that cannot deepen stops.
      std::vector<std::pair<bool, bool>> tries;
      if (grow_cpu && grow_disk) tries.push_back({true, true});
      if (grow_cpu) tries.push_back({true, false});
      if (grow_disk) tries.push_back({false, true});
      bool deepened = false;
      for (const auto& [c, d] : tries) {
        BIGPLAN_ASSIGN_OR_RETURN(Schedule deeper, build(cpu_depth + c, disk_depth + d));
        if (!fits(deeper).ok()) continue;  // staging memory caps the depth
        schedule = std::move(deeper);
        cpu_depth += c;
        disk_depth += d;
        grow_cpu = grow_cpu && c;
        grow_disk = grow_disk && d;
        deepened = true;
        break;
      }
      if (!deepened) break;
    }
  }
  result.schedule = std::move(schedule);
  const Schedule& sched = result.schedule;

  Progress(request, "predicting");
  result.copy_us = copy_times(sched);
  result.decode = SimulateForward(sched, decode_us, result.copy_us, devices);
  result.prefill = SimulateForward(sched, prefill_us, result.copy_us, devices);
  result.copy_floor_us = CopyFloorMicros(sched, result.copy_us, devices);
  for (const ScheduledCopy& c : sched.copies) result.streamed_bytes += c.bytes;
  result.usage = PlanUsage(model, request.budget, placement.blocks, sched);

  Progress(request, "writing the plan");
  PlanContent content;
  content.model = &model;
  content.checkpoint = checkpoint ? &*checkpoint : nullptr;
  content.synthetic_shards = resolved.synthetic_shards;
  content.synthetic_shard_of = resolved.synthetic_shard_of;
  content.config_sha256 = resolved.config_sha256;
  content.budget = request.budget;
  content.run = request.run;
  content.exec_dtype = exec;
  content.strategy = placement.strategy;
  content.profile = result.profile;
  content.placement = placement.blocks;
  content.schedule = &sched;
  content.block_costs = result.block_costs;
  content.copy_us = result.copy_us;
  content.predicted_decode_us = result.decode.total_us;
  content.predicted_prefill_us = result.prefill.total_us;
  content.usage = result.usage;
  BIGPLAN_ASSIGN_OR_RETURN(result.bytes, BuildPlan(content));
  return result;
}

}  // namespace bigplan
