// End-to-end GPU benchmark: in one run, measures the machine's floors, plans the model for each configuration,
// runs the plan with the executor and writes JSON results (and a Chrome trace per configuration).
//
//   e2e_bench --model DIR [--gpu-budgets 4,6,8] [--cpu-budget-gib 100] [--disk-config GPU_GIB:CPU_GIB]
//             [--resident-budget-gib 40] [--prefill 512] [--repeat 5] [--out results.json] [--trace-dir DIR]
//             [--drop-caches] [--no-cuda-graphs] [--weights bf16,fp8,int8,int4] [--cpu-share auto|off|SHARE,...]
//             [--host-threads N] [--host-spin-us N] [--no-fused-kernels] [--prefill-graphs N] [--streamed-decode] [--decode-batches 1,8] [--resident-split SPEC]...
//             [--offload-split SPEC]... [--auto-candidates LETTERS] [--prefill-batch 8 [--micro-batch-rows 1,2] [--micro-batch-groups 0,2]]
//             [--split-stride 8,16] [--expert-prefetch plan,0,1,2] [--expert-split 64,0] [--kineto DIR]
//             [--adapt-share] [--no-grouped-prompt-experts]
//
// --weights: every cpu-offload budget is planned once per weight format (plan --weights); each configuration also
// reports the bf16 floor of its budget (the bytes a bf16 plan of the same budget streams / H2D), which compressed
// and hybrid plans are measured against.
// --cpu-share: every cpu-offload configuration is planned once per listed host share (plan --cpu-share; "off" is
// the plain streamed plan), with the host's matrix-vector rate measured in this run in the profile.
// --expert-prefetch: mixture-of-experts plans run once per listed next-layer prefetch (ExecutorOptions::
// expert_prefetch; "plan": the plan's own), each reporting its hits and the floor of the bytes its decode moved.
// --expert-split: and once per listed ExecutorOptions::expert_split_rows (0: whole experts on the host; default: the
// executor's own, 64).
// --kineto: one more prompt of each offload configuration (NAME.prompt.kineto.json), a few more KV-cached decode
// steps of each mixture-of-experts configuration, and one more prefill and three decode steps of each all-resident
// one, run under LibTorch's Kineto profiler (CUPTI: every kernel, copy and runtime call with the device's own timestamps), saved as a Chrome trace
// DIR/NAME.kineto.json (benchmarks/gpu/kineto_summary.py summarizes one).
//
// For every offload configuration it reports forward time for 1 token and for a `--prefill`-token prompt (each a
// fresh sequence), the floor (bytes streamed per forward / pinned H2D bandwidth measured in this run; for disk
// configurations disk bytes / O_DIRECT disk bandwidth + the rest over PCIe), and the planner's prediction. With
// --resident-budget-gib it also times a KV-cached decode step at `--prefill` context and a prefill with every
// weight resident, against weight bytes / device memory bandwidth and FLOPs / matmul rate.
// Decode steps of the resident plan replay a CUDA graph (ExecutorOptions::cuda_graphs) unless --no-cuda-graphs;
// --prefill-graphs N: ExecutorOptions::prefill_graph_shapes (0: one-GPU prefills unpadded and eager).
// --streamed-decode: streamed (cpu-offload) configurations also time KV-cached decode steps (replayed from CUDA graphs
// where the executor captures them; --no-cuda-graphs for the eager steps).
// --no-fused-kernels runs every op on LibTorch (ExecutorOptions::fused_kernels); --no-grouped-prompt-experts runs a
// prompt's quantized experts one at a time (ExecutorOptions::grouped_prompt_experts); --decode-batches plans the resident
// configuration for the largest batch and times its decode steps at each batch size; --resident-split
// "cuda:0=10GiB,cuda:1=10GiB" adds an all-resident configuration over those GPU budgets (measured like "resident"),
// --offload-split "cuda:0=4GiB,cuda:1=4GiB" a cpu-offload one (its floor: the busiest GPU link's bytes / H2D; one per
// --cpu-share, as a mixture-of-experts plan over several GPUs has the host compute some of each GPU's experts).
// --split-stride 8: each --resident-split also planned by an explicit map dealing the decoder layers to its GPUs in
// groups of 8 (embedding with the first group, head with the last); 0: also planned without auto's interleaved
// candidate I and its tensor-parallel candidate T (the contiguous split). Resident configurations over several GPUs
// also report the HBM floor of the larger share (the most weight bytes one GPU holds / device memory bandwidth).
// --prefill-batch N: resident configurations also time a prefill of N fresh `--prefill`-token rows, unpipelined
// (ForwardOptions::micro_batch_rows -1), with the executor's micro-batches (0) and with each --micro-batch-rows;
// --micro-batch-groups 0,2 runs each pipelined setting with each ForwardOptions::micro_batch_group (0: all in flight).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include "benchmarks/gpu/floors.h"
#include "executor/executor.h"
#include "formats/quant.h"
#include "planner/planner.h"
#include "schema/plan_io.h"
#include "support/tool_main.h"
#include "support/units.h"

