// Ranks (ExecutorOptions::world_size): a plan split over cuda:0 and cuda:1 (the embedding and the first half of the
// layers on cuda:0 by an explicit map), run as two ranks, gives the one-process plan's logits and greedy tokens, for
// a prefill of two rows, a KV-cached decode step after it and a generation. The ranks are threads of this test
// process (each its own executor, meeting at a TCPStore on 127.0.0.1), which exercises the same code as one
// process per host:
//   CPU mode (runs everywhere): tensors travel through the rendezvous store; float32; results equal bit for bit.
//   Two CUDA devices (skips otherwise): tensors over NCCL; float32, max relative error 1e-5 (same kernels on other
//   devices; the one-process plan computes the same blocks on the same GPUs), with eager steps, and with decode
//   steps replayed from CUDA graphs on both sides.
// Also the refusals: a plan with a block that is not resident on a GPU, and a bad rendezvous address. And a
// tensor-parallel plan as two ranks (TensorParallelRanks below).
#include <arpa/inet.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "arch/registry.h"
#include "executor/executor.h"
#include "schema/plan_io.h"
#include "tests/e2e/e2e_util.h"
#include "tools/tiny_prequant.h"

namespace bigplan::e2e {
namespace {

// Binds a loopback TCP socket to `port` (0: the kernel's choice) and closes it: the port it got, or -1.
int BindLoopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  socklen_t len = sizeof addr;
  int got = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    got = ntohs(addr.sin_port);
  }
  ::close(fd);
  return got;
}

// A TCP port that was free a moment ago, below the kernel's ephemeral range where it can: a port the kernel hands
// out to outgoing connections (NCCL's and the stores' sockets of earlier cases, opened all the time) could be taken
// between this check and rank 0's listen (EADDRINUSE), and one below that range is never handed out so.
int FreePort() {
  int lo = 32768;  // the ephemeral range's start (Linux's default where /proc does not say)
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    int a = 0, b = 0;
    if (std::fscanf(f, "%d %d", &a, &b) == 2 && a > 0) lo = a;
    std::fclose(f);
  }
  static int next = 0;  // successive calls try successive ports
  if (lo > 12000) {
    const int first = 10000, span = lo - first;
    const int start = static_cast<int>(::getpid() * 7919 % span);
    for (int i = 0; i < 2000; ++i) {
      const int port = first + (start + next++) % span;
      if (BindLoopback(port) == port) return port;
    }
  }
  const int port = BindLoopback(0);
  return port > 0 ? port : 29500;
}

// Whether this machine has two CUDA devices (the CUDA variants skip otherwise).
bool TwoGpus() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices >= 2;
}

// Whether the family's decode steps are captured in graphs at all (GPT-2 and GPT-J run eagerly on every side).
bool GraphsEligible(const std::string& model, uint32_t seq_len) {
  std::ifstream config_file(model + "/config.json");
  auto parsed = arch::ParseHfConfig(nlohmann::json::parse(config_file), model + "/config.json");
  EXPECT_TRUE(parsed.ok()) << parsed.error().ToString();
  return parsed.ok() && arch::GraphDecodeEligible(*parsed->family, parsed->config, seq_len);
}

// What one process gives for the suite's passes: a prefill of the prompts, one greedy step after it, a greedy
// generation.
struct OneProcess {
  Logits prefill, step;
  std::vector<std::vector<int64_t>> next;    // the step's tokens
  std::vector<std::vector<int64_t>> tokens;  // the generation's
  bool graph_steps = false;
};

