// Planner benchmarks: planning a Llama-3.1-405B-shaped model (126 decoder layers) end to end, and loading +
// verifying a plan file. Targets: planning < 50 ms, load + verify < 1 ms.
//
//   bazel run -c opt //benchmarks:planner_bench

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "planner/budget.h"
#include "planner/hf_import.h"
#include "planner/memory_plan.h"
#include "planner/planner.h"
#include "schema/plan_io.h"

namespace bigplan {
namespace {

std::string Runfile(const std::string& rel) {
  for (const char* env : {"RUNFILES_DIR", "TEST_SRCDIR"})
    if (const char* root = std::getenv(env)) {
      std::string p = std::string(root) + "/bigplan/" + rel;
      if (std::filesystem::exists(p)) return p;
    }
  return rel;
}

const ModelDescription& Llama405B() {
  static const ModelDescription* model = [] {
    auto m = ImportExample(Runfile("planner/examples/llama-3.1-405b"));
    if (!m.ok()) {
      std::fprintf(stderr, "cannot load the 405B example: %s\n", m.error().ToString().c_str());
      std::abort();
    }
    return new ModelDescription(std::move(m).value());
  }();
  return *model;
}

PlanRequest Request(const std::string& budget) {
  PlanRequest r;
  r.description = Llama405B();
  r.budget = ParseMaxMemory(budget).value();
  r.run = RunShape{1, 4096};
  r.exec_dtype = DType::kBF16;
  return r;
}

void Plan(benchmark::State& state, const std::string& budget) {
  PlanRequest r = Request(budget);
  size_t bytes = 0;
  for (auto _ : state) {
    auto result = MakePlan(r);
    if (!result.ok()) {
      state.SkipWithError(result.error().ToString().c_str());
      return;
    }
    bytes = result->bytes.size();
    benchmark::DoNotOptimize(result->bytes.data());
  }
  state.counters["plan_bytes"] = static_cast<double>(bytes);
}

// One H100: a few layers resident, the rest streamed from pinned memory and disk.
void BM_Plan405B_OneGpu(benchmark::State& state) { Plan(state, "cuda:0=70GiB,cpu=400GiB,disk=1TiB"); }
BENCHMARK(BM_Plan405B_OneGpu)->Unit(benchmark::kMillisecond);

// Eight H200s: everything resident.
void BM_Plan405B_EightGpus(benchmark::State& state) {
  std::string budget;
  for (int g = 0; g < 8; ++g) budget += "cuda:" + std::to_string(g) + "=130GiB,";
  Plan(state, budget + "cpu=64GiB");
}
BENCHMARK(BM_Plan405B_EightGpus)->Unit(benchmark::kMillisecond);

void BM_LoadAndVerifyPlan(benchmark::State& state) {
  auto result = MakePlan(Request("cuda:0=70GiB,cpu=400GiB,disk=1TiB"));
  if (!result.ok()) {
    state.SkipWithError(result.error().ToString().c_str());
    return;
  }
  const std::string path = (std::filesystem::temp_directory_path() / "planner_bench_405b.bplan").string();
  if (!WriteFileBytes(path, result->bytes.data(), result->bytes.size()).ok()) {
    state.SkipWithError("cannot write the plan");
    return;
  }
  for (auto _ : state) {
    auto plan = PlanFile::Load(path);
    if (!plan.ok()) {
      state.SkipWithError(plan.error().ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(plan->plan().blocks());
  }
  state.counters["plan_bytes"] = static_cast<double>(result->bytes.size());
  std::filesystem::remove(path);
}
BENCHMARK(BM_LoadAndVerifyPlan)->Unit(benchmark::kMicrosecond);

void BM_VerifyPlanInMemory(benchmark::State& state) {
  auto result = MakePlan(Request("cuda:0=70GiB,cpu=400GiB,disk=1TiB"));
  if (!result.ok()) {
    state.SkipWithError(result.error().ToString().c_str());
    return;
  }
  for (auto _ : state) {
    auto plan = VerifyPlan(result->bytes.data(), result->bytes.size(), "bench");
    benchmark::DoNotOptimize(plan.ok());
  }
}
BENCHMARK(BM_VerifyPlanInMemory)->Unit(benchmark::kMicrosecond);

// The arena planner alone on the 405B one-GPU schedule's buffers.
void BM_GreedyBySize405B(benchmark::State& state) {
  auto result = MakePlan(Request("cuda:0=70GiB,cpu=400GiB,disk=1TiB"));
  if (!result.ok()) {
    state.SkipWithError(result.error().ToString().c_str());
    return;
  }
  std::vector<BufferRequest> buffers;
  for (const ScheduledBuffer& b : result->schedule.buffers) buffers.push_back(b.request);
  for (auto _ : state) {
    auto plan = PlanMemory(buffers, "greedy_by_size");
    benchmark::DoNotOptimize(plan.ok());
  }
  state.counters["buffers"] = static_cast<double>(buffers.size());
}
BENCHMARK(BM_GreedyBySize405B)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace bigplan
