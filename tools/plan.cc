// plan: makes an execution plan for a model larger than one GPU, and prints what it decided.
//
//   plan                                   plans the bundled examples (Llama-2-7B, GPT-J-6B) for the default budget
//   plan --model DIR -o model.bplan        plans a Hugging Face checkpoint directory and writes the plan
//
// See kUsage for every flag. Relative paths are taken from the directory `bazel run` was started in.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/quant.h"
#include "planner/budget.h"
#include "planner/device_profile.h"
#include "planner/placement.h"
#include "planner/plan_report.h"
#include "planner/planner.h"
#include "schema/plan_io.h"
#include "support/cli.h"
#include "support/units.h"
#include "support/file_read.h"
#include "support/json_parse.h"
#include "support/result.h"
#include "support/tool_main.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultBudget = "cuda:0=4GiB,cpu=64GiB,disk=200GiB";
constexpr uint32_t kDefaultBatch = 1;
constexpr uint32_t kDefaultSeqLen = 512;
constexpr const char* kDefaultDType = "bf16";
const char* const kBundledExamples[] = {"llama-2-7b", "gpt-j-6b"};

constexpr const char* kUsage =
    "usage: plan [FLAGS]\n"
    "\n"
    "Plans a model for the given memory budgets: which device computes each block, where each weight rests\n"
    "(resident on the GPU, pinned CPU memory, or disk), how streamed weights flow through each GPU's ring, and\n"
    "every buffer's offset. Prints the placement, the memory plan and the predicted time per forward pass (for\n"
    "a plan resident on several GPUs, also of a batched prefill pipelined in micro-batches); -o writes the plan\n"
    "file.\n"
    "With no model flag, plans the bundled examples (Llama-2-7B and GPT-J-6B, no weights needed) for\n"
    "--max-memory cuda:0=4GiB,cpu=64GiB,disk=200GiB, bf16, batch 1, sequence length 512.\n"
    "\n"
    "model (at most one):\n"
    "  --model DIR              Hugging Face model directory: config.json + *.safetensors (the description is\n"
    "                           imported from config.json and validated against the shard headers). A directory\n"
    "                           with config.json only (or config.json + tensors.json) is planned without weights.\n"
    "  --description FILE       a model description JSON (planner/MODEL_FORMAT.md)\n"
    "  --checkpoint PATH        checkpoint to validate against and locate tensors in (default: --model DIR)\n"
    "plan:\n"
    "  --max-memory SPEC        budgets, e.g. \"cuda:0=10GiB,cuda:1=10GiB,cpu=30GiB,disk=100GiB\" (default:\n"
    "                           cuda:0=4GiB,cpu=64GiB,disk=200GiB). Without cuda entries the plan is CPU-only.\n"
    "  --dtype DTYPE            execution dtype: bf16, fp16, fp32 (default: bf16 for the examples, else the\n"
    "                           checkpoint's dtype)\n"
    "  --weights FORMAT         how linear-layer weights are stored and streamed: bf16 (as the execution dtype,\n"
    "                           default), fp8 (e4m3, a scale per row), int8 (a scale per row), int4 (groups of\n"
    "                           128 columns with a scale and a zero each); quantized by the executor at load\n"
    "                           (mixture-of-experts routers stay at the execution dtype)\n"
    "  --weights-group N        columns per scale of every quantized matrix (default: per row for fp8/int8,\n"
    "                           128 for int4); 32 for checkpoints converted from GGUF Q4 blocks\n"
    "  --cpu-share SHARE        host compute in decode: the share of each streamed linear-layer matrix's rows\n"
    "                           the CPU multiplies from pinned memory while the rest streams (0 < SHARE < 1),\n"
    "                           auto (the share the cost model predicts fastest, none where nothing\n"
    "                           streams; needs a profile with cpu_gemv_gbps, such as the bundled\n"
    "                           h100-pcie5), or off (default). Decode\n"
    "                           forwards of at most --batch tokens (<= 16) use it; prefill streams every row.\n"
    "                           Mixture-of-experts plans (placement E): the share of a decode token's chosen\n"
    "                           non-resident experts the host computes instead of copying them\n"
    "  --expert-prefetch N      mixture-of-experts plans: experts of the next sparse layer copied ahead of its\n"
    "                           router in decode, the most probable under that router run on the current\n"
    "                           layer's input (default: 1 where the cost model predicts it faster than none;\n"
    "                           0: none; at most num_experts_per_tok)\n"
    "  --batch N                maximum batch size (default 1)\n"
    "  --seq-len N              maximum sequence length, prompt + generated (default 512)\n"
    "  --strategy NAME          placement strategy: auto (default), sequential (Accelerate's\n"
    "                           infer_auto_device_map), balanced / balanced_low_0 (Accelerate's\n"
    "                           balanced device maps over several GPUs), explicit (needs --device-map)\n"
    "  --device-map FILE        HF-style device map JSON for --strategy explicit (implies it when no strategy\n"
    "                           is given)\n"
    "  --memory-algorithm NAME  arena planner: greedy_by_size (default), linear\n"
    "  --prefetch-depth N       blocks streamed whole: a ring of N + 1 slots of the largest one (default 1)\n"
    "  --chunk-bytes SIZE       stream every streamed weight larger than SIZE in row chunks of at most SIZE\n"
    "                           (the chunks layout; default: only when a layer does not fit half the ring)\n"
    "  --auto-candidates LETTERS  which placements auto chooses from (default BPCEIST): B whole blocks, P partly\n"
    "                           resident blocks, C row-chunked streaming through a quarter of the budget, E\n"
    "                           mixture-of-experts models: experts resident as they fit (several GPUs: a range\n"
    "                           of layers each), the others moved to their GPU or computed by the host when the\n"
    "                           router picks them (chosen when it fits), I every\n"
    "                           block resident on several GPUs and max_batch >= 2: layers dealt to the GPUs in\n"
    "                           groups of 4 or more (2-4 per GPU), for pipelined batches (chosen when it fits),\n"
    "                           S several GPUs:\n"
    "                           layers dealt to the GPUs in turn so every GPU's link streams (chosen when its\n"
    "                           busiest link copies over 5% less than the best other candidate's), T several\n"
    "                           GPUs: each block split over all of them (heads, MLP rows, vocabulary), so a decode\n"
    "                           step reads every GPU's share at once (resident, or, when the shards do not fit,\n"
    "                           each GPU streaming its share over its own link; chosen when its\n"
    "                           predicted decode step is at least 10% faster and, for max_batch >= 2, its\n"
    "                           batched prefill no slower than the pipelined one; T alone: always, or an error\n"
    "                           saying why it does not apply)\n"
    "  --profile FILE           device profile JSON (default: the H100 profile, or the CPU profile without GPUs)\n"
    "output:\n"
    "  -o, --output FILE        write the plan (a .bplan flatbuffer)\n"
    "  --export-device-map FILE write the placement as an HF-style device map JSON\n"
    "  --quiet                  no progress messages on stderr\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed (bad input, infeasible budget), 2 bad command line.\n";