namespace bigplan {
namespace {

struct Args {
  std::string model;
  std::vector<double> gpu_budgets{4};
  double cpu_budget_gib = 100;
  std::vector<std::pair<double, double>> disk_configs;  // (gpu GiB, cpu GiB)
  double resident_budget_gib = 0;
  int prefill = 512;
  int repeat = 5;
  std::string out = "e2e_results.json";
  std::string trace_dir;
  std::string kineto_dir;
  bool drop_caches = false;
  bool cuda_graphs = true;  // ExecutorOptions::cuda_graphs
  bool fused_kernels = true;  // ExecutorOptions::fused_kernels
  bool grouped_prompt_experts = true;  // ExecutorOptions::grouped_prompt_experts
  int prefill_graphs = -1;    // ExecutorOptions::prefill_graph_shapes (-1: the executor's default)
  bool streamed_decode = false;  // --streamed-decode: KV-cached decode steps of streamed plans too
  std::vector<double> decode_batches{1};  // the all-resident configuration's decode steps, per batch size
  int prefill_batch = 0;                  // > 1: resident configurations also time a batched prefill of this many rows
  std::vector<double> micro_batch_rows;   // ... with these ForwardOptions::micro_batch_rows (-1 off, 0 auto)
  std::vector<double> micro_batch_groups{0};  // ... each with these ForwardOptions::micro_batch_group
  std::vector<double> split_strides;      // each --resident-split also with layers dealt in groups of these sizes
  std::vector<std::string> resident_splits;  // more all-resident configurations: GPU budgets over several GPUs
  std::vector<std::string> offload_splits;   // more cpu-offload configurations over several GPUs
  std::string auto_candidates;               // plan --auto-candidates (empty: the planner's default)
  std::vector<quant::Format> weights{quant::Format::kNone};
  std::vector<std::string> cpu_shares{"off"};
  int host_threads = 0;  // ExecutorOptions::host_threads
  int host_spin_us = -1;  // ExecutorOptions::host_spin_us
  bool adapt_share = false;  // ExecutorOptions::adapt_expert_share
  std::vector<int> expert_prefetch{-1};  // ExecutorOptions::expert_prefetch per cpu-offload configuration
  std::vector<int> expert_split{-1};     // ExecutorOptions::expert_split_rows per cpu-offload configuration
};

Result<Args> ParseArgs(int argc, char** argv) {
  Args a;
  auto need = [&](int& i) -> Result<std::string> {
    if (i + 1 >= argc) return MakeError(ErrorCode::kInvalidArgument, std::string(argv[i]) + " needs a value");
    return std::string(argv[++i]);
  };
  // A comma-separated list's items, empty ones included ("a,,b" has three).
  auto items = [](const std::string& s) {
    std::vector<std::string> out;
    size_t p = 0;
    while (p <= s.size()) {
      const size_t c = std::min(s.find(',', p), s.size());
      out.push_back(s.substr(p, c - p));
      p = c + 1;
    }
    return out;
  };
  auto numbers = [](const std::string& s) {
    std::vector<double> v;
    size_t p = 0;
    while (p < s.size()) {
      size_t q = s.find(',', p);
      if (q == std::string::npos) q = s.size();
      if (q > p) v.push_back(std::stod(s.substr(p, q - p)));
      p = q + 1;
    }
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    try {
      if (f == "--model") { BIGPLAN_ASSIGN_OR_RETURN(a.model, need(i)); }
      else if (f == "--gpu-budgets") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.gpu_budgets = numbers(v); }
      else if (f == "--cpu-budget-gib") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.cpu_budget_gib = std::stod(v); }
      else if (f == "--disk-config") {
        BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i));
        size_t c = v.find(':');
        if (c == std::string::npos) return MakeError(ErrorCode::kInvalidArgument, "--disk-config wants GPU_GIB:CPU_GIB");
        a.disk_configs.emplace_back(std::stod(v.substr(0, c)), std::stod(v.substr(c + 1)));
      }
      else if (f == "--resident-budget-gib") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.resident_budget_gib = std::stod(v); }
      else if (f == "--prefill") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.prefill = std::stoi(v); }
      else if (f == "--repeat") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.repeat = std::stoi(v); }
      else if (f == "--out") { BIGPLAN_ASSIGN_OR_RETURN(a.out, need(i)); }
      else if (f == "--trace-dir") { BIGPLAN_ASSIGN_OR_RETURN(a.trace_dir, need(i)); }
      else if (f == "--kineto") { BIGPLAN_ASSIGN_OR_RETURN(a.kineto_dir, need(i)); }
      else if (f == "--drop-caches") { a.drop_caches = true; }
      else if (f == "--no-cuda-graphs") { a.cuda_graphs = false; }
      else if (f == "--no-fused-kernels") { a.fused_kernels = false; }
      else if (f == "--no-grouped-prompt-experts") { a.grouped_prompt_experts = false; }
      else if (f == "--streamed-decode") { a.streamed_decode = true; }
      else if (f == "--prefill-graphs") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.prefill_graphs = std::stoi(v); }
      else if (f == "--resident-split") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.resident_splits.push_back(v); }
      else if (f == "--offload-split") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.offload_splits.push_back(v); }
      else if (f == "--auto-candidates") { BIGPLAN_ASSIGN_OR_RETURN(a.auto_candidates, need(i)); }
      else if (f == "--prefill-batch") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.prefill_batch = std::stoi(v); }
      else if (f == "--split-stride") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.split_strides = numbers(v); }
      else if (f == "--micro-batch-rows") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.micro_batch_rows = numbers(v); }
      else if (f == "--micro-batch-groups") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.micro_batch_groups = numbers(v); }
      else if (f == "--decode-batches") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.decode_batches = numbers(v); }
      else if (f == "--weights") {
        BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i));
        a.weights.clear();
        for (const std::string& item : items(v)) {
          BIGPLAN_ASSIGN_OR_RETURN(quant::Format fmt, quant::ParseFormat(item));
          a.weights.push_back(fmt);
        }
      }
      else if (f == "--expert-prefetch") {
        BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i));
        a.expert_prefetch.clear();
        for (const std::string& n : items(v)) {
          if (n == "plan") a.expert_prefetch.push_back(-1);
          else if (!n.empty() && n.find_first_not_of("0123456789") == std::string::npos && n.size() < 4)
            a.expert_prefetch.push_back(std::stoi(n));
          else return MakeError(ErrorCode::kInvalidArgument, "--expert-prefetch: plan or a count, not \"" + n + "\"");
        }
      }
      else if (f == "--expert-split") {
        BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i));
        a.expert_split.clear();
        for (const std::string& n : items(v)) {
          if (!n.empty() && n.find_first_not_of("0123456789") == std::string::npos && n.size() < 6)
            a.expert_split.push_back(std::stoi(n));
          else return MakeError(ErrorCode::kInvalidArgument, "--expert-split: a row count (0: off), not \"" + n + "\"");
        }
      }
      else if (f == "--host-threads") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.host_threads = std::stoi(v); }
      else if (f == "--adapt-share") { a.adapt_share = true; }
      else if (f == "--host-spin-us") { BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i)); a.host_spin_us = std::stoi(v); }
      else if (f == "--cpu-share") {
        BIGPLAN_ASSIGN_OR_RETURN(std::string v, need(i));
        a.cpu_shares.clear();
        for (const std::string& share : items(v)) {
          if (share != "auto" && share != "off" && !(std::stod(share) > 0 && std::stod(share) < 1))
            return MakeError(ErrorCode::kInvalidArgument, "--cpu-share: auto, off or a share in (0, 1), not " + share);
          a.cpu_shares.push_back(share);
        }
      }
      else return MakeError(ErrorCode::kInvalidArgument, "unknown flag " + f);
    } catch (const std::exception&) {
      return MakeError(ErrorCode::kInvalidArgument, "bad number after " + f);
    }
  }
  if (a.model.empty()) return MakeError(ErrorCode::kInvalidArgument, "--model DIR is required");
  return a;
}

void DropPageCache() {
  ::sync();
  if (FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w")) {
    std::fputs("3\n", f);
    std::fclose(f);
  }
}

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int64_t> RandomTokens(int n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int64_t> ids(n);
  for (auto& x : ids) x = static_cast<int64_t>(g() % static_cast<uint64_t>(vocab));
  return ids;
}

struct Timing {
  double best = 0, median = 0;
  std::vector<double> all;
};

template <typename Fn>
Result<Timing> TimeIt(int repeat, Fn fn) {
  BIGPLAN_RETURN_IF_ERROR(fn());  // warm-up
  Timing t;
  for (int i = 0; i < repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    BIGPLAN_RETURN_IF_ERROR(fn());
    t.all.push_back(Seconds(t0));
  }
  std::vector<double> s = t.all;
  std::sort(s.begin(), s.end());
  t.best = s.front();
  t.median = s[s.size() / 2];
  return t;
}

// Runs fn under LibTorch's Kineto profiler (host calls and the device's kernels and copies) and saves the Chrome
// trace at path.
template <typename Fn>
Status Profiled(const std::string& path, Fn fn) {
  namespace prof = torch::profiler::impl;
  const std::set<prof::ActivityType> activities{prof::ActivityType::CPU, prof::ActivityType::CUDA};
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  const Status s = fn();
  std::unique_ptr<torch::autograd::profiler::ProfilerResult> result = torch::autograd::profiler::disableProfiler();
  BIGPLAN_RETURN_IF_ERROR(s);
  if (result == nullptr) return MakeError(ErrorCode::kInternal, "the Kineto profiler returned no result");
  result->save(path);
  std::fprintf(stderr, "   Kineto trace: %s\n", path.c_str());
  return Status::Ok();
}

nlohmann::json TimingJson(const Timing& t) { return {{"best_s", t.best}, {"median_s", t.median}, {"all_s", t.all}}; }

struct Config {
  std::string name;
  std::string tier;  // "cpu", "disk", "resident"
  double gpu_gib = 0;
  std::string max_memory;
  quant::Format weights = quant::Format::kNone;
  std::string cpu_share = "off";  // plan --cpu-share
  int stride = -1;  // > 0: an explicit map dealing decoder layers to the budget's GPUs in groups of this many;
                   // 0: auto without its interleaved candidate I (the contiguous split)
  int prefetch = -1;  // ExecutorOptions::expert_prefetch
  int split = -1;     // ExecutorOptions::expert_split_rows
};

