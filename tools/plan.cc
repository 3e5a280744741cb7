// plan: makes an execution plan for a model larger than one GPU, and prints what it decided.
//
//   plan                                   plans the bundled examples (Llama-2-7B, GPT-J-6B) for the default budget
//   plan --model DIR -o model.bplan        plans a Hugging Face checkpoint directory and writes the plan
//
// See kUsage for every flag. Relative paths are taken from the directory `bazel run` was started in.

#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "planner/budget.h"
#include "planner/device_profile.h"
#include "planner/memory_plan.h"
#include "planner/placement.h"
#include "planner/planner.h"
#include "schema/plan_io.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "support/units.h"

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
    "Plans a model for the given memory budgets: which device computes each block, where its weights rest\n"
    "(resident on the GPU, pinned CPU memory, or disk), the prefetch schedule and every buffer's offset. Prints\n"
    "the placement, the memory plan and the predicted time per forward pass; -o writes the plan file.\n"
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
    "  --batch N                maximum batch size (default 1)\n"
    "  --seq-len N              maximum sequence length, prompt + generated (default 512)\n"
    "  --strategy NAME          placement strategy: auto (default), sequential (Accelerate's\n"
    "                           infer_auto_device_map), balanced / balanced_low_0 (Accelerate's\n"
    "                           balanced device maps over several GPUs), explicit (needs --device-map)\n"
    "  --device-map FILE        HF-style device map JSON for --strategy explicit (implies it when no strategy\n"
    "                           is given)\n"
    "  --memory-algorithm NAME  arena planner: greedy_by_size (default), linear\n"
    "  --prefetch-depth N       copy N streamed blocks ahead (default: chosen by the cost model)\n"
    "  --profile FILE           device profile JSON (default: the H100 profile, or the CPU profile without GPUs)\n"
    "output:\n"
    "  -o, --output FILE        write the plan (a .bplan flatbuffer)\n"
    "  --export-device-map FILE write the placement as an HF-style device map JSON\n"
    "  --quiet                  no progress messages on stderr\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed (bad input, infeasible budget), 2 bad command line.\n";

Error Usage(const std::string& why) { return MakeError(ErrorCode::kInvalidArgument, why + "\n\n" + kUsage); }

// Paths on the command line are relative to where the user ran `bazel run` (or the current directory).
std::string UserPath(const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  const char* wd = std::getenv("BUILD_WORKING_DIRECTORY");
  return wd && *wd ? (fs::path(wd) / path).string() : path;
}

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

Result<uint32_t> ParsePositive(const std::string& flag, const std::string& text) {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    return Usage(flag + ": expected a positive integer, got \"" + text + "\"");
  const unsigned long v = std::strtoul(text.c_str(), nullptr, 10);
  if (v == 0) return Usage(flag + ": must be at least 1");
  return static_cast<uint32_t>(v);
}

Result<nlohmann::json> ReadJsonFile(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, ReadFileBytes(path));
  nlohmann::json j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
  if (j.is_discarded()) return MakeError(ErrorCode::kCorrupt, path + ": not valid JSON");
  return j;
}

std::string Ms(double us) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3f ms", us / 1000.0);
  return buf;
}

std::string DeviceName(int32_t device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

const char* RestsIn(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "resident";
    case Tier::kCpu: return "cpu (pinned, streamed)";
    case Tier::kDisk: return "disk (streamed)";
  }
  return "?";
}

std::string Pad(const std::string& s, size_t width) { return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' '); }
std::string PadLeft(const std::string& s, size_t width) { return s.size() >= width ? s : std::string(width - s.size(), ' ') + s; }