constexpr Cli kCli(kUsage);

Error Usage(const std::string& why) { return kCli.Usage(why); }

// A data file of this repository, from the binary's runfiles (bazel run / bazel test) or the current directory.
std::string Runfile(const std::string& rel, const char* argv0) {
  std::vector<std::string> roots;
  if (const char* r = std::getenv("RUNFILES_DIR")) roots.push_back(std::string(r) + "/bigplan");
  if (const char* r = std::getenv("TEST_SRCDIR")) roots.push_back(std::string(r) + "/bigplan");
  roots.push_back(std::string(argv0) + ".runfiles/bigplan");
  roots.push_back(".");
  for (const std::string& root : roots)
    if (fs::exists(fs::path(root) / rel)) return (fs::path(root) / rel).string();
  return rel;
}

Result<nlohmann::json> ReadJsonFile(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kDeviceMapFile));
  return ParseJsonStrict(text, path);
}

struct Flags {
  std::string model_dir, description, checkpoint, max_memory, dtype, strategy, memory_algorithm, profile,
      device_map, export_device_map, output, weights, cpu_share, expert_prefetch;
  std::optional<uint32_t> batch, seq_len, prefetch_depth, weights_group;
  std::optional<uint64_t> chunk_bytes;
  std::string auto_candidates;
  bool quiet = false;
};