void RunOneProcess(const std::string& plan, const std::string& model, const ExecutorOptions& options,
                   const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& greedy, OneProcess* out) {
  auto single = Executor::Load(plan, model, options);
  ASSERT_TRUE(single.ok()) << single.error().ToString();
  auto prefill = (*single)->Forward(prompts, ForwardOptions{.reset = true});
  ASSERT_TRUE(prefill.ok()) << prefill.error().ToString();
  out->next.assign(prompts.size(), {});
  for (size_t r = 0; r < prompts.size(); ++r) {
    const float* row = prefill->row(static_cast<int64_t>(r), prefill->seq - 1);
    out->next[r] = {static_cast<int64_t>(std::max_element(row, row + prefill->vocab) - row)};
  }
  auto step = (*single)->Forward(out->next);
  ASSERT_TRUE(step.ok()) << step.error().ToString();
  auto tokens = (*single)->Generate(prompts, greedy);
  ASSERT_TRUE(tokens.ok()) << tokens.error().ToString();
  out->prefill = std::move(*prefill);
  out->step = std::move(*step);
  out->tokens = std::move(tokens->tokens);
  out->graph_steps = (*single)->stats().graph_steps > 0;
}

// Runs `plan` as two ranks (rank 1 serving from a thread of this process until rank 0's executor ends) through the
// same passes as `want`: its logits within `tolerance`, its tokens equal, decode steps from graphs on both ranks
// exactly when `graphs`, StepRows refused. Prints "<label> vs <against>: ...".
void RunTwoRanks(const std::string& plan, const std::string& model, const ExecutorOptions& base,
                 const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& greedy,
                 const OneProcess& want, double tolerance, bool graphs, const std::string& label,
                 const std::string& against) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  Status served = MakeError(ErrorCode::kInternal, "rank 1 did not run");
  uint64_t served_passes = 0, served_graph_steps = 0;
  auto rank_options = [&](int rank) {
    ExecutorOptions o = base;
    o.world_size = 2;
    o.rank = rank;
    o.rendezvous = address;
    o.rendezvous_timeout_s = 60;
    return o;
  };
  std::thread rank1([&] {
    auto e = Executor::Load(plan, model, rank_options(1));
    if (!e.ok()) {
      served = e.take_error();
      return;
    }
    served = (*e)->ServeRank();
    served_passes = (*e)->stats().forward_count;
    served_graph_steps = (*e)->stats().graph_steps;
  });
  {
    auto rank0 = Executor::Load(plan, model, rank_options(0));
    if (!rank0.ok()) {
      rank1.join();
      FAIL() << rank0.error().ToString() << " / rank 1: " << served.error().ToString();
    }
    auto prefill = (*rank0)->Forward(prompts, ForwardOptions{.reset = true});
    ASSERT_TRUE(prefill.ok()) << prefill.error().ToString();
    EXPECT_LE(MaxRelError(prefill->data, want.prefill.data), tolerance);
    auto step = (*rank0)->Forward(want.next);
    ASSERT_TRUE(step.ok()) << step.error().ToString();
    EXPECT_LE(MaxRelError(step->data, want.step.data), tolerance);
    auto tokens = (*rank0)->Generate(prompts, greedy);
    ASSERT_TRUE(tokens.ok()) << tokens.error().ToString();
    EXPECT_EQ(tokens->tokens, want.tokens);
    EXPECT_EQ((*rank0)->stats().graph_capture_error, "");
    EXPECT_EQ((*rank0)->stats().graph_steps > 0, graphs);
    auto rows = (*rank0)->StepRows({RowStep{0, 0, {1, 2}}});
    EXPECT_FALSE(rows.ok());
    EXPECT_EQ(rows.error().code, ErrorCode::kUnsupported);
    std::printf("%s vs %s: prefill max rel %.2e, decode step %.2e, %zu tokens equal\n", label.c_str(),
                against.c_str(), MaxRelError(prefill->data, want.prefill.data),
                MaxRelError(step->data, want.step.data), tokens->tokens[0].size());
  }  // rank 0's executor ends: rank 1 stops serving
  rank1.join();
  EXPECT_TRUE(served.ok()) << served.error().ToString();
  EXPECT_GE(served_passes, 3u);  // prefill, step, and the generation's passes
  EXPECT_EQ(served_graph_steps > 0, graphs);
}

