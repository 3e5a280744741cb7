#include "planner/plan_report.h"

#include <cstdio>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "planner/hf_import.h"

namespace bigplan {
namespace {

// A 4-layer Llama-shaped model, planned without weights.
constexpr const char* kTinyConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
  "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "hidden_act": "silu",
  "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
  "torch_dtype": "bfloat16"})";

// A request for the tiny model under `budget`, batch `batch`, `seq_len` positions.
PlanRequest TinyRequest(const std::string& budget, uint32_t batch, uint32_t seq_len) {
  Result<ModelDescription> model = ImportHfConfigText(kTinyConfig);
  EXPECT_TRUE(model.ok()) << model.error().ToString();
  model->name = "tiny";
  PlanRequest req;
  req.description = *model;
  Result<MemoryBudget> b = ParseMaxMemory(budget);
  EXPECT_TRUE(b.ok()) << b.error().ToString();
  req.budget = *b;
  req.run.max_batch = batch;
  req.run.max_seq_len = seq_len;
  return req;
}

// The plan report of `req` ("" when it cannot be planned: the test then fails).
std::string ReportOf(const PlanRequest& req) {
  Result<PlanResult> result = MakePlan(req);
  EXPECT_TRUE(result.ok()) << result.error().ToString();
  if (!result.ok()) return "";
  std::ostringstream out;
  WritePlanReport(out, *result, req);
  return out.str();
}

std::string Report(const std::string& budget, const std::string& strategy, const std::string& candidates = "BPC") {
  PlanRequest req = TinyRequest(budget, 1, 64);
  req.strategy = strategy;
  req.auto_candidates = candidates;
  return ReportOf(req);
}

// A mixture-of-experts model that placement E cannot take (its weights other than the routed experts, and a ring,
// beyond the GPU budget): the report says why under the candidates. (Dense models have no such line.) Quantized
// experts routed: the host's rate is that of their rows.
TEST(PlanReportTest, SaysWhyExpertsAreNotPlacementUnits) {
  // An 8-layer Mixtral-family model of `hidden` width, experts `inter` wide, `heads` heads of 64 (GQA to `kv`).
  auto tiny_moe = [](int hidden, int inter, int heads, int kv) {
    const std::string config =
        R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": )" +
        std::to_string(hidden) + R"(, "intermediate_size": )" + std::to_string(inter) +
        R"(, "num_hidden_layers": 8, "num_attention_heads": )" + std::to_string(heads) +
        R"(, "num_key_value_heads": )" + std::to_string(kv) +
        R"(, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 256, "max_position_embeddings": 512,
          "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": false,
          "torch_dtype": "bfloat16"})";
    Result<ModelDescription> m = ImportHfConfigText(config);
    EXPECT_TRUE(m.ok()) << m.error().ToString();
    if (m.ok()) m->name = "tiny-moe";
    return m;
  };
  // Wide attention (8 MiB a layer, 64 MiB in all) beside small experts: P streams it, E must keep it resident.
  Result<ModelDescription> wide = tiny_moe(1024, 64, 16, 16);
  ASSERT_TRUE(wide.ok());
  PlanRequest req;
  req.description = *wide;
  req.budget = *ParseMaxMemory("cuda:0=370MiB,cpu=1GiB");
  req.run.max_batch = 1;
  req.run.max_seq_len = 64;
  req.auto_candidates = "BPCE";
  const std::string report = ReportOf(req);
  EXPECT_NE(report.find("E infeasible; chosen"), std::string::npos) << report;
  EXPECT_NE(report.find("\n  E infeasible: cuda:0: the weights other than the routed experts ("), std::string::npos)
      << report;
  EXPECT_EQ(Report("cuda:0=1GiB,cpu=1GiB", "auto", "BPCE").find("E infeasible:"), std::string::npos);
  // int8 experts (48.6 MiB) at 340 MiB: routed, the host multiplying int8 rows.
  Result<ModelDescription> model = tiny_moe(256, 1024, 4, 2);
  ASSERT_TRUE(model.ok());
  req.description = *model;
  req.budget = *ParseMaxMemory("cuda:0=340MiB,cpu=1GiB");
  req.weights = quant::Format::kInt8;
  req.cpu_share_auto = true;
  const std::string quantized = ReportOf(req);
  EXPECT_NE(quantized.find("; chosen E"), std::string::npos) << quantized;
  EXPECT_NE(quantized.find(" GB/s of int8 rows (share "), std::string::npos) << quantized;
}