// KV-cached single-token steps after `context` (a fresh sequence): repeat x 4 timed steps, each feeding the next
// token id. Records in *j how many steps replayed a CUDA graph, and why graphs turned off if a capture failed.
// `batch` rows, each the context, then single-token steps of `batch` tokens.
Result<Timing> TimeDecodeSteps(Executor* exec, const std::vector<int64_t>& context, int64_t vocab, int repeat,
                               nlohmann::json* j, int64_t batch = 1) {
  ForwardOptions fresh;
  fresh.reset = true;
  fresh.last_position_only = true;
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < batch; ++b) rows.insert(rows.end(), context.begin(), context.end());
  BIGPLAN_RETURN_IF_ERROR(exec->Forward(rows, batch, fresh).status());
  int64_t next = 0;
  const uint64_t graph_steps = exec->stats().graph_steps;
  std::vector<double> issue_ms;  // per step: the host's time to issue it (Stats::last_issue_ms)
  BIGPLAN_ASSIGN_OR_RETURN(Timing t, TimeIt(repeat * 4, [&]() -> Status {
    std::vector<int64_t> tok;
    for (int64_t b = 0; b < batch; ++b) {
      tok.push_back(next);
      next = (next + 1) % vocab;
    }
    ForwardOptions cont;
    cont.last_position_only = true;
    BIGPLAN_RETURN_IF_ERROR(exec->Forward(tok, batch, cont).status());
    issue_ms.push_back(exec->stats().last_issue_ms);
    return Status::Ok();
  }));
  const Stats stats = exec->stats();
  std::sort(issue_ms.begin(), issue_ms.end());
  (*j)["decode_issue_ms_median"] = issue_ms.empty() ? 0.0 : issue_ms[issue_ms.size() / 2];
  (*j)["decode_graph_steps"] = stats.graph_steps - graph_steps;
  (*j)["decode_steps"] = repeat * 4 + 1;
  (*j)["graph_capture_error"] = stats.graph_capture_error;
  return t;
}

// Bytes a plan's streams carry per forward, from pinned CPU memory and from disk.
void StreamedBytes(const schema::Plan& p, uint64_t* cpu_bytes, uint64_t* disk_bytes) {
  *cpu_bytes = *disk_bytes = 0;
  if (p.streams() == nullptr) return;
  for (const schema::Stream* st : *p.streams()) {
    if (st->units() == nullptr) continue;
    for (const schema::Unit* u : *st->units()) (u->source() == schema::Tier::Disk ? *disk_bytes : *cpu_bytes) += u->bytes();
  }
}