class Ranks : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
  }

  // The split plan of `family` (float32, batch 2) at *plan_path.
  void PlanSplit(const std::string& family, std::string* plan_path, uint32_t* seq_len) {
    const std::string model = ModelDir(family);
    *seq_len = SuiteSeqLen(model);
    const std::string dir = TempDir(family + "_ranks");
    const std::string one = dir + "/one.bplan";
    ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "fp32", 2, *seq_len, one).ok());
    auto plan = PlanFile::Load(one);
    ASSERT_TRUE(plan.ok()) << plan.error().ToString();
    int layers = 0;
    for (const schema::Block* b : *plan->plan().blocks()) layers += b->kind()->str() == "decoder_layer";
    nlohmann::json map = nlohmann::json::object();
    for (const schema::Block* b : *plan->plan().blocks()) {
      const std::string kind = b->kind()->str();
      const bool first = kind == "embedding" || kind == "position_embedding" ||
                         (kind == "decoder_layer" && b->layer() < layers / 2);
      map[b->name()->str()] = first ? 0 : 1;
    }
    const std::string map_path = dir + "/split_map.json";
    std::ofstream(map_path) << map.dump(1);
    *plan_path = dir + "/two.bplan";
    Status planned = MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "fp32", 2, *seq_len, *plan_path,
                              "--device-map " + map_path);
    ASSERT_TRUE(planned.ok()) << planned.error().ToString();
  }

  void RunRanks(bool cpu, double tolerance, bool graphs = false) {
    const std::string family = GetParam();
    const std::string model = ModelDir(family);
    std::string plan;
    uint32_t seq_len = 0;
    PlanSplit(family, &plan, &seq_len);
    if (HasFatalFailure()) return;
    auto ref = LoadReference(model);
    ASSERT_TRUE(ref.ok()) << ref.error().ToString();
    const std::vector<std::vector<int64_t>> prompts = ref->Prompts();
    if (graphs) ASSERT_NO_FATAL_FAILURE(graphs = GraphsEligible(model, seq_len));
    ExecutorOptions base;
    base.progress = false;
    base.force_cpu = cpu;
    base.cuda_graphs = graphs;  // the same path in both: eager, or decode steps replayed from graphs
    GenerateOptions greedy;
    greedy.max_new_tokens = static_cast<int>(std::min<int64_t>(6, seq_len - ref->prompt_len));
    OneProcess want;
    ASSERT_NO_FATAL_FAILURE(RunOneProcess(plan, model, base, prompts, greedy, &want));
    char label[96];
    std::snprintf(label, sizeof label, "%-14s two ranks (%s)", family.c_str(),
                  cpu ? "cpu, store" : graphs ? "cuda, nccl, graphs" : "cuda, nccl");
    RunTwoRanks(plan, model, base, prompts, greedy, want, tolerance, graphs, label, "one process");
  }
};

TEST_P(Ranks, CpuTwoRanksMatchOneProcess) { RunRanks(/*cpu=*/true, 0.0); }

TEST_P(Ranks, CudaTwoRanksMatchOneProcess) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  RunRanks(/*cpu=*/false, 1e-5);
}

// Decode steps replayed from CUDA graphs on both ranks (one per rank here) against the one-process plan's graphs.
TEST_P(Ranks, CudaTwoRanksGraphsMatchOneProcess) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  RunRanks(/*cpu=*/false, 1e-5, /*graphs=*/true);
}

