// Executor::Load refuses plans that do not belong to the checkpoint, naming what differs; Forward/Generate check
// their inputs against the plan's run shape and vocabulary, naming the numbers.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "executor/executor.h"
#include "tests/e2e/e2e_util.h"

namespace bigplan::e2e {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The model's shard files, sorted.
std::vector<std::string> Shards(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("model", 0) == 0 && e.path().extension() == ".safetensors") out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not in: " << text;
}

class LoadErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    if (ModelsRoot().empty()) GTEST_FAIL() << "no tiny models";
    dir_ = TempDir("load_errors");
    model_ = dir_ + "/llama";
    fs::copy(ModelDir("llama"), model_, fs::copy_options::recursive);
    plan_ = dir_ + "/llama.bplan";
    Status s = MakePlan(model_, "cpu=8GiB", "fp32", 2, 16, plan_);
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    options_.progress = false;
    options_.force_cpu = true;
  }
  Result<std::unique_ptr<Executor>> Load(const std::string& plan, const std::string& model) {
    return Executor::Load(plan, model, options_);
  }

  std::string dir_, model_, plan_;
  ExecutorOptions options_;
};

TEST_F(LoadErrors, LoadsTheMatchingCheckpoint) {
  auto exec = Load(plan_, model_);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
  EXPECT_EQ((*exec)->info().architecture, "llama");
  EXPECT_EQ((*exec)->info().max_batch, 2u);
  EXPECT_EQ((*exec)->info().max_seq_len, 16u);
}

TEST_F(LoadErrors, NotAPlan) {
  const std::string junk = dir_ + "/junk.bplan";
  WriteAll(junk, "{\"this is\": \"not a plan\"}");
  auto exec = Load(junk, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kCorrupt);
  EXPECT_TRUE(Contains(exec.error().message, "not a bigplan plan"));
  EXPECT_TRUE(Contains(exec.error().message, "junk.bplan"));

  auto missing = Load(dir_ + "/missing.bplan", model_);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST_F(LoadErrors, CheckpointChangedAfterPlanning) {
  // Rewrite one shard with another header (an added metadata entry): still a valid checkpoint, but not the one
  // the plan was made for.
  const std::string shard = Shards(model_).back();
  const std::string path = model_ + "/" + shard;
  std::string bytes = ReadAll(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  header["__metadata__"]["changed"] = "after planning";
  std::string text = header.dump();
  while (text.size() % 8) text += ' ';
  std::string out(8, '\0');
  const uint64_t len = text.size();
  std::memcpy(out.data(), &len, 8);
  WriteAll(path, out + text + bytes.substr(8 + n));

  auto exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kMismatch) << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, plan_));
  EXPECT_TRUE(Contains(exec.error().message, shard));
  EXPECT_TRUE(Contains(exec.error().message, "plan again"));
}

TEST_F(LoadErrors, ConfigJsonChangedAfterPlanning) {
  // Same shards, another hyperparameter: the plan's ModelConfig is stale, so Load must refuse rather than run
  // with the old value.
  const std::string config_path = model_ + "/config.json";
  const std::string original = ReadAll(config_path);
  nlohmann::json config = nlohmann::json::parse(original);
  ASSERT_TRUE(config.contains("rms_norm_eps"));
  config["rms_norm_eps"] = config["rms_norm_eps"].get<double>() * 10;
  WriteAll(config_path, config.dump(2));

  auto exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kMismatch) << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, plan_));
  EXPECT_TRUE(Contains(exec.error().message, config_path + " changed since the plan was made (sha256 "));
  EXPECT_TRUE(Contains(exec.error().message, "plan again"));

  // Even a change that leaves the JSON's meaning alone is refused: the check is on the exact bytes.
  WriteAll(config_path, original + "\n");
  exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_TRUE(Contains(exec.error().message, "config.json changed")) << exec.error().ToString();

  WriteAll(config_path, original);
  exec = Load(plan_, model_);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
}

TEST_F(LoadErrors, ConfigJsonMissingAfterPlanning) {
  const std::string config_path = model_ + "/config.json";
  const std::string original = ReadAll(config_path);
  fs::remove(config_path);
  auto exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kMismatch) << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, plan_));
  EXPECT_TRUE(Contains(exec.error().message, config_path + " does not exist"));

  WriteAll(config_path, original);
  exec = Load(plan_, model_);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
}