TEST(PlanReportTest, Resident) {
  EXPECT_EQ(Report("cuda:0=1GiB,cpu=1GiB", "auto"),
            "== tiny (llama, 7 blocks, 205376 params, 402.25 KiB at BF16) ==\n"
            "budget: cuda:0=1.00 GiB,cpu=1.00 GiB,disk=unlimited\n"
            "run: batch 1, seq 64, dtype BF16\n"
            "checkpoint: none (synthetic fingerprint; the executor will refuse this plan)\n"
            "placement (auto):\n"
            "  candidates (resident bytes): B 402.25 KiB, P 402.25 KiB, C 402.25 KiB; chosen B\n"
            "  block               compute  weights                 blocks         bytes\n"
            "  model.embed_tokens  cuda:0   resident                     1     32.00 KiB\n"
            "  model.layers.0-3    cuda:0   resident                     4    338.00 KiB\n"
            "  model.norm          cuda:0   resident                     1         256 B\n"
            "  lm_head             cuda:0   resident                     1     32.00 KiB\n"
            "  weights by location: cuda:0 402.25 KiB\n"
            "memory plan (greedy_by_size):\n"
            "  arena cuda:0    714.75 KiB  (12 buffers)\n"
            "  usage vs budget:\n"
            "    cuda:0    320.70 MiB of 1.00 GiB  (resident 402.25 KiB + KV 32.00 KiB + activations 280.50 KiB + "
            "reserve 320.00 MiB)\n"
            "    cpu              0 B of 1.00 GiB\n"
            "predicted per forward (profile h100-pcie5):\n"
            "  decode  (1 x 1 token, KV at 64): 0.532 ms  (compute 0.532 ms, waiting for copies 0.000 ms)\n"
            "  prefill (1 x 64 tokens): 1.523 ms  (compute 1.523 ms, waiting for copies 0.000 ms)\n"
            "  floor: streamed 0 B per forward at 53 GB/s H2D: 0.000 ms\n");
}

// A budget just short of everything resident, whole blocks only (candidate B): consecutive layers with the same
// placement become one row.
TEST(PlanReportTest, GroupsStreamedLayers) {
  EXPECT_EQ(Report("cuda:0=320.59375MiB,cpu=1GiB,disk=1GiB", "auto", "B"),
            "== tiny (llama, 7 blocks, 205376 params, 402.25 KiB at BF16) ==\n"
            "budget: cuda:0=320.59 MiB,cpu=1.00 GiB,disk=1.00 GiB\n"
            "run: batch 1, seq 64, dtype BF16\n"
            "checkpoint: none (synthetic fingerprint; the executor will refuse this plan)\n"
            "placement (auto):\n"
            "  candidates (resident bytes): B 116.75 KiB, P not considered, C not considered; chosen B\n"
            "  block               compute  weights                 blocks         bytes\n"
            "  model.embed_tokens  cuda:0   resident                     1     32.00 KiB\n"
            "  model.layers.0      cuda:0   cpu (pinned, streamed)       1     84.50 KiB\n"
            "  model.layers.1      cuda:0   resident                     1     84.50 KiB\n"
            "  model.layers.2-3    cuda:0   cpu (pinned, streamed)       2    169.00 KiB\n"
            "  model.norm          cuda:0   resident                     1         256 B\n"
            "  lm_head             cuda:0   cpu (pinned, streamed)       1     32.00 KiB\n"
            "  weights by location: cpu 285.50 KiB, cuda:0 116.75 KiB\n"
            "memory plan (greedy_by_size):\n"
            "  arena cuda:0    598.25 KiB  (9 buffers)\n"
            "  arena pinned    285.50 KiB  (4 buffers)\n"
            "  usage vs budget:\n"
            "    cuda:0    320.58 MiB of 320.59 MiB  (resident 116.75 KiB + staging 169.00 KiB + KV 32.00 KiB + "
            "activations 280.50 KiB + reserve 320.00 MiB)\n"
            "    cpu       285.50 KiB of 1.00 GiB  (weights 285.50 KiB)\n"
            "    disk             0 B of 1.00 GiB\n"
            "stream cuda:0: 28 units (0 row chunks), ring 169.00 KiB (2 slots)\n"
            "predicted per forward (profile h100-pcie5):\n"
            "  decode  (1 x 1 token, KV at 64): 1.561 ms  (compute 1.561 ms, waiting for copies 0.000 ms)\n"
            "  prefill (1 x 64 tokens): 1.523 ms  (compute 1.523 ms, waiting for copies 0.000 ms)\n"
            "  floor: streamed 284.75 KiB per forward at 53 GB/s H2D: 0.006 ms\n");
}