INSTANTIATE_TEST_SUITE_P(Families, Ranks, ::testing::Values("llama", "qwen2", "gpt2"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// A tensor-parallel plan (candidate T) run as two ranks, rank r computing shard r of every block and the shards'
// partial sums added by the group's all-reduce: the same logits and greedy tokens as in one process. CPU mode (runs
// everywhere; one process cannot run a tensor-parallel plan on the CPU): against the one-GPU plan on the CPU, float32,
// within 1e-5 (the split products sum in another order). Two CUDA devices: against the plan's one-process run over
// both GPUs (its all-reduce over peer memory), float32, eagerly on both sides, and with decode steps replayed from
// CUDA graphs on both sides (a rank's graph holds its NCCL all-reduces).
class TensorParallelRanks : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
  }

  // `weights`: plan flags for both plans (e.g. "--weights int8 --weights-group 32"). `against_one_gpu`: on CUDA
  // devices too, the reference is the one-GPU plan run in one process (not the tensor-parallel plan's one process).
  void Run(bool cpu, double tolerance, bool graphs = false, const std::string& weights = "",
           bool against_one_gpu = false) {
    const std::string family = GetParam();
    const std::string model = ModelDir(family);
    const uint32_t seq_len = SuiteSeqLen(model);
    const std::string dir = TempDir(family + "_tp_ranks");
    const std::string one = dir + "/one.bplan", tp = dir + "/tp.bplan";
    ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "fp32", 2, seq_len, one, weights).ok());
    Status planned = MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "fp32", 2, seq_len, tp,
                              "--auto-candidates T " + weights);
    ASSERT_TRUE(planned.ok()) << planned.error().ToString();
    auto ref = LoadReference(model);
    ASSERT_TRUE(ref.ok()) << ref.error().ToString();
    const std::vector<std::vector<int64_t>> prompts = ref->Prompts();
    if (graphs) graphs = GraphsEligible(model, seq_len);
    ExecutorOptions base;
    base.progress = false;
    base.force_cpu = cpu;
    base.cuda_graphs = graphs;
    GenerateOptions greedy;
    greedy.max_new_tokens = static_cast<int>(std::min<int64_t>(6, seq_len - ref->prompt_len));
    OneProcess want;
    const bool one_gpu = cpu || against_one_gpu;
    ASSERT_NO_FATAL_FAILURE(RunOneProcess(one_gpu ? one : tp, model, base, prompts, greedy, &want));
    // (Against the one-GPU plan, the ranks take its path: quantized weights may keep a plan's steps eager.)
    if (against_one_gpu && !cpu) graphs = want.graph_steps;
    EXPECT_EQ(want.graph_steps, graphs);
    const std::string label = (family + std::string(14 - std::min<size_t>(14, family.size()), ' ')) +
                              " tensor parallel as two ranks (" +
                              (cpu ? "cpu, store" : graphs ? "cuda, nccl, graphs" : "cuda, nccl") +
                              (weights.empty() ? "" : ", " + weights) + ")";
    RunTwoRanks(tp, model, base, prompts, greedy, want, tolerance, graphs, label,
                cpu ? "the one-GPU plan on the CPU" : one_gpu ? "the one-GPU plan" : "one process");
  }
};

TEST_P(TensorParallelRanks, CpuTwoRanksMatchTheOneGpuPlan) { Run(/*cpu=*/true, 1e-5); }

// Weights quantized at load (--weights) split as plain ones: with groups of 16 columns, which a shard's columns hold
// whole, every shard's groups are the whole weight's, so the two ranks give the one-GPU plan's logits within float32
// summation order.
TEST_P(TensorParallelRanks, CpuTwoRanksQuantizedMatchTheOneGpuPlan) {
  if (GetParam() == "gpt2") GTEST_SKIP() << "--weights quantizes no Conv1D weights (GPT-2's projections)";
  for (const char* weights : {"--weights int8 --weights-group 16", "--weights int4 --weights-group 16",
                              "--weights fp8 --weights-group 16"}) {
    SCOPED_TRACE(weights);
    Run(/*cpu=*/true, 1e-5, /*graphs=*/false, weights);
  }
}

TEST_P(TensorParallelRanks, CudaTwoRanksMatchOneProcess) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  Run(/*cpu=*/false, 1e-6);
}

TEST_P(TensorParallelRanks, CudaTwoRanksGraphsMatchOneProcess) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  Run(/*cpu=*/false, 1e-6, /*graphs=*/true);
}