TEST_F(LoadErrors, PlanWithoutConfigDigestIsNotChecked) {
  // Planned from a config.json outside the checkpoint directory (--checkpoint elsewhere): the plan records no
  // config digest, and the checkpoint directory's config.json (here: none) is not compared.
  const std::string config_dir = dir_ + "/config_dir";
  fs::create_directories(config_dir);
  fs::copy_file(model_ + "/config.json", config_dir + "/config.json");
  const std::string plan = dir_ + "/split.bplan";
  Status s = MakePlan(config_dir, "cpu=8GiB", "fp32", 2, 16, plan, "--checkpoint " + model_);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  fs::remove(model_ + "/config.json");
  auto exec = Load(plan, model_);
  ASSERT_TRUE(exec.ok()) << exec.error().ToString();
}

TEST_F(LoadErrors, TruncatedShard) {
  const std::string shard = Shards(model_).front();
  const std::string path = model_ + "/" + shard;
  fs::resize_file(path, fs::file_size(path) / 2);
  auto exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_TRUE(exec.error().code == ErrorCode::kCorrupt || exec.error().code == ErrorCode::kMismatch)
      << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, shard));
}

TEST_F(LoadErrors, GrownShard) {
  const std::string shard = Shards(model_).front();
  std::ofstream(model_ + "/" + shard, std::ios::binary | std::ios::app) << std::string(64, '\0');
  auto exec = Load(plan_, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_TRUE(Contains(exec.error().message, shard)) << exec.error().ToString();
}

TEST_F(LoadErrors, PlanOfAnotherModel) {
  auto exec = Load(plan_, ModelDir("llama_gqa"));
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kMismatch) << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, plan_));
  EXPECT_TRUE(Contains(exec.error().message, "shard"));
}

TEST_F(LoadErrors, WeightlessPlanIsRefused) {
  // A directory with config.json only plans without weights: the plan's fingerprint is synthetic.
  const std::string config_only = dir_ + "/config_only";
  fs::create_directories(config_only);
  fs::copy_file(model_ + "/config.json", config_only + "/config.json");
  const std::string plan = dir_ + "/weightless.bplan";
  Status s = MakePlan(config_only, "cpu=8GiB", "fp32", 2, 16, plan);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  auto exec = Load(plan, model_);
  ASSERT_FALSE(exec.ok());
  EXPECT_EQ(exec.error().code, ErrorCode::kMismatch) << exec.error().ToString();
  EXPECT_TRUE(Contains(exec.error().message, "without weights"));
  EXPECT_TRUE(Contains(exec.error().message, "weightless.bplan"));
}

TEST_F(LoadErrors, InputsAreChecked) {
  auto loaded = Load(plan_, model_);
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  Executor& exec = **loaded;
  const int64_t vocab = exec.info().vocab_size;

  auto r = exec.Forward({1, 2, vocab + 5}, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message, "token id " + std::to_string(vocab + 5) + " at [0][2]"));
  EXPECT_TRUE(Contains(r.error().message, std::to_string(vocab)));

  r = exec.Forward({1, -1}, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.error().message, "token id -1"));

  r = exec.Forward(std::vector<int64_t>(3, 1), 3);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message, "batch 3 exceeds the plan's max_batch 2"));

  r = exec.Forward(std::vector<int64_t>(17, 1), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.error().message, "17 new tokens = 17 exceeds the plan's max_seq_len 16"));

  r = exec.Forward({1, 2, 3}, 2);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.error().message, "3 token ids"));

  ASSERT_TRUE(exec.Forward(std::vector<int64_t>(10, 1), 1).ok());
  EXPECT_EQ(exec.cached_tokens(), 10);
  r = exec.Forward(std::vector<int64_t>(7, 1), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.error().message, "10 cached + 7 new tokens = 17 exceeds the plan's max_seq_len 16"));
  r = exec.Forward(std::vector<int64_t>(2, 1), 2);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.error().message, "differs from the cached sequence's batch 1"));
  // A refused call changes nothing: the sequence continues.
  ASSERT_TRUE(exec.Forward(std::vector<int64_t>(6, 1), 1).ok());
  EXPECT_EQ(exec.cached_tokens(), 16);
  ASSERT_TRUE(exec.Reset().ok());
  EXPECT_EQ(exec.cached_tokens(), 0);

  GenerateOptions g;
  g.max_new_tokens = 7;
  auto gen = exec.Generate({std::vector<int64_t>(10, 1)}, g);
  ASSERT_FALSE(gen.ok());
  EXPECT_TRUE(Contains(gen.error().message, "prompt of 10 tokens + 7 new tokens = 17 exceeds"));
  gen = exec.Generate({{1, 2}, {1}}, g);
  ASSERT_FALSE(gen.ok());
  EXPECT_TRUE(Contains(gen.error().message, "different lengths"));
  g.max_new_tokens = 6;
  gen = exec.Generate({std::vector<int64_t>(10, 1)}, g);
  ASSERT_TRUE(gen.ok()) << gen.error().ToString();
  EXPECT_EQ(gen->tokens[0].size(), 6u);
}