Result<Flags> ParseFlags(int argc, char** argv, bool* help) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return f;
    }
    if (arg == "--quiet") {
      f.quiet = true;
      continue;
    }
    if (arg.rfind("-", 0) != 0) return Usage("unexpected argument \"" + arg + "\"");
    std::string flag, value;
    switch (SplitFlag(argc, argv, &i,
                      {"--model", "--description", "--checkpoint", "--max-memory", "--dtype", "--batch", "--seq-len",
                       "--strategy", "--memory-algorithm", "--profile", "--device-map", "--export-device-map", "-o",
                       "--output", "--prefetch-depth", "--chunk-bytes", "--auto-candidates", "--weights", "--weights-group", "--cpu-share",
                       "--expert-prefetch"},
                      &flag, &value)) {
      case FlagSplit::kOk: break;
      case FlagSplit::kUnknown: return Usage("unknown flag \"" + flag + "\"");
      case FlagSplit::kMissingValue: return Usage(flag + ": missing value");
    }
    if (flag == "--model") f.model_dir = UserPath(value);
    else if (flag == "--description") f.description = UserPath(value);
    else if (flag == "--checkpoint") f.checkpoint = UserPath(value);
    else if (flag == "--max-memory") f.max_memory = value;
    else if (flag == "--dtype") f.dtype = value;
    else if (flag == "--weights") f.weights = value;
    else if (flag == "--cpu-share") f.cpu_share = value;
    else if (flag == "--expert-prefetch") f.expert_prefetch = value;
    else if (flag == "--weights-group") { BIGPLAN_ASSIGN_OR_RETURN(f.weights_group, kCli.ParsePositive(flag, value)); }
    else if (flag == "--batch") { BIGPLAN_ASSIGN_OR_RETURN(f.batch, kCli.ParsePositive(flag, value)); }
    else if (flag == "--seq-len") { BIGPLAN_ASSIGN_OR_RETURN(f.seq_len, kCli.ParsePositive(flag, value)); }
    else if (flag == "--prefetch-depth") { BIGPLAN_ASSIGN_OR_RETURN(f.prefetch_depth, kCli.ParsePositive(flag, value)); }
    else if (flag == "--chunk-bytes") {
      auto bytes = ParseByteSize(value);
      if (!bytes.ok() || *bytes == 0) return Usage(flag + ": expected a positive size such as 64MiB, got \"" + value + "\"");
      f.chunk_bytes = *bytes;
    }
    else if (flag == "--auto-candidates") {
      if (value.empty() || value.find_first_not_of("BPCEIST") != std::string::npos)
        return Usage("--auto-candidates: \"" + value + "\" is not a set of the letters B, P, C, E, I, S, T");
      f.auto_candidates = value;
    }
    else if (flag == "--strategy") f.strategy = value;
    else if (flag == "--memory-algorithm") f.memory_algorithm = value;
    else if (flag == "--profile") f.profile = UserPath(value);
    else if (flag == "--device-map") f.device_map = UserPath(value);
    else if (flag == "--export-device-map") f.export_device_map = UserPath(value);
    else if (flag == "-o" || flag == "--output") f.output = UserPath(value);
    else return Usage("unknown flag \"" + flag + "\"");
  }
  if (!f.model_dir.empty() + !f.description.empty() > 1) return Usage("give at most one of --model and --description");
  if (!f.checkpoint.empty() && f.model_dir.empty() && f.description.empty())
    return Usage("--checkpoint needs --model or --description");
  return f;
}