Status RunConfig(const Args& args, const Floors& floors, const DeviceProfile& profile, const Config& cfg,
                 nlohmann::json* out) {
  std::fprintf(stderr, "== %s: --max-memory %s\n", cfg.name.c_str(), cfg.max_memory.c_str());
  PlanRequest req;
  req.model_dir = args.model;
  BIGPLAN_ASSIGN_OR_RETURN(req.budget, ParseMaxMemory(cfg.max_memory));
  const bool resident = cfg.tier == "resident";
  const double max_batch = std::max<double>(*std::max_element(args.decode_batches.begin(), args.decode_batches.end()),
                                            args.prefill_batch);
  req.run = RunShape{resident ? static_cast<uint32_t>(std::max(1.0, max_batch)) : 1u,
                     static_cast<uint32_t>(resident ? 2 * args.prefill : args.prefill)};
  req.exec_dtype = DType::kBF16;
  req.profile = profile;
  req.weights = cfg.weights;
  if (!args.auto_candidates.empty()) req.auto_candidates = args.auto_candidates;
  if (cfg.cpu_share == "auto") req.cpu_share_auto = true;
  else if (cfg.cpu_share == "off") req.cpu_share_off = true;
  else req.cpu_share = std::stod(cfg.cpu_share);
  auto t_plan = std::chrono::steady_clock::now();
  if (cfg.stride == 0) {
    // The contiguous split: neither interleaved groups (I) nor every block split over the GPUs (T).
    for (char letter : {'I', 'T'})
      req.auto_candidates.erase(std::remove(req.auto_candidates.begin(), req.auto_candidates.end(), letter),
                                req.auto_candidates.end());
  }
  if (cfg.stride > 0) {
    // Layers [0, stride) on the first GPU, the next `stride` on the second, ...; the embedding with the first
    // layer, the final norm and head with the last.
    BIGPLAN_ASSIGN_OR_RETURN(PlanResult first, MakePlan(req));
    std::vector<int> gpus;
    for (const auto& [device, bytes] : req.budget.gpus) gpus.push_back(device);
    if (gpus.size() < 2) return MakeError(ErrorCode::kInvalidArgument, "--split-stride needs several GPUs");
    nlohmann::json map = nlohmann::json::object();
    int last = gpus[0];
    for (const schema::Block* b : *first.plan().blocks()) {
      if (b->kind()->str() == "decoder_layer") last = gpus[(b->layer() / cfg.stride) % gpus.size()];
    }
    for (const schema::Block* b : *first.plan().blocks()) {
      const std::string kind = b->kind()->str();
      map[b->name()->str()] = kind == "decoder_layer" ? gpus[(b->layer() / cfg.stride) % gpus.size()]
                              : kind == "embedding" || kind == "position_embedding" ? gpus[0] : last;
    }
    req.strategy = "explicit";
    req.device_map = map;
  }
  BIGPLAN_ASSIGN_OR_RETURN(PlanResult plan, MakePlan(req));
  const double plan_s = Seconds(t_plan);
  // The bf16 floor of this budget: what a bf16 plan of it streams per forward / H2D (this plan, when it is bf16).
  // Per device (each GPU copies over its own PCIe link; disk reads share the disk): the busiest link's bytes / H2D,
  // + every disk byte / disk bandwidth.
  auto floor_of = [&](const schema::Plan& p) {
    std::map<int32_t, uint64_t> link;
    uint64_t disk = 0;
    if (p.streams() != nullptr) {
      for (const schema::Stream* st : *p.streams()) {
        if (st->units() == nullptr) continue;
        for (const schema::Unit* u : *st->units()) {
          link[st->device()] += u->bytes();
          if (u->source() == schema::Tier::Disk) disk += u->bytes();
        }
      }
    }
    uint64_t worst = 0;
    for (const auto& [device, bytes] : link) worst = std::max(worst, bytes);
    return worst / (floors.h2d_gbps * 1e9) + (disk ? disk / (floors.disk_gbps * 1e9) : 0.0);
  };
  double bf16_floor_s = 0;
  if (cfg.weights == quant::Format::kNone && cfg.cpu_share == "off") {
    bf16_floor_s = floor_of(plan.plan());
  } else {
    PlanRequest bf16 = req;
    bf16.weights = quant::Format::kNone;
    bf16.cpu_share = 0;
    bf16.cpu_share_auto = false;
    bf16.cpu_share_off = true;
    BIGPLAN_ASSIGN_OR_RETURN(PlanResult b, MakePlan(bf16));
    bf16_floor_s = floor_of(b.plan());
  }
  const std::string plan_path = (args.trace_dir.empty() ? std::string("/tmp") : args.trace_dir) + "/" + cfg.name + ".bplan";
  BIGPLAN_RETURN_IF_ERROR(WriteFileBytes(plan_path, plan.bytes.data(), plan.bytes.size()));

  // Bytes the plan streams per forward, by source: its stream units (a partly resident block streams only part of
  // its weights).
  uint64_t cpu_bytes = 0, disk_bytes = 0;
  const auto& p = plan.plan();
  StreamedBytes(p, &cpu_bytes, &disk_bytes);
  if (args.drop_caches) DropPageCache();
  ExecutorOptions opts;
  opts.record_trace = !args.trace_dir.empty();
  opts.cuda_graphs = args.cuda_graphs;
  opts.fused_kernels = args.fused_kernels;
  opts.grouped_prompt_experts = args.grouped_prompt_experts;
  if (args.prefill_graphs >= 0) opts.prefill_graph_shapes = args.prefill_graphs;
  opts.host_threads = args.host_threads;
  opts.host_spin_us = args.host_spin_us;
  opts.adapt_expert_share = args.adapt_share;
  opts.expert_prefetch = cfg.prefetch;
  opts.expert_split_rows = cfg.split;
  auto t_load = std::chrono::steady_clock::now();
  BIGPLAN_ASSIGN_OR_RETURN(auto exec, Executor::Load(plan_path, args.model, opts));
  const double load_s = Seconds(t_load);
  // LibTorch's caching allocator holds what the plan's activation reserve is for (activations, temporaries, and
  // prefill graphs' pools, which the executor keeps outside it): its peaks from here on, per GPU, against the plan.
  for (const DeviceAccount& a : plan.usage) {
    if (a.device.rfind("cuda:", 0) == 0) c10::cuda::CUDACachingAllocator::resetPeakStats(std::stoi(a.device.substr(5)));
  }
  const int64_t vocab = exec->info().vocab_size;
  auto one = RandomTokens(1, vocab, 1);
  auto prompt = RandomTokens(args.prefill, vocab, 2);
  ForwardOptions fresh;  // a new sequence each time; only the last position's logits come back to the host
  fresh.reset = true;
  fresh.last_position_only = true;
  auto t_first = std::chrono::steady_clock::now();
  BIGPLAN_RETURN_IF_ERROR(exec->Forward(one, 1, fresh).status());
  const double first_s = Seconds(t_first);

  nlohmann::json j = {{"name", cfg.name}, {"tier", cfg.tier}, {"gpu_budget_gib", cfg.gpu_gib},
                      {"max_memory", cfg.max_memory}, {"weights", quant::FormatName(cfg.weights)},
                      {"bf16_floor_s", bf16_floor_s}, {"plan_s", plan_s}, {"load_s", load_s},
                      {"first_forward_s", first_s}, {"loaded_bytes", exec->stats().loaded_bytes},
                      {"cpu_tier_bytes", cpu_bytes}, {"disk_tier_bytes", disk_bytes},
                      {"gpu_tier_blocks", exec->info().gpu_tier_blocks}, {"cpu_tier_blocks", exec->info().cpu_tier_blocks},
                      {"disk_tier_blocks", exec->info().disk_tier_blocks},
                      {"disk_read_mode", exec->info().disk_read_mode},
                      {"device_arena_bytes", exec->info().device_arena_bytes},
                      {"pinned_pool_bytes", exec->info().pinned_pool_bytes},
                      {"predicted_1_s", plan.decode.total_us / 1e6}, {"predicted_prefill_s", plan.prefill.total_us / 1e6},
                      {"cpu_share_asked", cfg.cpu_share}, {"cpu_share", plan.cpu_share},
                      {"host_bytes", plan.host_bytes}, {"host_threads", exec->info().host_threads},
                      {"predicted_1_streamed_s", plan.decode_streamed_us / 1e6},
                      {"decode_copy_floor_predicted_s", plan.decode_copy_floor_us / 1e6},
                      {"placement", plan.placement.chosen.empty() ? plan.placement.strategy : plan.placement.chosen},
                      {"tensor_parallel", plan.plan().tensor_parallel()}};
  if (!resident) {
    auto drop = [&] { if (args.drop_caches && disk_bytes) DropPageCache(); };
    BIGPLAN_ASSIGN_OR_RETURN(Timing f1, TimeIt(args.repeat, [&]() -> Status {
      drop();
      return exec->Forward(one, 1, fresh).status();
    }));
    const uint64_t streamed = exec->stats().last_streamed_bytes;
    const uint64_t host_computed = exec->stats().host_compute_bytes;
    BIGPLAN_ASSIGN_OR_RETURN(Timing fp, TimeIt(args.repeat, [&]() -> Status {
      drop();
      return exec->Forward(prompt, 1, fresh).status();
    }));
    if (!args.kineto_dir.empty()) {
      BIGPLAN_RETURN_IF_ERROR(Profiled(args.kineto_dir + "/" + cfg.name + ".prompt.kineto.json", [&]() -> Status {
        return exec->Forward(prompt, 1, fresh).status();
      }));
    }
    const double floor_s = floor_of(p);
    j["forward_1"] = TimingJson(f1);
    j["forward_prefill"] = TimingJson(fp);
    j["forward_1_s"] = f1.best;
    j["forward_prefill_s"] = fp.best;
    j["streamed_bytes"] = streamed;
    j["host_compute_bytes_total"] = host_computed;
    // What a 1-token forward still copies, at the measured H2D rate (the host's rows are not copied).
    j["floor_1_s"] = static_cast<double>(streamed) / (floors.h2d_gbps * 1e9);
    j["floor_s"] = floor_s;
    j["ratio_1_to_floor"] = floor_s > 0 ? f1.best / floor_s : 0.0;
    j["ratio_prefill_to_floor"] = floor_s > 0 ? fp.best / floor_s : 0.0;
    j["ratio_1_to_bf16_floor"] = bf16_floor_s > 0 ? f1.best / bf16_floor_s : 0.0;
    j["prediction_error_1"] = plan.decode.total_us / 1e6 / f1.best - 1.0;
    j["prediction_error_prefill"] = plan.prefill.total_us / 1e6 / fp.best - 1.0;
    // (Ratios to a floor of zero, where nothing streams, are left out.)
    auto times = [](double t, double floor) {
      char r[48] = "";
      if (floor > 0) std::snprintf(r, sizeof r, " = %.3fx", t / floor);
      return std::string(r);
    };
    if (floor_s > 0 || p.experts() == nullptr)
    std::fprintf(stderr, "   1 token %.4f s%s, prefill %.4f s%s, floor %.4f s, predicted %.4f / %.4f s\n", f1.best,
                 times(f1.best, floor_s).c_str(), fp.best, times(fp.best, floor_s).c_str(), floor_s,
                 plan.decode.total_us / 1e6, plan.prefill.total_us / 1e6);
    if (bf16_floor_s > 0 || p.experts() == nullptr)
    std::fprintf(stderr, "   weights %s, cpu share %s (%.2f, %.2f GiB on the host): 1 token %.4f s%s the bf16 floor "
                 "%.4f s of this budget%s\n", quant::FormatName(cfg.weights), cfg.cpu_share.c_str(), plan.cpu_share,
                 plan.host_bytes / 1073741824.0, f1.best, times(f1.best, bf16_floor_s).c_str(), bf16_floor_s,
                 cpu_bytes + disk_bytes == 0 ? " (every weight resident: nothing streamed)" : "");
    if ((p.experts() == nullptr || p.experts()->size() == 0) && args.streamed_decode) {
      // KV-cached decode steps after a 16-token context (replayed from a CUDA graph with their copies where the
      // executor captures streamed steps), against the same floor as the 1-token forward.
      const std::vector<int64_t> ctx(prompt.begin(), prompt.begin() + std::min<int>(args.prefill, 16));
      BIGPLAN_ASSIGN_OR_RETURN(Timing dec, TimeDecodeSteps(exec.get(), ctx, vocab, args.repeat, &j));
      j["decode_step"] = TimingJson(dec);
      j["decode_step_s"] = dec.median;
      j["ratio_decode_step_to_floor"] = floor_s > 0 ? dec.median / floor_s : 0.0;
      char vs_floor[48] = ", nothing streamed";
      if (floor_s > 0) std::snprintf(vs_floor, sizeof vs_floor, ", %.3fx the floor", dec.median / floor_s);
      std::fprintf(stderr, "   KV-cached decode step %.4f s median (best %.4f s%s); %s of %s steps "
                   "replayed a CUDA graph%s%s\n", dec.median, dec.best, vs_floor,
                   j["decode_graph_steps"].dump().c_str(), j["decode_steps"].dump().c_str(),
                   j["graph_capture_error"].get<std::string>().empty() ? "" : ": ",
                   j["graph_capture_error"].get<std::string>().c_str());
    }
    if (p.experts() != nullptr && p.experts()->size() > 0) {
      // Routed experts: a KV-cached decode step against the floor of the path mix the planner chose (the least time
      // for its expected copied and host bytes per token at the rates measured in this run, MixFloorMicros, plus
      // what the GPU reads from its memory), and the prefill against its streaming floor (every non-resident expert
      // copied once).
      double resident = 0, copied = 0, host = 0, share = 0;
      uint32_t plan_prefetch = 0;
      for (const schema::ExpertRing* r : *p.experts()) {
        resident += r->expected_resident_bytes();
        copied += r->expected_copied_bytes();
        host += r->expected_host_bytes();
        share = r->cpu_share();
        plan_prefetch = r->prefetch();
      }
      uint64_t off_gpu = 0, gpu_bytes = 0, expert_bytes = 0;
      // The routed experts' row format: the host's products of quantized rows run at that format's measured rate.
      quant::Format expert_format = quant::Format::kNone;
      for (const schema::Block* b : *p.blocks()) {
        if (b->weights() == nullptr) continue;
        for (const schema::Weight* w : *b->weights()) {
          if (w->routed()) off_gpu += w->size_bytes();
          if (w->routed()) expert_format = static_cast<quant::Format>(w->format());
          const std::string name = p.tensors()->Get(w->tensor())->name()->str();
          if (name.find(".experts.") != std::string::npos) expert_bytes += w->size_bytes();
          else gpu_bytes += w->size_bytes();
        }
      }
      const double cpu_rate = floors.cpu_gemv_gbps > 0 ? floors.cpu_gemv_gbps : 1e-9;
      const double gpu_read_s = (static_cast<double>(gpu_bytes) + resident) / (floors.device_mem_gbps * 1e9);
      // The copies and the host's products share host memory: the floor of the paths is the least time for both from
      // the three rates measured in this run (copies alone, the host alone, both at once; MixFloorMicros). Beside it,
      // the floor if each ran at its rate alone with no interference at all (a bound no run can beat).
      const double path_s = MixFloorMicros(copied, host, profile, expert_format) / 1e6;
      const double path_solo_s =
          std::max(copied / (floors.h2d_gbps * 1e9),
                   host / (std::max(floors.cpu_gemv_alone_gbps, cpu_rate) * 1e9 *
                           (expert_format == quant::Format::kNone ? 1.0 : HostGemvGbps(profile, expert_format) / cpu_rate)));
      const double decode_floor = path_s + gpu_read_s;
      const double prefill_floor = static_cast<double>(off_gpu) / (floors.h2d_gbps * 1e9);
      // The experts one prefill moves (random weights need not route to every expert).
      const Stats before_prefill = exec->stats();
      BIGPLAN_RETURN_IF_ERROR(exec->Forward(prompt, 1, fresh).status());
      const Stats after_prefill = exec->stats();
      const double prefill_copied = static_cast<double>(after_prefill.expert_copied_bytes - before_prefill.expert_copied_bytes);
      // KV-cached decode steps after a 16-token context; the per-token counts exclude the context and the warm-up.
      const std::vector<int64_t> ctx(prompt.begin(), prompt.begin() + std::min<int>(args.prefill, 16));
      ForwardOptions reset = fresh;
      BIGPLAN_RETURN_IF_ERROR(exec->Forward(ctx, 1, reset).status());
      int64_t next = 0;
      ForwardOptions cont;
      cont.last_position_only = true;
      auto step = [&]() -> Status {
        std::vector<int64_t> tok{next};
        next = (next + 1) % vocab;
        return exec->Forward(tok, 1, cont).status();
      };
      BIGPLAN_RETURN_IF_ERROR(step());  // warm-up
      const Stats before = exec->stats();
      BIGPLAN_ASSIGN_OR_RETURN(Timing dec, TimeIt(args.repeat * 4 - 1, step));
      const Stats after = exec->stats();
      const double steps = static_cast<double>(args.repeat * 4);
      // The floor of what the decode steps moved: the chosen experts' bytes that crossed PCIe (prefetched ones the
      // router did not choose left out) and the host's, each at its measured rate.
      const double moved_copy = (static_cast<double>(after.expert_copied_bytes - before.expert_copied_bytes) -
                                 static_cast<double>(after.expert_prefetch_wasted_bytes - before.expert_prefetch_wasted_bytes)) / steps;
      const double moved_host = static_cast<double>(after.expert_host_bytes - before.expert_host_bytes) / steps;
      const double moved_floor = MixFloorMicros(moved_copy, moved_host, profile, expert_format) / 1e6 + gpu_read_s;
      const double prefetched = static_cast<double>(after.expert_prefetched - before.expert_prefetched) / steps;
      const double hits = static_cast<double>(after.expert_prefetch_hits - before.expert_prefetch_hits) / steps;
      j["moe_moved"] = {{"copied_bytes_per_token", moved_copy},
                        {"host_bytes_per_token", moved_host},
                        {"floor_s", moved_floor},
                        {"ratio_decode_to_floor", dec.median / moved_floor},
                        {"prefetch_option", cfg.prefetch},
                        {"split_option", cfg.split},
                        {"split_per_token", static_cast<double>(after.expert_split - before.expert_split) / steps},
                        {"plan_prefetch", plan_prefetch},
                        {"prefetched_per_token", prefetched},
                        {"prefetch_hits_per_token", hits},
                        {"prefetch_wasted_bytes_per_token",
                         static_cast<double>(after.expert_prefetch_wasted_bytes - before.expert_prefetch_wasted_bytes) / steps},
                        {"copy_busy_ms_per_token", (after.expert_copy_busy_ms - before.expert_copy_busy_ms) / steps},
                        {"copy_idle_ms_per_token", (after.expert_copy_idle_ms - before.expert_copy_idle_ms) / steps},
                        {"gpu_wait_for_host_ms_per_token",
                         (after.expert_host_wait_ms - before.expert_host_wait_ms) / steps},
                        {"host_busy_ms_per_token", (after.expert_host_busy_ms - before.expert_host_busy_ms) / steps},
                        {"host_layer_copies_ms_per_token",
                         (after.expert_host_copy_ms - before.expert_host_copy_ms) / steps},
                        {"adapt_share", args.adapt_share},
                        {"share_after", after.expert_share}};
      j["moe"] = {{"cpu_share", share},
                  {"expected_resident_bytes", resident},
                  {"expected_copied_bytes", copied},
                  {"expected_host_bytes", host},
                  {"non_resident_expert_bytes", off_gpu},
                  {"expert_bytes", expert_bytes},
                  {"decode_step", TimingJson(dec)},
                  {"decode_step_s", dec.median},
                  {"decode_floor_s", decode_floor},
                  {"decode_path_floor_s", path_s},
                  {"decode_floor_solo_h2d_s", path_solo_s + gpu_read_s},

                  {"decode_gpu_read_s", gpu_read_s},
                  {"ratio_decode_to_floor", dec.median / decode_floor},
                  {"prefill_floor_s", prefill_floor},
                  {"ratio_prefill_to_floor", prefill_floor > 0 ? fp.best / prefill_floor : 0.0},
                  {"prefill_copied_bytes", prefill_copied},
                  {"prefill_copied_floor_s", prefill_copied / (floors.h2d_gbps * 1e9)},
                  {"ratio_prefill_to_copied_floor", prefill_copied > 0 ? fp.best / (prefill_copied / (floors.h2d_gbps * 1e9)) : 0.0},
                  {"prediction_error_decode", plan.decode.total_us / 1e6 / dec.median - 1.0},
                  {"predicted_floor_s", plan.expert_floor_us / 1e6},
                  {"experts_per_token", {{"resident", (after.expert_resident - before.expert_resident) / steps},
                                         {"copied", (after.expert_copied - before.expert_copied) / steps},
                                         {"disk", (after.expert_disk - before.expert_disk) / steps},
                                         {"host", (after.expert_host - before.expert_host) / steps}}},
                  {"copied_bytes_per_token", (after.expert_copied_bytes - before.expert_copied_bytes) / steps},
                  {"host_bytes_per_token", (after.expert_host_bytes - before.expert_host_bytes) / steps},
                  {"router_wait_ms_per_token", (after.expert_router_wait_ms - before.expert_router_wait_ms) / steps}};
      std::fprintf(stderr,
                   "   MoE: decode step %.2f ms (floor %.2f ms: paths %.2f + GPU reads %.2f; %.2fx; with each path at its "
                   "rate alone %.2f ms, %.2fx), predicted %.2f ms;"
                   " prefill %.1f ms (streaming floor %.1f ms, %.2fx; it copied %.2f GB: %.1f ms at H2D, %.2fx); per "
                   "token %.1f resident, %.1f copied, %.1f host experts (share %.2f)\n",
                   dec.median * 1e3, decode_floor * 1e3, path_s * 1e3, gpu_read_s * 1e3, dec.median / decode_floor,
                   (path_solo_s + gpu_read_s) * 1e3, dec.median / (path_solo_s + gpu_read_s),
                   plan.decode.total_us / 1e3, fp.best * 1e3, prefill_floor * 1e3,
                   prefill_floor > 0 ? fp.best / prefill_floor : 0.0, prefill_copied / 1e9,
                   prefill_copied / (floors.h2d_gbps * 1e6),
                   prefill_copied > 0 ? fp.best / (prefill_copied / (floors.h2d_gbps * 1e9)) : 0.0,
                   j["moe"]["experts_per_token"]["resident"].get<double>(),
                   j["moe"]["experts_per_token"]["copied"].get<double>(),
                   j["moe"]["experts_per_token"]["host"].get<double>(), share);
      std::fprintf(stderr,
                   "   MoE moved: %.1f MB copied + %.1f MB host per token, floor %.2f ms (%.2fx); prefetch %.2f experts "
                   "per token, %.2f chosen (%.0f%%); %.2f experts split per token; copy stream busy %.2f ms, idle %.2f "
                   "ms per token%s; host jobs %.2f ms (their layers' copies %.2f ms), the GPU waiting for them %.2f ms "
                   "per token; share %.3f%s\n",
                   moved_copy / 1e6, moved_host / 1e6, moved_floor * 1e3, dec.median / moved_floor, prefetched, hits,
                   prefetched > 0 ? 100.0 * hits / prefetched : 0.0,
                   static_cast<double>(after.expert_split - before.expert_split) / steps,
                   (after.expert_copy_busy_ms - before.expert_copy_busy_ms) / steps,
                   (after.expert_copy_idle_ms - before.expert_copy_idle_ms) / steps,
                   opts.record_trace ? "" : " (timeline: --trace-dir)",
                   (after.expert_host_busy_ms - before.expert_host_busy_ms) / steps,
                   (after.expert_host_copy_ms - before.expert_host_copy_ms) / steps,
                   (after.expert_host_wait_ms - before.expert_host_wait_ms) / steps, after.expert_share,
                   args.adapt_share ? " (adapting)" : "");
      if (!args.kineto_dir.empty()) {
        BIGPLAN_RETURN_IF_ERROR(Profiled(args.kineto_dir + "/" + cfg.name + ".kineto.json", [&]() -> Status {
          for (int s = 0; s < 3; ++s) BIGPLAN_RETURN_IF_ERROR(step());
          return Status::Ok();
        }));
      }
    } else if (cpu_bytes + disk_bytes == 0) {
      // All resident: the planner's decode prediction is a KV-cached step (CUDA-graph replayed where eligible),
      // after half a prompt (the plan's run shape holds `prefill` positions).
      const std::vector<int64_t> half(prompt.begin(), prompt.begin() + args.prefill / 2);
      BIGPLAN_ASSIGN_OR_RETURN(Timing dec, TimeDecodeSteps(exec.get(), half, vocab, args.repeat, &j));
      j["decode_step"] = TimingJson(dec);
      j["decode_step_s"] = dec.median;
      j["ratio_decode_step_to_bf16_floor"] = bf16_floor_s > 0 ? dec.median / bf16_floor_s : 0.0;
      j["prediction_error_decode_step"] = plan.decode.total_us / 1e6 / dec.median - 1.0;
      std::fprintf(stderr, "   KV-cached decode step %.4f s%s, predicted %.4f s; %s of %s steps "
                   "replayed a CUDA graph%s%s\n", dec.median,
                   bf16_floor_s > 0 ? times(dec.median, bf16_floor_s).append(" the bf16 floor").c_str() : "",
                   plan.decode.total_us / 1e6, j["decode_graph_steps"].dump().c_str(), j["decode_steps"].dump().c_str(),
                   j["graph_capture_error"].get<std::string>().empty() ? "" : ": ",
                   j["graph_capture_error"].get<std::string>().c_str());
    }
  } else {
    // The bytes a decode token reads: every weight, except that a mixture-of-experts layer reads num_experts_per_tok
    // of its num_experts experts (their expected share under uniform routing).
    uint64_t weight_bytes = 0, all_weight_bytes = 0;
    std::map<int32_t, uint64_t> device_bytes;  // each GPU's share of what a token reads
    const double picked = p.config()->num_experts() > 0
                              ? static_cast<double>(p.config()->num_experts_per_tok()) / p.config()->num_experts()
                              : 1.0;
    for (uint32_t i = 0; i < p.blocks()->size(); ++i) {
      const schema::Block* b = p.blocks()->Get(i);
      uint64_t read = b->weight_bytes();
      if (picked < 1.0 && b->weights() != nullptr) {
        for (const schema::Weight* w : *b->weights()) {
          if (p.tensors()->Get(w->tensor())->name()->str().find(".experts.") != std::string::npos) {
            read -= static_cast<uint64_t>((1.0 - picked) * static_cast<double>(w->size_bytes()));
          }
        }
      }
      weight_bytes += read;
      all_weight_bytes += b->weight_bytes();
      device_bytes[b->device()] += read;
    }
    uint64_t larger_share = 0;
    for (const auto& [device, bytes] : device_bytes) larger_share = std::max(larger_share, bytes);
    BIGPLAN_ASSIGN_OR_RETURN(Timing fp, TimeIt(args.repeat, [&]() -> Status {
      return exec->Forward(prompt, 1, fresh).status();
    }));
    j["prefill_issue_ms"] = exec->stats().last_issue_ms;
    std::fprintf(stderr, "   prefill: host issued it in %.2f ms\n", exec->stats().last_issue_ms);
    // Decode: a prompt of `prefill` tokens is cached, then single-token steps continue it.
    BIGPLAN_ASSIGN_OR_RETURN(Timing dec, TimeDecodeSteps(exec.get(), prompt, vocab, args.repeat, &j));
    // FLOPs of a prefill: 2 x params x tokens for the matmuls (a routed expert's params count for the tokens that
    // choose it: num_experts_per_tok / num_experts of them under uniform routing), + attention 4 x layers x hidden x
    // T^2 / 2 (causal). The floor: those at the matmul rate, or every weight read once from HBM, whichever is slower.
    const auto* c = p.config();
    double params = 0;
    for (uint32_t i = 0; i < p.tensors()->size(); ++i) {
      double n = 1;
      for (auto d : *p.tensors()->Get(i)->shape()) n *= d;
      if (p.tensors()->Get(i)->name()->str().find(".experts.") != std::string::npos) n *= picked;
      params += n;
    }
    const double T = args.prefill;
    const double flops = 2.0 * params * T + 2.0 * c->num_layers() * c->hidden_size() * T * T;
    const double decode_floor = weight_bytes / (floors.device_mem_gbps * 1e9);
    const double prefill_compute_floor = flops / (floors.matmul_tflops * 1e12);
    const double read_once_floor = static_cast<double>(all_weight_bytes) / (floors.device_mem_gbps * 1e9);
    const double prefill_floor = std::max(prefill_compute_floor, read_once_floor);
    j["weight_bytes"] = weight_bytes;
    j["prefill"] = TimingJson(fp);
    j["decode_step"] = TimingJson(dec);
    j["prefill_s"] = fp.best;
    j["decode_step_s"] = dec.median;
    j["decode_floor_s"] = decode_floor;
    j["prefill_flops"] = flops;
    j["prefill_floor_s"] = prefill_floor;
    j["ratio_decode_to_floor"] = dec.median / decode_floor;
    j["ratio_prefill_to_floor"] = fp.best / prefill_floor;
    j["fused_kernels"] = args.fused_kernels;
    j["grouped_prompt_experts"] = args.grouped_prompt_experts;
    j["tensor_parallel"] = p.tensor_parallel();
    j["prediction_error_decode_step"] = plan.decode.total_us / 1e6 / dec.median - 1.0;
    if (device_bytes.size() > 1) {
      // Several GPUs: the HBM floor of the larger share (what the GPU holding the most weight bytes reads), which
      // a step reaches only when every GPU reads its share at once.
      const double share_floor = larger_share / (floors.device_mem_gbps * 1e9);
      j["larger_share_bytes"] = larger_share;
      j["decode_floor_larger_share_s"] = share_floor;
      j["ratio_decode_to_larger_share_floor"] = dec.median / share_floor;
      std::fprintf(stderr, "   %s: decode step %.3f ms = %.2fx the HBM floor of the larger share (%.2f GB, %.3f ms), "
                   "%.2fx the whole model's floor; predicted %.3f ms (%+.1f%%)\n",
                   p.tensor_parallel() > 0 ? "tensor parallel" : "split", dec.median * 1e3, dec.median / share_floor,
                   larger_share / 1e9, share_floor * 1e3, dec.median / decode_floor, plan.decode.total_us / 1e3,
                   100.0 * (plan.decode.total_us / 1e6 / dec.median - 1.0));
    }
    // Larger decode batches (the same weights read once per step for every row).
    for (double b : args.decode_batches) {
      if (b <= 1) continue;
      nlohmann::json jb;
      BIGPLAN_ASSIGN_OR_RETURN(Timing db, TimeDecodeSteps(exec.get(), prompt, vocab, args.repeat, &jb,
                                                          static_cast<int64_t>(b)));
      jb["decode_step"] = TimingJson(db);
      jb["decode_step_s"] = db.median;
      jb["ratio_decode_to_floor"] = db.median / decode_floor;
      j["decode_batch"][std::to_string(static_cast<int64_t>(b))] = jb;
      std::fprintf(stderr, "   batch %d: decode step %.3f ms (%.2fx the batch-1 floor; %s of %s steps from a graph)\n",
                   static_cast<int>(b), db.median * 1e3, db.median / decode_floor, jb["decode_graph_steps"].dump().c_str(),
                   jb["decode_steps"].dump().c_str());
    }
    // A batched prefill (fresh sequences, last position's logits): unpipelined, the executor's choice, and the
    // listed micro-batch sizes. Throughput in prompt tokens per second; floor: the batch's FLOPs / matmul rate.
    if (args.prefill_batch > 1) {
      const int64_t nb = args.prefill_batch;
      std::vector<int64_t> batch_ids;
      for (int64_t r = 0; r < nb; ++r) {
        auto row = RandomTokens(args.prefill, vocab, 100 + static_cast<uint32_t>(r));
        batch_ids.insert(batch_ids.end(), row.begin(), row.end());
      }
      std::vector<double> settings{-1, 0};
      for (double r : args.micro_batch_rows) {
        if (std::find(settings.begin(), settings.end(), r) == settings.end()) settings.push_back(r);
      }
      nlohmann::json runs = nlohmann::json::array();
      std::vector<std::pair<double, double>> runs_asked;  // (micro_batch_rows, micro_batch_group)
      for (double r : settings) {
        if (r < 0) runs_asked.push_back({r, 0});
        else for (double g : args.micro_batch_groups) runs_asked.push_back({r, g});
      }
      for (const auto& [r, group] : runs_asked) {
        ForwardOptions o = fresh;
        o.micro_batch_rows = static_cast<int>(r);
        o.micro_batch_group = static_cast<int>(group);
        uint32_t micro_batches = 0;
        double issue_ms = 0;
        BIGPLAN_ASSIGN_OR_RETURN(Timing tb, TimeIt(args.repeat, [&]() -> Status {
          BIGPLAN_RETURN_IF_ERROR(exec->Forward(batch_ids, static_cast<int>(nb), o).status());
          micro_batches = exec->stats().last_micro_batches;
          issue_ms = exec->stats().last_issue_ms;
          return Status::Ok();
        }));
        const double floor_s = std::max(nb * prefill_compute_floor, read_once_floor);
        // The planner's prediction of this pass (a pipelined one: its graph-replayed steady state).
        BIGPLAN_ASSIGN_OR_RETURN(BatchedPrefillPrediction pred,
                                 PredictBatchedPrefill(plan, static_cast<uint32_t>(nb),
                                                       static_cast<uint32_t>(args.prefill), static_cast<int>(r),
                                                       static_cast<int>(group)));
        const double predicted_s = pred.total_us / 1e6;
        runs.push_back({{"micro_batch_rows", r}, {"micro_batch_group", group}, {"micro_batches", micro_batches}, {"prefill", TimingJson(tb)},
                        {"prefill_s", tb.best}, {"prefill_median_s", tb.median},
                        {"tokens_per_s", nb * args.prefill / tb.best},
                        {"tokens_per_s_median", nb * args.prefill / tb.median}, {"floor_s", floor_s},
                        {"ratio_to_floor", tb.best / floor_s}, {"last_issue_ms", issue_ms},
                        {"predicted_s", predicted_s}, {"predicted_micro_batches", pred.micro_batches},
                        {"prediction_error_median", predicted_s / tb.median - 1.0}});
        std::fprintf(stderr, "   batch-%d prefill, micro_batch_rows %g, group %g (%u micro-batches): best %.2f ms, median %.2f "
                     "ms, %.0f tokens/s (median; %.2fx the matmul floor; host issued it in %.1f ms); predicted %.2f ms "
                     "(%+.1f%%)\n", static_cast<int>(nb), r, group, micro_batches, tb.best * 1e3, tb.median * 1e3,
                     nb * args.prefill / tb.median, tb.median / floor_s, issue_ms, predicted_s * 1e3,
                     100.0 * (predicted_s / tb.median - 1.0));
      }
      j["prefill_batch"] = {{"batch", nb}, {"runs", runs}};
    }
    j["graph_prefills"] = exec->stats().graph_prefills;
    j["prefill_median_s"] = fp.median;
    std::fprintf(stderr, "   decode step %.3f ms (floor %.3f ms, %.2fx; host issued it in %.3f ms), prefill %.3f ms "
                 "(median %.3f; floor %.3f ms, %.2fx; %llu prefills replayed a graph)\n", dec.median * 1e3,
                 decode_floor * 1e3, dec.median / decode_floor, j["decode_issue_ms_median"].get<double>(),
                 fp.best * 1e3, fp.median * 1e3, prefill_floor * 1e3, fp.best / prefill_floor,
                 static_cast<unsigned long long>(exec->stats().graph_prefills));
    if (!args.kineto_dir.empty()) {
      BIGPLAN_RETURN_IF_ERROR(Profiled(args.kineto_dir + "/" + cfg.name + ".prefill.kineto.json", [&]() -> Status {
        return exec->Forward(prompt, 1, fresh).status();
      }));
      // Three KV-cached decode steps (replayed graphs where the plan has them) after the prompt.
      BIGPLAN_RETURN_IF_ERROR(exec->Forward(prompt, 1, fresh).status());
      ForwardOptions cont;
      cont.last_position_only = true;
      for (int s = 0; s < 3; ++s) BIGPLAN_RETURN_IF_ERROR(exec->Forward({1}, 1, cont).status());
      BIGPLAN_RETURN_IF_ERROR(Profiled(args.kineto_dir + "/" + cfg.name + ".decode.kineto.json", [&]() -> Status {
        for (int s = 0; s < 3; ++s) BIGPLAN_RETURN_IF_ERROR(exec->Forward({1}, 1, cont).status());
        return Status::Ok();
      }));
    }
  }
  if (!args.trace_dir.empty()) {
    BIGPLAN_RETURN_IF_ERROR(exec->Forward(one, 1, fresh).status());
    BIGPLAN_RETURN_IF_ERROR(exec->WriteTrace(args.trace_dir + "/" + cfg.name + ".trace.json"));
  }
  for (const DeviceAccount& a : plan.usage) {
    if (a.device.rfind("cuda:", 0) != 0) continue;
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(std::stoi(a.device.substr(5)));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const uint64_t allocated = static_cast<uint64_t>(stats.allocated_bytes[all].peak);
    const uint64_t reserved = static_cast<uint64_t>(stats.reserved_bytes[all].peak);
    j["libtorch_peak"][a.device] = {{"allocated_bytes", allocated}, {"reserved_bytes", reserved},
                                    {"plan_activations_bytes", a.activations},
                                    {"plan_reserve_bytes", a.workspace_reserve}, {"plan_total_bytes", a.total},
                                    {"budget_bytes", a.budget}};
    std::fprintf(stderr, "   %s: LibTorch's peak %s allocated, %s reserved; the plan's activations %s + reserve %s "
                 "(plan %s of %s)\n", a.device.c_str(), FormatBytes(allocated).c_str(), FormatBytes(reserved).c_str(),
                 FormatBytes(a.activations).c_str(), FormatBytes(a.workspace_reserve).c_str(),
                 FormatBytes(a.total).c_str(), FormatBytes(a.budget).c_str());
  }
  *out = j;
  return Status::Ok();
}

