// Fixtures for the end-to-end tests: tiny random-weight Hugging Face models (tests/reference/make_tiny_models.py),
// plans made for them with the `plan` tool under several budgets, and transformers' reference outputs.
//
// Where things come from (each overridable, so the test binaries also run outside Bazel, e.g. on a GPU machine):
//   models     $BIGPLAN_TINY_MODELS (a directory made with `make_tiny_models.py --out-root DIR --families all`), or
//              generated once per binary into $TEST_TMPDIR (or /tmp) with the Python below
//   plan tool  $BIGPLAN_PLAN_TOOL, else tools/plan in the binary's runfiles
//   python     $BIGPLAN_PYTHON, else @torch//:python3 in the runfiles, else `python3`
//   generator  tests/reference/make_tiny_models.py in the runfiles, else $BIGPLAN_REPO/tests/reference/...
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "executor/executor.h"
#include "support/result.h"

namespace bigplan::e2e {

// The families make_tiny_models.py writes.
const std::vector<std::string>& AllFamilies();

std::string Env(const char* name);
// Whether a CUDA device is present (GPU tests skip without one).
bool HaveCuda();
// A runfile path (workspace-relative, e.g. "tools/plan"), or "" when absent.
std::string Runfile(const std::string& rel);
// A fresh directory under $TEST_TMPDIR (or /tmp).
std::string TempDir(const std::string& name);

// The models root (DIR/FAMILY for each family); generated on first use. "" on failure (printed to stderr).
const std::string& ModelsRoot();
std::string ModelDir(const std::string& family);

// Runs the plan tool: plan --model DIR --max-memory SPEC --dtype DTYPE --batch B --seq-len S -o OUT --quiet.
// kInfeasible when the tool says so (exit 1 with "infeasible"), kInternal with its output for other failures.
// `extra` is appended to the command line (e.g. "--device-map FILE").
Status MakePlan(const std::string& model_dir, const std::string& max_memory, const std::string& dtype,
                uint32_t batch, uint32_t seq_len, const std::string& out, const std::string& extra = "");
// Runs a shell command; its combined output in *output. Returns the exit status.
int RunCommand(const std::string& command, std::string* output);

// A Llama of random weights written by the gen_checkpoint tool (a runfile of the test): config.json, spec.json and
// the safetensors shards in `dir`, every tensor in `dtype` ("F32" or "BF16"), untied embeddings.
struct RandomLlama {
  int hidden = 64, intermediate = 128, layers = 2, heads = 4, kv_heads = 2, head_dim = 16, vocab = 256;
  int max_positions = 2048;
  std::string dtype = "F32";
  int seed = 3;
  double scale = 0.2;
};
Status WriteRandomLlama(const std::string& dir, const RandomLlama& m);

struct PlanSummary {
  int blocks = 0;
  int gpu_tier = 0;
  int cpu_tier = 0;
  int disk_tier = 0;
  int chunk_units = 0;  // stream units that are row chunks
  int cpu_compute = 0;  // blocks with device -1
  int routed = 0;       // routed expert matrices (schema::Weight.routed)
  int routed_disk = 0;  // of which resting on disk
  int disk_weights = 0; // weights resting on disk (routed or streamed)
  std::string exec_dtype;
  std::string ToString() const;  // "5 blocks: gpu 1, cpu 2, disk 2 tier; 0 on the cpu; F32"
};
Result<PlanSummary> SummarizePlan(const std::string& plan_path);
// Whether a tiny family (tests/reference/make_tiny_models.py) is a mixture of experts.
inline bool IsMoeFamily(const std::string& family) {
  return family == "mixtral" || family.rfind("qwen2_moe", 0) == 0 || family == "qwen3_moe";
}

// The smallest budget in [lo, hi] (to `granularity` bytes) for which `feasible` holds, assuming monotonicity;
// kInfeasible if even `hi` fails.
Result<uint64_t> SmallestFeasible(const std::function<bool(uint64_t)>& feasible, uint64_t lo, uint64_t hi,
                                  uint64_t granularity);

// Mixture-of-experts models: the routed-experts placement (E) with the host computing half of a decode forward's
// non-resident chosen experts, as the suites plan it; kRoutedHostBudget of cpu memory.
inline constexpr const char* kRoutedPlanFlags = "--auto-candidates E --cpu-share 0.5";
inline constexpr uint64_t kRoutedHostBudget = 8ull << 30;
// The smallest budget (to 4 KiB) for each of `gpus` GPUs (cuda:0, ...) that plan fits with kRoutedPlanFlags and
// kRoutedHostBudget for a batch x seq_len run (the most experts routed from pinned memory); `scratch` receives the
// probe plans.
Result<uint64_t> SmallestRoutedGpuBudget(const std::string& model_dir, const std::string& dtype, uint32_t batch,
                                         uint32_t seq_len, const std::string& scratch, int gpus = 1);
// "cuda:0=B,...,cuda:{gpus-1}=B,cpu=kRoutedHostBudget".
std::string RoutedBudgets(uint64_t gpu_budget, int gpus);

// A named plan of one model.
struct PlanCase {
  std::string name;
  std::string path;
  std::string max_memory;
  PlanSummary summary;
};

// Plans `model_dir` (batch 2, `seq_len`) into `dir` under the budgets of the suite:
//   gpu_resident      cuda:0=8GiB,cpu=8GiB                 every block resident on cuda:0
//   cpu_tier          the smallest feasible cuda:0 budget, cpu=8GiB: streamed blocks rest in pinned memory
//   disk_tier         that cuda:0 budget and the smallest feasible cpu budget: blocks rest on disk
//   mixed             cuda:0 halfway between cpu_tier's and the smallest that keeps every block resident
//   cpu_compute       cpu=8GiB (no GPU budget): every block computed on the CPU
//   cpu_compute_disk  an explicit device map without a GPU: embedding and final norm "cpu", decoder layers and
//                     lm_head "disk" (CPU compute reading disk-tier weights)
//   explicit_tiers    an explicit device map on cuda:0: embedding and final norm resident, decoder layers
//                     alternating "cpu" and "disk" tiers, lm_head "disk"
// (For tiny models the planner's own choice rarely streams on the CPU: staging costs more than residency.)
// `dtype` is the plan's execution dtype ("fp32", "bf16").
Result<std::vector<PlanCase>> PlanSuite(const std::string& model_dir, const std::string& dir,
                                        const std::string& dtype, uint32_t seq_len = 16);

// min(16, the model's max_position_embeddings / n_positions from config.json): the planner refuses longer runs.
uint32_t SuiteSeqLen(const std::string& model_dir);

// reference.safetensors of a tiny model.
struct Reference {
  int64_t batch = 0;
  int64_t prompt_len = 0;
  int64_t steps = 0;
  int64_t vocab = 0;
  std::vector<int64_t> input_ids;                 // [batch, prompt_len]
  std::vector<std::vector<float>> logits;         // logits[0]: [batch, prompt_len, vocab]; logits[k]: [batch, 1, vocab]
  std::vector<std::vector<int64_t>> step_tokens;  // step_tokens[k] (k >= 1): [batch] input of decode step k
  std::vector<int64_t> generated;                 // [batch, steps + 1]
  std::vector<std::vector<int64_t>> Prompts() const;
  std::vector<int64_t> GeneratedRow(int64_t b) const;
};
Result<Reference> LoadReference(const std::string& model_dir);

// max|a - b| / max|b|.
double MaxRelError(const std::vector<float>& a, const std::vector<float>& b);

// The prefill and the first `max_steps` decode steps of `ref` (-1: all) through `exec`, from a reset cache;
// per-step max relative errors.
struct StepErrors {
  std::vector<double> rel;            // per step (0 = prefill)
  double max_rel = 0;
  std::vector<Logits> logits;         // ours, per step
};
Result<StepErrors> CompareWithReference(Executor& exec, const Reference& ref, int64_t max_steps = -1);

// Fraction of positions (rows x positions of every step) whose argmax equals the reference's, counting only
// positions where the reference's top-1 beats its top-2 by more than `margin` x max|reference logits|.
double TopOneAgreement(const StepErrors& ours, const Reference& ref, double margin);

}  // namespace bigplan::e2e