// The placement table, grouped into runs of consecutive decoder layers with the same device and tier.
void PrintPlacement(std::ostream& out, const PlanResult& r) {
  const ModelDescription& m = r.model;
  struct Row {
    std::string name;
    int32_t device;
    Tier tier;
    size_t blocks;
    uint64_t bytes;
  };
  std::vector<Row> rows;
  for (size_t i = 0; i < m.blocks.size();) {
    const BlockDesc& b = m.blocks[i];
    const BlockPlacement& p = r.placement.blocks[i];
    size_t j = i + 1;
    uint64_t bytes = r.placement.block_weight_bytes[i];
    const std::string layer_suffix = std::to_string(b.layer);
    const bool numbered = b.kind == BlockKind::kDecoderLayer && b.name.size() > layer_suffix.size() &&
                          b.name.compare(b.name.size() - layer_suffix.size(), layer_suffix.size(), layer_suffix) == 0;
    const std::string stem = numbered ? b.name.substr(0, b.name.size() - layer_suffix.size()) : "";
    if (numbered) {
      while (j < m.blocks.size() && m.blocks[j].kind == BlockKind::kDecoderLayer &&
             m.blocks[j].layer == m.blocks[j - 1].layer + 1 && m.blocks[j].name == stem + std::to_string(m.blocks[j].layer) &&
             r.placement.blocks[j] == p) {
        bytes += r.placement.block_weight_bytes[j];
        ++j;
      }
    }
    std::string name = b.name;
    if (j - i > 1) name = stem + std::to_string(b.layer) + "-" + std::to_string(m.blocks[j - 1].layer);
    rows.push_back({name, p.device, p.tier, j - i, bytes});
    i = j;
  }
  size_t width = 10;
  for (const Row& row : rows) width = std::max(width, row.name.size() + 2);
  out << "placement (" << r.placement.strategy << "):\n";
  out << "  " << Pad("block", width) << Pad("compute", 9) << Pad("weights", 24) << PadLeft("blocks", 6)
      << PadLeft("bytes", 14) << "\n";
  for (const Row& row : rows)
    out << "  " << Pad(row.name, width) << Pad(DeviceName(row.device), 9) << Pad(RestsIn(row.tier), 24)
        << PadLeft(std::to_string(row.blocks), 6) << PadLeft(FormatBytes(row.bytes), 14) << "\n";
  // Weight bytes by where they rest.
  std::map<std::string, uint64_t> by_place;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const BlockPlacement& p = r.placement.blocks[i];
    const std::string key = p.tier == Tier::kGpu ? DeviceName(p.device) : TierName(p.tier);
    by_place[key] += r.placement.block_weight_bytes[i];
  }
  out << "  weights by location:";
  bool first = true;
  for (const auto& [where, bytes] : by_place) {
    out << (first ? " " : ", ") << where << " " << FormatBytes(bytes);
    first = false;
  }
  out << "\n";
}

void PrintMemory(std::ostream& out, const PlanResult& r) {
  out << "memory plan (" << r.schedule.memory.algorithm << "):\n";
  for (const ArenaSize& a : r.schedule.memory.arenas) {
    size_t count = 0;
    for (const ScheduledBuffer& b : r.schedule.buffers)
      if (b.request.pool == a.pool) ++count;
    out << "  arena " << Pad(PoolName(a.pool), 8) << PadLeft(FormatBytes(a.size), 12) << "  (" << count
        << " buffers)\n";
  }
  out << "  usage vs budget:\n";
  for (const DeviceAccount& a : r.usage) {
    out << "    " << Pad(a.device, 8) << PadLeft(FormatBytes(a.total), 12) << " of "
        << (a.unlimited ? std::string("unlimited") : FormatBytes(a.budget));
    std::vector<std::string> parts;
    auto part = [&](const char* what, uint64_t v) {
      if (v) parts.push_back(std::string(what) + " " + FormatBytes(v));
    };
    part(a.device == "cpu" ? "weights" : a.device == "disk" ? "disk-tier weights" : "resident", a.resident_weights);
    part("staging", a.staging);
    part("KV", a.kv_cache);
    part("activations", a.activations);
    part("reserve", a.workspace_reserve);
    if (!parts.empty()) {
      out << "  (";
      for (size_t k = 0; k < parts.size(); ++k) out << (k ? " + " : "") << parts[k];
      out << ")";
    }
    out << "\n";
  }
}

void PrintPrediction(std::ostream& out, const PlanResult& r, const RunShape& run) {
  out << "prefetch depth: cpu " << r.schedule.cpu_prefetch_depth << ", disk " << r.schedule.disk_prefetch_depth
      << "\n";
  out << "predicted per forward (profile " << r.profile.name << "):\n";
  out << "  decode  (" << run.max_batch << " x 1 token, KV at " << run.max_seq_len << "): " << Ms(r.decode.total_us)
      << "  (compute " << Ms(r.decode.compute_us) << ", waiting for copies " << Ms(r.decode.compute_stall_us) << ")\n";
  out << "  prefill (" << run.max_batch << " x " << run.max_seq_len << " tokens): " << Ms(r.prefill.total_us)
      << "  (compute " << Ms(r.prefill.compute_us) << ", waiting for copies " << Ms(r.prefill.compute_stall_us)
      << ")\n";
  out << "  floor: streamed " << FormatBytes(r.streamed_bytes) << " per forward at " << r.profile.h2d_gbps
      << " GB/s H2D";
  bool disk = false;
  for (const ScheduledCopy& c : r.schedule.copies) disk = disk || c.source == schema::Tier::Disk;
  if (disk) out << " (disk blocks also at " << r.profile.disk_gbps << " GB/s)";
  out << ": " << Ms(r.copy_floor_us) << "\n";
}