Status Main(int argc, char** argv) {
  bool help = false;
  BIGPLAN_ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, &help));
  if (help) {
    std::fputs(kUsage, stdout);
    return Status::Ok();
  }
  const bool examples = f.model_dir.empty() && f.description.empty();
  if (examples && (!f.output.empty() || !f.export_device_map.empty()))
    return Usage("-o and --export-device-map need one model (--model or --description)");

  PlanRequest base;
  {
    auto budget = ParseMaxMemory(f.max_memory.empty() ? kDefaultBudget : f.max_memory);
    if (!budget.ok()) return Usage(budget.error().message);  // names --max-memory and the entry
    base.budget = *budget;
  }
  base.run.max_batch = f.batch.value_or(kDefaultBatch);
  base.run.max_seq_len = f.seq_len.value_or(kDefaultSeqLen);
  const std::string dtype = !f.dtype.empty() ? f.dtype : examples ? kDefaultDType : "";
  if (!dtype.empty()) {
    auto d = ParseExecDType(dtype);
    if (!d.ok()) return Usage(d.error().message);  // names --dtype
    base.exec_dtype = *d;
  }
  if (!f.strategy.empty()) base.strategy = f.strategy;
  if (!f.device_map.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(base.device_map, ReadJsonFile(f.device_map));
    if (f.strategy.empty()) base.strategy = "explicit";
  } else if (base.strategy == "explicit") {
    return Usage("--strategy explicit needs --device-map FILE");
  }
  if (!f.memory_algorithm.empty()) base.memory_algorithm = f.memory_algorithm;
  if (!f.profile.empty()) { BIGPLAN_ASSIGN_OR_RETURN(base.profile, LoadDeviceProfile(f.profile)); }
  base.prefetch_depth = f.prefetch_depth;
  base.chunk_bytes = f.chunk_bytes;
  if (!f.weights.empty()) {
    Result<quant::Format> w = quant::ParseFormat(f.weights);
    if (!w.ok()) return Usage("--weights: " + w.error().message);
    base.weights = *w;
  }
  if (f.weights_group) {
    if (base.weights == quant::Format::kNone) return Usage("--weights-group needs --weights fp8, int8 or int4");
    base.weights_group = *f.weights_group;
  }
  if (f.cpu_share == "auto") {
    base.cpu_share_auto = true;
  } else if (f.cpu_share == "off") {
    base.cpu_share_off = true;
  } else if (!f.cpu_share.empty() && f.cpu_share != "off") {
    char* end = nullptr;
    const double share = std::strtod(f.cpu_share.c_str(), &end);
    if (end == f.cpu_share.c_str() || *end != '\0' || !(share > 0 && share < 1))
      return Usage("--cpu-share: expected auto, off or a share between 0 and 1, got \"" + f.cpu_share + "\"");
    base.cpu_share = share;
  }
  if (!f.expert_prefetch.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt("--expert-prefetch", f.expert_prefetch, 0, 4096));
    base.expert_prefetch = static_cast<int>(n);
  }
  if (!f.auto_candidates.empty()) base.auto_candidates = f.auto_candidates;
  if (!f.quiet) base.progress = [](const std::string& m) { std::fprintf(stderr, "plan: %s\n", m.c_str()); };

  std::vector<PlanRequest> requests;
  if (examples) {
    for (const char* name : kBundledExamples) {
      PlanRequest r = base;
      r.model_dir = Runfile(std::string("planner/examples/") + name, argv[0]);
      requests.push_back(std::move(r));
    }
  } else {
    PlanRequest r = base;
    r.model_dir = f.model_dir;
    r.description_path = f.description;
    r.checkpoint_path = f.checkpoint;
    requests.push_back(std::move(r));
  }

  for (size_t k = 0; k < requests.size(); ++k) {
    const PlanRequest& req = requests[k];
    BIGPLAN_ASSIGN_OR_RETURN(PlanResult result, MakePlan(req));
    std::ostringstream report;
    if (k) report << "\n";
    WritePlanReport(report, result, req);
    std::fputs(report.str().c_str(), stdout);
    std::fflush(stdout);
    if (!f.output.empty()) {
      BIGPLAN_RETURN_IF_ERROR(WriteFileBytes(f.output, result.bytes.data(), result.bytes.size()));
      std::fprintf(stderr, "plan: wrote %s (%zu bytes)\n", f.output.c_str(), result.bytes.size());
    }
    if (!f.export_device_map.empty()) {
      if (result.tensor_parallel > 0)
        return MakeError(ErrorCode::kUnsupported,
                         "--export-device-map: the plan splits every block over " +
                             std::to_string(result.tensor_parallel) +
                             " GPUs (tensor parallel), which a device map cannot say; plan with --auto-candidates "
                             "BPCEIS for a map");
      const std::string text = PlacementToDeviceMap(result.model, result.placement.blocks).dump(2) + "\n";
      BIGPLAN_RETURN_IF_ERROR(WriteFileBytes(f.export_device_map, reinterpret_cast<const uint8_t*>(text.data()),
                                             text.size()));
    }
  }
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("plan", [&] { return bigplan::Main(argc, argv); });
}
