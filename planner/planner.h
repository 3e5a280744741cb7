// The planner as a library call: a request in, a verified flatbuffer plan out.
//
//   MakePlan: resolve the model (description, description file, HF model directory or bundled example) ->
//             open and validate the checkpoint (when there is one) -> place (strategy by name) -> choose prefetch
//             depths (cost model) -> schedule -> memory plan (algorithm by name) -> check fit against the budgets ->
//             predict (simulate decode and prefill forwards) -> build the plan -> VerifyPlan + overlap check.
//
// Errors are values, each naming what is wrong: kNotFound (a path), kCorrupt (a malformed file),
// kMismatch (description vs checkpoint), kInvalidArgument (strategy, memory algorithm, dtype, run shape, device map),
// kInfeasible (budgets too small: the device and by how much), kInternal (a plan failing its own checks).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arch/tensor_parallel.h"
#include "formats/checkpoint.h"
#include "formats/quant.h"
#include "formats/dtype.h"
#include "planner/accounting.h"
#include "planner/budget.h"
#include "planner/cost_model.h"
#include "planner/device_profile.h"
#include "planner/host_compute.h"
#include "planner/model_desc.h"
#include "planner/experts.h"
#include "planner/placement.h"
#include "planner/schedule.h"
#include "schema/plan_generated.h"
#include "support/result.h"

namespace bigplan {

inline constexpr char kDefaultMemoryAlgorithm[] = "greedy_by_size";
inline constexpr uint32_t kMaxPrefetchDepth = 8;

struct PlanRequest {
  // The model, from exactly one of:
  std::optional<ModelDescription> description;  // given directly
  std::string description_path;                  // a model description JSON (planner/MODEL_FORMAT.md)
  std::string model_dir;  // a Hugging Face model directory (config.json + *.safetensors), or a directory with just
                          // config.json (+ tensors.json, as the bundled examples) to plan without weights
  // A checkpoint (directory, index file or .safetensors file) to validate against and locate tensors in. Default:
  // model_dir when it holds *.safetensors. Without one the plan carries a synthetic fingerprint (plan_builder.h).
  std::string checkpoint_path;