// The same budget with every candidate: keeping part of each layer resident (candidate P) holds 230.25 KiB (what
// the stream cap leaves is filled with streamed weights made resident) instead of 116.75 KiB.
TEST(PlanReportTest, PartlyResidentLayers) {
  EXPECT_EQ(Report("cuda:0=320.59375MiB,cpu=1GiB,disk=1GiB", "auto"),
            "== tiny (llama, 7 blocks, 205376 params, 402.25 KiB at BF16) ==\n"
            "budget: cuda:0=320.59 MiB,cpu=1.00 GiB,disk=1.00 GiB\n"
            "run: batch 1, seq 64, dtype BF16\n"
            "checkpoint: none (synthetic fingerprint; the executor will refuse this plan)\n"
            "placement (auto):\n"
            "  candidates (resident bytes): B 116.75 KiB, P 230.25 KiB, C infeasible; chosen P\n"
            "  block               compute  weights                 blocks         bytes\n"
            "  model.embed_tokens  cuda:0   cpu (pinned, streamed)       1     32.00 KiB\n"
            "  model.layers.0      cuda:0   partly resident + cpu        1     84.50 KiB\n"
            "  model.layers.1-3    cuda:0   partly resident + cpu        3    253.50 KiB\n"
            "  model.norm          cuda:0   resident                     1         256 B\n"
            "  lm_head             cuda:0   cpu (pinned, streamed)       1     32.00 KiB\n"
            "  weights by location: cpu 172.00 KiB, cuda:0 230.25 KiB\n"
            "memory plan (greedy_by_size):\n"
            "  arena cuda:0    606.75 KiB  (11 buffers)\n"
            "  arena pinned    172.00 KiB  (6 buffers)\n"
            "  usage vs budget:\n"
            "    cuda:0    320.59 MiB of 320.59 MiB  (resident 230.25 KiB + staging 64.00 KiB + KV 32.00 KiB + "
            "activations 280.50 KiB + reserve 320.00 MiB)\n"
            "    cpu       172.00 KiB of 1.00 GiB  (weights 172.00 KiB)\n"
            "    disk             0 B of 1.00 GiB\n"
            "stream cuda:0: 13 units (0 row chunks), ring 64.00 KiB (2 slots)\n"
            "predicted per forward (profile h100-pcie5):\n"
            "  decode  (1 x 1 token, KV at 64): 1.562 ms  (compute 1.561 ms, waiting for copies 0.001 ms)\n"
            "  prefill (1 x 64 tokens): 1.523 ms  (compute 1.523 ms, waiting for copies 0.001 ms)\n"
            "  floor: streamed 172.00 KiB per forward at 53 GB/s H2D: 0.003 ms\n");
}


// The tiny model split over two GPUs (layers 0-1 with the embedding on cuda:0, the rest on cuda:1), batch 4.
std::string SplitReport(uint32_t seq_len) {
  PlanRequest req = TinyRequest("cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB", 4, seq_len);
  req.strategy = "explicit";
  req.device_map = {{"model.embed_tokens", 0}, {"model.layers.0", 0}, {"model.layers.1", 0}, {"model.layers.2", 1},
                    {"model.layers.3", 1},     {"model.norm", 1},     {"lm_head", 1}};
  return ReportOf(req);
}

std::string LineWith(const std::string& report, const std::string& start) {
  const size_t at = report.find(start);
  if (at == std::string::npos) return "";
  return report.substr(at, report.find('\n', at) - at);
}

// A plan the executor pipelines reports its batched prefill (all rows, half the positions each); one that it does not
// (one GPU, above) reports none.
// Auto over two GPUs holding every block, batch 4: the interleaved candidate I is chosen, and S (nothing streams)
// is reported as not needed rather than infeasible.
TEST(PlanReportTest, InterleavedCandidateForBatches) {
  PlanRequest req = TinyRequest("cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB", 4, 64);
  req.strategy = "auto";
  const std::string line = LineWith(ReportOf(req), "  candidates");
  EXPECT_NE(line.find(", I "), std::string::npos) << line;
  EXPECT_NE(line.find("S not needed"), std::string::npos) << line;
  EXPECT_NE(line.find("; chosen I"), std::string::npos) << line;
  std::printf("%s\n", line.c_str());
}

TEST(PlanReportTest, BatchedPrefillOfSplitPlans) {
  // 512 positions: passes of 256 tokens per row, micro-batches of 2 rows.
  const std::string pipelined = LineWith(SplitReport(512), "  batched prefill");
  EXPECT_EQ(pipelined.find("  batched prefill (4 rows x 256 tokens): predicted "), 0u) << pipelined;
  EXPECT_NE(pipelined.find(" ms in 2 micro-batches of 2 rows, "), std::string::npos) << pipelined;
  EXPECT_NE(pipelined.find(" ms unpipelined"), std::string::npos) << pipelined;
  std::printf("%s\n", pipelined.c_str());
  // 64 positions: 32 tokens per row would need micro-batches of 16 rows.
  const std::string unpipelined = LineWith(SplitReport(64), "  batched prefill");
  EXPECT_EQ(unpipelined.find("  batched prefill (4 rows x 32 tokens): predicted "), 0u) << unpipelined;
  EXPECT_NE(unpipelined.find(" ms, not pipelined (micro-batches of 16 rows would make fewer than two)"),
            std::string::npos)
      << unpipelined;
  EXPECT_EQ(Report("cuda:0=1GiB,cpu=1GiB", "auto").find("batched prefill"), std::string::npos);
}

}  // namespace
}  // namespace bigplan