Status Main(int argc, char** argv) {
  BIGPLAN_ASSIGN_OR_RETURN(Args args, ParseArgs(argc, argv));
  std::vector<std::string> shards;
  for (const auto& e : std::filesystem::directory_iterator(args.model))
    if (e.path().extension() == ".safetensors") shards.push_back(e.path().string());
  std::sort(shards.begin(), shards.end());
  if (args.drop_caches) DropPageCache();
  BIGPLAN_ASSIGN_OR_RETURN(Floors floors, MeasureFloors(shards, uint64_t{8} << 30));
  std::fprintf(stderr, "floors: %s: H2D %.1f GB/s, D2H %.1f GB/s, device memory %.0f GB/s, bf16 matmul %.0f TFLOP/s, "
               "disk (O_DIRECT) %.2f GB/s; host bf16 gemv and H2D at once %.1f and %.1f GB/s (gemv %.1f GB/s alone, "
               "best of five with copies queued %.1f GB/s, %d threads)\n",
               floors.device_name.c_str(), floors.h2d_gbps, floors.d2h_gbps, floors.device_mem_gbps,
               floors.matmul_tflops, floors.disk_gbps, floors.cpu_gemv_gbps, floors.h2d_busy_gbps,
               floors.cpu_gemv_alone_gbps, floors.cpu_gemv_queued_gbps, floors.cpu_threads);
  std::fprintf(stderr, "floors: host products of quantized rows (groups of 128) with copies running: fp8 %.1f, int8 %.1f, "
               "int4 %.1f GB/s\n", floors.cpu_gemv_fp8_gbps, floors.cpu_gemv_int8_gbps, floors.cpu_gemv_int4_gbps);
  if (!floors.disk_error.empty()) {
    std::fprintf(stderr, "floors: disk not measured (%s); the profile assumes %.1f GB/s\n", floors.disk_error.c_str(),
                 kUnmeasuredDiskGbps);
  }
  std::string windows;
  for (const auto& [h2d, host] : floors.concurrent_windows) {
    char w[48];
    std::snprintf(w, sizeof w, " %.1f/%.1f", h2d, host);
    windows += w;
  }
  std::fprintf(stderr, "floors: the pair at once kept of the windows (H2D/host GB/s):%s\n", windows.c_str());
  BIGPLAN_ASSIGN_OR_RETURN(DeviceProfile profile, ParseDeviceProfile(FloorsToProfileJson(floors), "measured floors"));
  if (!args.trace_dir.empty()) std::filesystem::create_directories(args.trace_dir);
  if (!args.kineto_dir.empty()) std::filesystem::create_directories(args.kineto_dir);

  std::vector<Config> configs;
  char buf[256];
  for (double g : args.gpu_budgets) {
    std::snprintf(buf, sizeof buf, "cuda:0=%gGiB,cpu=%gGiB", g, args.cpu_budget_gib);
    for (quant::Format w : args.weights) {
      for (const std::string& share : args.cpu_shares) {
        for (int pf : args.expert_prefetch) {
          for (int split : args.expert_split) {
            std::string suffix = w == quant::Format::kNone ? "" : std::string("_") + quant::FormatName(w);
            if (share != "off") suffix += "_host_" + share;
            if (pf >= 0) suffix += "_prefetch" + std::to_string(pf);
            if (split >= 0) suffix += "_split" + std::to_string(split);
            Config c{"cpu_offload_" + std::to_string(static_cast<int>(g * 10)) + suffix, "cpu", g, buf, w, share};
            c.prefetch = pf;
            c.split = split;
            configs.push_back(c);
          }
        }
      }
    }
  }
  for (auto [g, c] : args.disk_configs) {
    std::snprintf(buf, sizeof buf, "cuda:0=%gGiB,cpu=%gGiB,disk=1000GiB", g, c);
    configs.push_back({"disk_offload_" + std::to_string(static_cast<int>(g * 10)) + "_" +
                           std::to_string(static_cast<int>(c * 10)), "disk", g, buf});
  }
  if (args.resident_budget_gib > 0) {
    std::snprintf(buf, sizeof buf, "cuda:0=%gGiB,cpu=%gGiB", args.resident_budget_gib, args.cpu_budget_gib);
    configs.push_back({"resident", "resident", args.resident_budget_gib, buf});
  }
  for (size_t k = 0; k < args.offload_splits.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s,cpu=%gGiB", args.offload_splits[k].c_str(), args.cpu_budget_gib);
    // (A host share over several GPUs: a mixture-of-experts plan's, whose host computes each GPU's experts.)
    for (const std::string& share : args.cpu_shares) {
      Config c{"cpu_offload_split" + std::to_string(k + 1) + (share == "off" ? "" : "_host_" + share), "cpu", 0, buf};
      c.cpu_share = share;
      configs.push_back(c);
    }
  }
  for (size_t k = 0; k < args.resident_splits.size(); ++k) {
    std::snprintf(buf, sizeof buf, "%s,cpu=%gGiB", args.resident_splits[k].c_str(), args.cpu_budget_gib);
    configs.push_back({"resident_split" + std::to_string(k + 1), "resident", 0, buf});
    for (double stride : args.split_strides) {
      Config c{"resident_split" + std::to_string(k + 1) + "_stride" + std::to_string(static_cast<int>(stride)),
               "resident", 0, buf};
      c.stride = static_cast<int>(stride);
      configs.push_back(c);
    }
  }
  nlohmann::json results = {{"model", std::filesystem::path(args.model).filename().string()},
                            {"device", floors.device_name},
                            {"prefill_tokens", args.prefill},
                            {"floors", {{"h2d_gbps", floors.h2d_gbps}, {"d2h_gbps", floors.d2h_gbps},
                                        {"device_mem_gbps", floors.device_mem_gbps},
                                        {"matmul_tflops", floors.matmul_tflops}, {"disk_gbps", floors.disk_gbps},
                                        {"cpu_gemv_gbps", floors.cpu_gemv_gbps},
                                        {"cpu_gemv_alone_gbps", floors.cpu_gemv_alone_gbps},
                                        {"h2d_busy_gbps", floors.h2d_busy_gbps},
                                        {"cpu_gemv_concurrent_gbps", floors.cpu_gemv_concurrent_gbps},
                                        {"concurrent_windows", floors.concurrent_windows},
                                        {"cpu_gemv_queued_gbps", floors.cpu_gemv_queued_gbps},
                                        {"cpu_gemv_fp8_gbps", floors.cpu_gemv_fp8_gbps},
                                        {"cpu_gemv_int8_gbps", floors.cpu_gemv_int8_gbps},
                                        {"cpu_gemv_int4_gbps", floors.cpu_gemv_int4_gbps},
                                        {"cpu_threads", floors.cpu_threads}}},
                            {"configs", nlohmann::json::array()}};
  for (const auto& cfg : configs) {
    nlohmann::json j;
    Status s = RunConfig(args, floors, profile, cfg, &j);
    if (!s.ok()) {
      std::fprintf(stderr, "   %s failed: %s\n", cfg.name.c_str(), s.error().ToString().c_str());
      j = {{"name", cfg.name}, {"tier", cfg.tier}, {"gpu_budget_gib", cfg.gpu_gib}, {"error", s.error().ToString()}};
    }
    results["configs"].push_back(j);
    std::ofstream(args.out) << results.dump(1) << "\n";
  }
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("e2e_bench", [&] { return bigplan::Main(argc, argv); });
}