  MemoryBudget budget;
  RunShape run = kDefaultRunShape;
  std::optional<DType> exec_dtype;  // default: DefaultExecDType(model)
  std::string strategy = kDefaultPlacementStrategy;
  std::string memory_algorithm = kDefaultMemoryAlgorithm;
  std::optional<DeviceProfile> profile;  // default: DefaultGpuProfile(), or DefaultCpuProfile() without GPUs
  nlohmann::json device_map;             // for strategy "explicit"
  // Blocks streamed whole are double-buffered by default (a ring of 2 slots of the largest streamed block); a
  // depth d gives d + 1 slots (still capped by the number of streaming blocks).
  std::optional<uint32_t> prefetch_depth;
  // Stream every device's weights in the chunks layout with row chunks of at most this many bytes (planner/
  // streaming.h), instead of the layout the placement chose.
  std::optional<uint64_t> chunk_bytes;
  // Strategy "auto": the candidates it may choose from (PlacementOptions::auto_candidates).
  std::string auto_candidates = "BPCEIST";
  // Compressed weights (`plan --weights`): every linear-layer matrix is stored in this format (ApplyWeightFormat in
  // planner/weight_format.h), quantized by the executor at load. kNone: as the checkpoint (at the execution dtype).
  // Quantized weights rest on the GPU or in pinned CPU memory; a placement that would leave one on disk is refused.
  quant::Format weights = quant::Format::kNone;
  // With `weights`: the group size of every quantized matrix (0: quant::DefaultGroup, i.e. per row for fp8/int8,
  // 128 columns for int4 where it divides them).
  int64_t weights_group = 0;
  // Host compute in decode (`plan --cpu-share`, planner/host_compute.h): the share of each eligible streamed matrix's
  // rows the host CPU multiplies in decode forwards (0 < share < 1), or, with cpu_share_auto, the share among 5%,
  // 10%, ..., 90% that the cost model predicts fastest for a decode forward of run.max_batch tokens (none when no
  // share beats streaming everything; the profile must have cpu_gemv_gbps, which predictions of a fixed share use
  // too when present). run.max_batch must be at most
  // kMaxHostTokens. 0 and no auto: off.
  double cpu_share = 0;
  bool cpu_share_auto = false;
  // Mixture-of-experts plans with routed experts (placement E, planner/experts.h) use the share for the decode
  // token's non-resident experts instead: the given share, or with cpu_share_auto or no share the profile's
  // (cpu_gemv_gbps against h2d_gbps); cpu_share_off (`--cpu-share off`) turns it off.
  bool cpu_share_off = false;
  // Mixture-of-experts plans with routed experts: experts of the next sparse layer prefetched per layer in decode
  // (ExpertRing.prefetch, executor/expert_engine.h), at most num_experts_per_tok and what the ring holds beside one
  // token's choices; -1 (auto): none or kDefaultExpertPrefetch, whichever the cost model predicts faster.
  int expert_prefetch = -1;
  // Called with a short message before each long step; may be empty.
  std::function<void(const std::string&)> progress;
};

struct PlanResult {
  std::vector<uint8_t> bytes;  // the verified plan
  ModelDescription model;
  DType exec_dtype = DType::kBF16;
  DeviceProfile profile;
  Placement placement;
  Schedule schedule;
  std::vector<BlockCost> block_costs;  // parallel to the blocks
  ForwardPrediction decode;
  ForwardPrediction prefill;
  double copy_floor_us = 0;            // CopyFloorMicros: streamed bytes / H2D (+ disk) on the busiest device
  // Host compute (PlanRequest::cpu_share): the share chosen (0: none), the rows the host computes in a decode forward
  // and their bytes, the copy floor of such a forward (CopyFloorMicros without the host units), and the decode
  // prediction without host compute, for comparison (equal to decode.total_us when the share is 0).
  double cpu_share = 0;
  HostRows host_rows;
  uint64_t host_bytes = 0;
  double decode_copy_floor_us = 0;
  double decode_streamed_us = 0;
  uint64_t streamed_bytes = 0;         // per forward
  // Routed experts (planner/experts.h): each GPU's ring and paths, and the floor of a decode token's expert
  // traffic: per sparse layer the slower of its copies (h2d_gbps) and its host reads (cpu_gemv_gbps), summed.
  std::map<int32_t, ExpertRingPlan> expert_rings;
  double expert_floor_us = 0;
  std::vector<DeviceAccount> usage;    // PlanUsage
  bool synthetic_checkpoint = false;
  bool graph_decode = false;           // decode predicted as CUDA-graph replays (all resident, eligible family)
  // Tensor parallelism (placement candidate T, planner/tensor_parallel.h): the shard count, 0 when not chosen. When
  // chosen, `model` is the sharded description (its blocks are the shards, parallel to placement.blocks and
  // block_costs), source_model the model as read, and `shard` / `slices` ShardedModel's.
  uint32_t tensor_parallel = 0;
  ModelDescription source_model;
  std::vector<uint32_t> shard;
  std::vector<std::map<std::string, arch::TensorSlice>> slices;

