// A shard truncated under a running executor: the next forward pass ends in an error naming the shard, never in a
// dead process (SIGBUS). Covers both disk-tier paths of CPU mode: float32 weights used in place from the mapping
// (a fault reads zeros and marks the mapping damaged, see formats/guarded_copy.h) and bfloat16 execution, where
// disk-tier weights are read with pread (a short read is an error).
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "executor/executor.h"
#include "formats/checkpoint.h"
#include "formats/writer.h"
#include "planner/budget.h"
#include "planner/hf_import.h"
#include "planner/planner.h"
#include "schema/plan_io.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

constexpr char kConfig[] = R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 96,
  "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false, "torch_dtype": "float32"})";

std::string TmpDir(const std::string& name) {
  const char* t = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(t ? t : "/tmp") + "/" + name + "." + std::to_string(::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A tiny Llama checkpoint (one shard per ~70 KiB) in DIR; returns DIR.
std::string MakeModel(const std::string& name) {
  const std::string dir = TmpDir(name);
  std::ofstream(dir + "/config.json") << kConfig;
  auto model = ImportHfConfigText(kConfig);
  EXPECT_TRUE(model.ok());
  std::vector<WriteSpec> specs;
  for (const TensorSpec& t : ExpectedTensors(*model)) specs.push_back(WriteSpec{t.name, t.shape, DType::kF32});
  WriterOptions options;
  options.max_shard_bytes = 70 * 1024;
  options.threads = 1;
  auto shards = WriteRandomCheckpoint(dir, specs, options);
  EXPECT_TRUE(shards.ok()) << shards.error().ToString();
  return dir;
}

// Plans every decoder layer on the disk tier, computed on the CPU; returns the plan's path.
std::string PlanDiskTier(const std::string& dir, DType exec) {
  PlanRequest r;
  r.model_dir = dir;
  r.budget = *ParseMaxMemory("cpu=1GiB,disk=1GiB");
  r.run = RunShape{1, 32};
  r.exec_dtype = exec;
  r.strategy = "explicit";
  r.device_map = nlohmann::json{{"model.embed_tokens", "cpu"}, {"model.layers.0", "disk"}, {"model.layers.1", "disk"},
                                {"model.norm", "cpu"}, {"lm_head", "cpu"}};
  auto plan = MakePlan(r);
  EXPECT_TRUE(plan.ok()) << plan.error().ToString();
  const std::string path = dir + "/plan.bplan";
  EXPECT_TRUE(WriteFileBytes(path, plan->bytes.data(), plan->bytes.size()).ok());
  return path;
}

// The shard holding model.layers.1's MLP weights (a disk-tier block).
std::string ShardOfLastLayer(const std::string& dir) {
  auto ckpt = Checkpoint::Open(dir);
  EXPECT_TRUE(ckpt.ok());
  const TensorLocation* t = ckpt->Find("model.layers.1.mlp.down_proj.weight");
  EXPECT_NE(t, nullptr);
  return ckpt->shard_paths()[t->shard];
}

void ExpectErrorAfterTruncation(DType exec, const std::string& name) {
  const std::string dir = MakeModel(name);
  const std::string plan = PlanDiskTier(dir, exec);
  ExecutorOptions options;
  options.force_cpu = true;
  options.progress = false;
  auto exec_or = Executor::Load(plan, dir, options);
  ASSERT_TRUE(exec_or.ok()) << exec_or.error().ToString();
  Executor& e = **exec_or;
  auto before = e.Forward({1, 2, 3, 4}, 1, /*reset=*/true);
  ASSERT_TRUE(before.ok()) << before.error().ToString();
  EXPECT_GT(e.stats().disk_tier_bytes, 0u);

  const std::string shard = ShardOfLastLayer(dir);
  ASSERT_EQ(::truncate(shard.c_str(), 4096), 0);  // keep the header page, lose the weights
  const auto start = std::chrono::steady_clock::now();
  auto after = e.Forward({1, 2, 3, 4}, 1, /*reset=*/true);
  ASSERT_FALSE(after.ok()) << "a forward over a truncated shard succeeded";
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 2.0);
  EXPECT_NE(after.error().message.find(shard), std::string::npos) << after.error().ToString();
  // The executor stays loaded but every later pass fails the same way until it is loaded again.
  auto again = e.Generate({{1, 2, 3}}, GenerateOptions{});
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find(shard), std::string::npos) << again.error().ToString();
}

TEST(ShardTruncationTest, InPlaceMappedWeightsGiveAnError) { ExpectErrorAfterTruncation(DType::kF32, "trunc_f32"); }

TEST(ShardTruncationTest, PreadDiskReadsGiveAnError) { ExpectErrorAfterTruncation(DType::kBF16, "trunc_bf16"); }

}  // namespace
}  // namespace bigplan