void PrintReport(std::ostream& out, const PlanResult& r, const PlanRequest& req) {
  const ModelDescription& m = r.model;
  uint64_t weight_bytes = 0;
  for (uint64_t b : r.placement.block_weight_bytes) weight_bytes += b;
  const double count = static_cast<double>(m.TotalParams());
  char params[32];
  if (count >= 1e9) std::snprintf(params, sizeof(params), "%.2fB", count / 1e9);
  else if (count >= 1e6) std::snprintf(params, sizeof(params), "%.2fM", count / 1e6);
  else std::snprintf(params, sizeof(params), "%.0f", count);
  out << "== " << m.name << " (" << m.architecture << ", " << m.blocks.size() << " blocks, " << params
      << " params, " << FormatBytes(weight_bytes) << " at " << DTypeString(r.exec_dtype) << ") ==\n";
  out << "budget: " << req.budget.ToString() << "\n";
  out << "run: batch " << req.run.max_batch << ", seq " << req.run.max_seq_len << ", dtype "
      << DTypeString(r.exec_dtype) << "\n";
  const auto& fp = *r.plan().checkpoint();
  if (r.synthetic_checkpoint)
    out << "checkpoint: none (synthetic fingerprint; the executor will refuse this plan)\n";
  else
    out << "checkpoint: " << fp.shards()->size() << " shard(s), digest " << fp.digest()->str().substr(0, 16) << "\n";
  PrintPlacement(out, r);
  PrintMemory(out, r);
  PrintPrediction(out, r, req.run);
}

struct Flags {
  std::string model_dir, description, checkpoint, max_memory, dtype, strategy, memory_algorithm, profile,
      device_map, export_device_map, output;
  std::optional<uint32_t> batch, seq_len, prefetch_depth;
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
    std::string flag = arg, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos && arg.rfind("--", 0) == 0) {
      flag = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else {
      static const char* kKnown[] = {"--model", "--description", "--checkpoint", "--max-memory", "--dtype",
                                     "--batch", "--seq-len", "--strategy", "--memory-algorithm", "--profile",
                                     "--device-map", "--export-device-map", "-o", "--output", "--prefetch-depth"};
      bool known = false;
      for (const char* k : kKnown) known = known || flag == k;
      if (!known) return Usage("unknown flag \"" + flag + "\"");
      if (i + 1 >= argc) return Usage(flag + ": missing value");
      value = argv[++i];
    }
    if (flag == "--model") f.model_dir = UserPath(value);
    else if (flag == "--description") f.description = UserPath(value);
    else if (flag == "--checkpoint") f.checkpoint = UserPath(value);
    else if (flag == "--max-memory") f.max_memory = value;
    else if (flag == "--dtype") f.dtype = value;
    else if (flag == "--batch") { BIGPLAN_ASSIGN_OR_RETURN(f.batch, ParsePositive(flag, value)); }
    else if (flag == "--seq-len") { BIGPLAN_ASSIGN_OR_RETURN(f.seq_len, ParsePositive(flag, value)); }
    else if (flag == "--prefetch-depth") { BIGPLAN_ASSIGN_OR_RETURN(f.prefetch_depth, ParsePositive(flag, value)); }
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
    PrintReport(report, result, req);
    std::fputs(report.str().c_str(), stdout);
    std::fflush(stdout);
    if (!f.output.empty()) {
      BIGPLAN_RETURN_IF_ERROR(WriteFileBytes(f.output, result.bytes.data(), result.bytes.size()));
      std::fprintf(stderr, "plan: wrote %s (%zu bytes)\n", f.output.c_str(), result.bytes.size());
    }
    if (!f.export_device_map.empty()) {
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