  const schema::Plan& plan() const { return *schema::GetPlan(bytes.data()); }
};

Result<PlanResult> MakePlan(const PlanRequest& request);

// A batched prefill of `rows` rows x `tokens` tokens returning the logits of the last position only (what a prefill
// for generation needs; ForwardOptions::last_position_only), as the executor runs it: pipelined in micro-batches
// over the GPUs where the plan allows it (ExecutorOptions::micro_batch_rows, cost_model.h SimulatePipelinedPass),
// replayed from CUDA graphs (the steady state: the executor captures them after a shape's first, eager pass).
struct BatchedPrefillPrediction {
  double total_us = 0;              // the pass as the executor runs it (= unpipelined_us when not pipelined)
  double unpipelined_us = 0;        // one pass of all rows, not pipelined (issued eagerly)
  uint32_t micro_batches = 0;       // 0: not pipelined
  uint32_t rows_per_micro_batch = 0;  // 0: not pipelined
  double host_us = 0;               // the host's issue time for the whole pass (pipelined: every task's replay;
                                    // unpipelined: every op)
};

// The executor's automatic micro-batch: ceil(kMicroBatchTokens / tokens per row) rows, so that a micro-batch's
// products stay compute-bound (ExecutorOptions::micro_batch_rows).
inline constexpr uint32_t kMicroBatchTokens = 512;

// Whether the executor pipelines the plan's batched passes: every block resident (Gpu tier) on a CUDA device, at
// least two devices, no streamed weights, no routed experts, no host units (Executor's `pipelinable`).
bool PipelinablePlan(const PlanResult& plan);

// Predicts that pass with the planner's cost model. `micro_batch_rows`: 0, the executor's automatic rule
// (ceil(kMicroBatchTokens / tokens) rows, pipelined only if that makes at least two micro-batches); -1, not
// pipelined; N > 0, N rows per micro-batch (again only if that makes at least two). Steps cost what the planner's
// prefill prediction charges them (cost_model.h EstimateBlockCost's prefill form at RunSize{rows per micro-batch,
// tokens}; the lm_head at one position per row), the hidden state's hops between GPUs kDeviceHopEagerMicros + its
// bytes (hidden x dtype x rows x tokens) at kPeerGbps. The unpipelined pass is SimulateForward's with those device
// times and the host issuing kHostPrefillOpMicros per kernel (streamed weights' copies included; a plan with routed
// experts: without their copies); the pipelined pass is SimulatePipelinedPass's (kHostGraphTaskMicros per task;
// `micro_batch_group` micro-batches in flight, ExecutorOptions::micro_batch_group: 0, all of them).
// kInvalidArgument for rows or tokens of 0.
Result<BatchedPrefillPrediction> PredictBatchedPrefill(const PlanResult& plan, uint32_t rows, uint32_t tokens,
                                                       int micro_batch_rows = 0, int micro_batch_group = 0);

// A decode step of the plan run as ranks (ExecutorOptions::world_size: one process per plan GPU, rank r on cuda:r):
// the one-process step (decode.total_us) plus, for each time the hidden state crosses between processes (every
// change of GPU from step to step, and the logits' way back to rank 0 when the head is elsewhere), what a NCCL
// point-to-point transfer and the ranks' hand-off add over an in-process peer copy (kRankHopExtraMicros, graph
// replayed, or kRankHopExtraEagerMicros). A tensor-parallel plan runs one rank per shard: the one-process step plus,
// for each all-reduce (one after the embedding, arch::LayerAllReduces a decoder layer, one for the logits), what an
// NCCL all-reduce adds over the in-process one (kRankAllReduceExtraMicros, or kRankAllReduceExtraEagerMicros).
// ranks 0 for a plan on fewer than two GPUs.
struct RanksDecodePrediction {
  uint32_t ranks = 0;
  uint32_t crossings = 0;    // hidden-state crossings between processes (split plans)
  uint32_t all_reduces = 0;  // all-reduces between processes (tensor-parallel plans)
  double total_us = 0;
};
RanksDecodePrediction PredictRanksDecode(const PlanResult& plan);

// Resolves a request's model source and opens its checkpoint, if any (used by MakePlan and the tools).
struct ResolvedModel {
  ModelDescription model;
  std::string checkpoint_path;                   // "" when planning without weights
  std::optional<Checkpoint> checkpoint;          // opened (headers validated) when checkpoint_path is set
  std::vector<std::string> synthetic_shards;     // from DIR/model.safetensors.index.json when present
  std::map<std::string, uint32_t> synthetic_shard_of;
  // Lowercase hex sha256 of the bytes of DIR/config.json when the model came from a model directory whose
  // config.json is the checkpoint directory's (always so without weights); "" otherwise (a description, or a
  // checkpoint elsewhere). Recorded in the plan as Fingerprint.config_sha256 (plan_builder.h).
  std::string config_sha256;
};
Result<ResolvedModel> ResolveModel(const PlanRequest& request);

// The schedule of a placement: each block's resident and host buffers, KV caches, activations, and every streaming
// device's units in a ring of the placement's size (planner/streaming.h); then the memory plan.
// With `host_rows`, those weights' last rows are marked as host units (planner/host_compute.h); the ring keeps its
// slot count (its slots grow by the extra chunk alignment).
Result<Schedule> ScheduleFor(const ModelDescription& model, const PlanRequest& request, const Placement& placement,
                             DType exec_dtype, const HostRows* host_rows = nullptr);

}  // namespace bigplan