TEST_F(LoadErrors, StopTokensAndSampling) {
  auto loaded = Load(plan_, model_);
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  Executor& exec = **loaded;
  GenerateOptions g;
  g.max_new_tokens = 8;
  auto greedy = exec.Generate({{3, 1, 4, 1, 5}}, g);
  ASSERT_TRUE(greedy.ok()) << greedy.error().ToString();
  ASSERT_EQ(greedy->tokens[0].size(), 8u);
  // Stop at the third greedy token: it is included, nothing follows.
  g.stop_token_ids = {greedy->tokens[0][2]};
  auto stopped = exec.Generate({{3, 1, 4, 1, 5}}, g);
  ASSERT_TRUE(stopped.ok());
  const auto& t = stopped->tokens[0];
  ASSERT_LE(t.size(), 3u);
  EXPECT_EQ(t.back(), greedy->tokens[0][2]);
  EXPECT_TRUE(stopped->stopped[0]);
  // Sampling: same seed, same tokens; another seed usually differs; all in the vocabulary.
  GenerateOptions s;
  s.max_new_tokens = 8;
  s.temperature = 1.5f;
  s.top_k = 50;
  s.top_p = 0.95f;
  s.seed = 7;
  auto a = exec.Generate({{3, 1, 4}, {1, 5, 9}}, s);
  auto b = exec.Generate({{3, 1, 4}, {1, 5, 9}}, s);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  for (const auto& row : a->tokens) {
    for (int64_t tok : row) {
      EXPECT_GE(tok, 0);
      EXPECT_LT(tok, exec.info().vocab_size);
    }
  }
  s.seed = 8;
  auto c = exec.Generate({{3, 1, 4}, {1, 5, 9}}, s);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->tokens, c->tokens);
}

TEST_F(LoadErrors, NonsenseSamplingOptionsAreRefused) {
  auto loaded = Load(plan_, model_);
  ASSERT_TRUE(loaded.ok()) << loaded.error().ToString();
  Executor& exec = **loaded;
  // NaN would turn every probability into NaN and sample garbage; a negative top_k has no meaning.
  GenerateOptions nan_temperature;
  nan_temperature.temperature = std::numeric_limits<float>::quiet_NaN();
  GenerateOptions nan_top_p;
  nan_top_p.temperature = 1.0f;
  nan_top_p.top_p = std::numeric_limits<float>::quiet_NaN();
  GenerateOptions negative_top_k;
  negative_top_k.top_k = -3;
  for (GenerateOptions g : {nan_temperature, nan_top_p, negative_top_k}) {
    g.max_new_tokens = 2;
    auto r = exec.Generate({{3, 1, 4}}, g);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    EXPECT_TRUE(Contains(r.error().message, "sampling options")) << r.error().message;
  }
}

TEST_F(LoadErrors, DamagedPlanIsRefused) {
  std::ifstream in(plan_, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 100u);
  // Any changed byte (here a value deep inside the plan) is caught by the plan's checksum.
  for (size_t at : {bytes.size() / 3, bytes.size() / 2, bytes.size() - 40}) {
    std::string bad = bytes;
    bad[at] = static_cast<char>(bad[at] ^ 0x20);
    const std::string path = dir_ + "/damaged.bplan";
    WriteAll(path, bad);
    auto exec = Load(path, model_);
    ASSERT_FALSE(exec.ok()) << at;
    EXPECT_TRUE(exec.error().code == ErrorCode::kCorrupt || exec.error().code == ErrorCode::kIncompatible)
        << exec.error().ToString();
    EXPECT_TRUE(Contains(exec.error().message, "damaged.bplan")) << exec.error().message;
  }
}

}  // namespace
}  // namespace bigplan::e2e