// The same on two GPUs: two NCCL ranks of quantized shards against the one-GPU quantized plan, eagerly and with
// decode steps replayed from CUDA graphs.
TEST_P(TensorParallelRanks, CudaTwoRanksQuantizedMatchTheOneGpuPlan) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  if (GetParam() == "gpt2") GTEST_SKIP() << "--weights quantizes no Conv1D weights (GPT-2's projections)";
  for (const char* weights : {"--weights int8 --weights-group 16", "--weights int4 --weights-group 16",
                              "--weights fp8 --weights-group 16"}) {
    for (bool graphs : {false, true}) {
      SCOPED_TRACE(std::string(weights) + (graphs ? ", graphs" : ", eager"));
      Run(/*cpu=*/false, 1e-5, graphs, weights, /*against_one_gpu=*/true);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, TensorParallelRanks, ::testing::Values("llama", "qwen2", "qwen3_moe", "gpt2", "gptj", "phi3", "phi3_longrope"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// Pre-quantized checkpoints (tools/tiny_prequant.h: FP8 with block or per-channel scales, GPTQ int4) split too: each
// shard's rows, or each row's columns (whole groups; a per-channel scale kept for the row's part), cut from the
// weight converted whole at load. Two ranks against the one-GPU plan of the same checkpoint, float32: on the CPU
// (store ranks) within 1e-5, on two GPUs (NCCL ranks) within 1e-5 too. Act-order GPTQ does not split by columns.
class PreQuantTensorParallelRanks : public ::testing::TestWithParam<std::string> {
 protected:
  // `graphs`: decode steps from CUDA graphs on both sides where the one-GPU plan's are (else eager on both).
  void Run(bool cpu, bool graphs = false) {
    Result<TinyQuant> kind = ParseTinyQuant(GetParam());
    ASSERT_TRUE(kind.ok());
    const std::string dir = TempDir("prequant_tp_" + GetParam()), model = dir + "/model";
    Status written = WriteTinyPreQuantLlama(model, "", *kind);
    ASSERT_TRUE(written.ok()) << written.error().ToString();
    const std::string one = dir + "/one.bplan", tp = dir + "/tp.bplan";
    ASSERT_TRUE(MakePlan(model, "cuda:0=1GiB,cpu=1GiB", "fp32", 2, 16, one).ok());
    Status planned = MakePlan(model, "cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB", "fp32", 2, 16, tp, "--auto-candidates T");
    if (*kind == TinyQuant::kGptqActOrder) {
      ASSERT_FALSE(planned.ok());
      EXPECT_NE(planned.error().message.find("an act-order GPTQ weight (desc_act, or a permuted g_idx) does not split "
                                             "by columns"),
                std::string::npos)
          << planned.error().message;
      return;
    }
    ASSERT_TRUE(planned.ok()) << planned.error().ToString();
    const std::vector<std::vector<int64_t>> prompts = {{1, 17, 200, 33, 5, 99}, {1, 250, 3, 64, 64, 12}};
    ExecutorOptions base;
    base.progress = false;
    base.force_cpu = cpu;
    base.cuda_graphs = graphs;
    GenerateOptions greedy;
    greedy.max_new_tokens = 6;
    OneProcess want;
    ASSERT_NO_FATAL_FAILURE(RunOneProcess(one, model, base, prompts, greedy, &want));
    if (!graphs) EXPECT_FALSE(want.graph_steps);
    const std::string label = GetParam() + std::string(14 - std::min<size_t>(14, GetParam().size()), ' ') +
                              " tensor parallel as two ranks (" +
                              (cpu ? "cpu, store" : want.graph_steps ? "cuda, nccl, graphs" : "cuda, nccl") + ")";
    RunTwoRanks(tp, model, base, prompts, greedy, want, 1e-5, want.graph_steps, label,
                cpu ? "the one-GPU plan on the CPU" : "the one-GPU plan");
  }
};

TEST_P(PreQuantTensorParallelRanks, CpuTwoRanksMatchTheOneGpuPlan) { Run(/*cpu=*/true); }

TEST_P(PreQuantTensorParallelRanks, CudaTwoRanksMatchTheOneGpuPlan) {
  if (!TwoGpus()) GTEST_SKIP() << "fewer than two CUDA devices";
  Run(/*cpu=*/false);
  Run(/*cpu=*/false, /*graphs=*/true);
}

INSTANTIATE_TEST_SUITE_P(Layouts, PreQuantTensorParallelRanks,
                         ::testing::Values("fp8-block", "fp8-channel", "gptq", "gptq-act"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

// A tensor-parallel plan over two GPUs runs as exactly two ranks.
TEST(RanksErrors, TensorParallelNeedsOneRankPerShard) {
  if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
  const std::string model = ModelDir("llama");
  const std::string tp = TempDir("ranks_tp_errors") + "/tp.bplan";
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cuda:1=8GiB,cpu=8GiB", "fp32", 1, 32, tp, "--auto-candidates T").ok());
  ExecutorOptions o;
  o.progress = false;
  o.force_cpu = true;
  o.world_size = 3;
  o.rank = 2;
  o.rendezvous = "127.0.0.1:" + std::to_string(FreePort());
  auto three = Executor::Load(tp, model, o);
  ASSERT_FALSE(three.ok());
  EXPECT_EQ(three.error().code, ErrorCode::kInvalidArgument) << three.error().ToString();
  EXPECT_NE(three.error().message.find("runs as 2 ranks"), std::string::npos) << three.error().ToString();
  o.world_size = 0;
  o.rank = 0;
  auto one_process = Executor::Load(tp, model, o);
  ASSERT_FALSE(one_process.ok());
  EXPECT_EQ(one_process.error().code, ErrorCode::kUnsupported) << one_process.error().ToString();
}

// A plan with a block that is not resident on a GPU is refused by every rank (naming the block); so is a
// rendezvous address without a port.
TEST(RanksErrors, Refusals) {
  if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
  const std::string model = ModelDir("llama");
  const std::string dir = TempDir("ranks_errors");
  const std::string offload = dir + "/offload.bplan", resident = dir + "/resident.bplan";
  // The smallest GPU budgets leave some layers on the CPU tier.
  ASSERT_TRUE(MakePlan(model, "cuda:0=8GiB,cpu=8GiB", "fp32", 1, 32, resident).ok());
  auto summary = SummarizePlan(resident);
  ASSERT_TRUE(summary.ok());
  ExecutorOptions o;
  o.progress = false;
  o.force_cpu = true;
  o.world_size = 2;
  o.rank = 1;
  o.rendezvous = "127.0.0.1";  // no port
  auto bad = Executor::Load(resident, model, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument) << bad.error().ToString();
  EXPECT_NE(bad.error().message.find("host:port"), std::string::npos) << bad.error().ToString();
  o.rendezvous = "127.0.0.1:" + std::to_string(FreePort());
  o.world_size = 1;
  auto small = Executor::Load(resident, model, o);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.error().code, ErrorCode::kInvalidArgument) << small.error().ToString();
  // Offloaded: find a budget where some block rests in CPU memory.
  auto offloaded = SmallestFeasible([&](uint64_t b) {
    return MakePlan(model, "cuda:0=" + std::to_string(b) + ",cpu=8GiB", "fp32", 1, 32, offload).ok();
  }, 1 << 16, 1ull << 32, 4096);
  ASSERT_TRUE(offloaded.ok()) << offloaded.error().ToString();
  ASSERT_TRUE(MakePlan(model, "cuda:0=" + std::to_string(*offloaded) + ",cpu=8GiB", "fp32", 1, 32, offload).ok());
  auto os = SummarizePlan(offload);
  ASSERT_TRUE(os.ok());
  ASSERT_GT(os->cpu_tier + os->disk_tier, 0) << os->ToString();
  o.world_size = 2;
  o.rank = 0;
  auto refused = Executor::Load(offload, model, o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::kUnsupported) << refused.error().ToString();
  EXPECT_NE(refused.error().message.find("not resident on a GPU"), std::string::npos) << refused.error().ToString();
}

}  // namespace
}  // namespace bigplan::e2e
