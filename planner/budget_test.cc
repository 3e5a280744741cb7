#include "planner/budget.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

TEST(BudgetTest, ParsesMaxMemory) {
  Result<MemoryBudget> b = ParseMaxMemory("cuda:0=10GiB, cuda:1 = 512MiB,cpu=30GB,disk=200GiB");
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ(b->gpus.at(0), 10 * kGiB);
  EXPECT_EQ(b->gpus.at(1), uint64_t{512} << 20);
  EXPECT_EQ(*b->cpu, uint64_t{30'000'000'000});
  EXPECT_EQ(*b->disk, 200 * kGiB);
  EXPECT_EQ(b->Entries().size(), 4u);
  EXPECT_EQ(b->Entries()[0].first, "cuda:0");
  EXPECT_EQ(b->Entries()[3].first, "disk");
  EXPECT_EQ(b->ToString(), "cuda:0=10.00 GiB,cuda:1=512.00 MiB,cpu=27.94 GiB,disk=200.00 GiB");

  // Bare ordinals as Accelerate's integer keys; devices in any order and case; no disk -> unlimited.
  Result<MemoryBudget> c = ParseMaxMemory("CPU=1GiB,1=2GiB,0=3GiB");
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->gpus.size(), 2u);
  EXPECT_EQ(c->gpus.begin()->first, 0);
  EXPECT_FALSE(c->disk.has_value());
  EXPECT_EQ(c->ToString(), "cuda:0=3.00 GiB,cuda:1=2.00 GiB,cpu=1.00 GiB,disk=unlimited");
}

TEST(BudgetTest, ErrorsNameTheBadPiece) {
  struct Case {
    const char* spec;
    const char* piece;
  } cases[] = {
      {"", "\"\""},
      {"cuda:0=10GiB,gpu:1=3GiB", "\"gpu:1=3GiB\": unknown device \"gpu:1\""},
      {"cuda:0", "\"cuda:0\": missing \"=\""},
      {"cuda:0=10GiB,cuda:0=1GiB", "\"cuda:0=1GiB\": device given twice"},
      {"cpu=lots", "\"cpu=lots\""},
      {"cuda:x=1GiB", "unknown device \"cuda:x\""},
      {"cuda:-1=1GiB", "unknown device"},
      {"cuda:0=1GiB,,cpu=1GiB", "empty entry"},
  };
  for (const Case& c : cases) {
    Result<MemoryBudget> b = ParseMaxMemory(c.spec);
    ASSERT_FALSE(b.ok()) << c.spec;
    EXPECT_EQ(b.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(b.error().message.find(c.piece), std::string::npos) << b.error().message;
  }
}

TEST(BudgetTest, FromAccelerateStyleJson) {
  Result<MemoryBudget> b = MemoryBudgetFromJson(nlohmann::json::parse(R"({"0": "1GiB", "cuda:1": 1000, "cpu": "2GB"})"));
  ASSERT_TRUE(b.ok()) << b.error().ToString();
  EXPECT_EQ(b->gpus.at(0), kGiB);
  EXPECT_EQ(b->gpus.at(1), 1000u);
  EXPECT_EQ(*b->cpu, 2'000'000'000u);
  Result<MemoryBudget> back = MemoryBudgetFromJson(MemoryBudgetToJson(*b));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, *b);
  EXPECT_FALSE(MemoryBudgetFromJson(nlohmann::json::parse(R"({"mps": 1})")).ok());
  EXPECT_FALSE(MemoryBudgetFromJson(nlohmann::json::parse(R"({"0": -1})")).ok());
  EXPECT_FALSE(MemoryBudgetFromJson(nlohmann::json::parse(R"([1])")).ok());
}

TEST(BudgetTest, ExecDType) {
  EXPECT_EQ(*ParseExecDType("bf16"), DType::kBF16);
  EXPECT_EQ(*ParseExecDType("FP16"), DType::kF16);
  EXPECT_EQ(*ParseExecDType("float32"), DType::kF32);
  EXPECT_EQ(*ParseExecDType("half"), DType::kF16);
  Result<DType> bad = ParseExecDType("int8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("\"int8\""), std::string::npos);

  ModelDescription m;
  BlockDesc b;
  b.params = {{"a", {1000}, DType::kF16}, {"b", {10}, DType::kF32}, {"c", {5000}, DType::kI64}};
  m.blocks.push_back(b);
  EXPECT_EQ(DefaultExecDType(m), DType::kF16);
  EXPECT_EQ(*ResolveExecDType(std::nullopt, m), DType::kF16);
  EXPECT_EQ(*ResolveExecDType(std::string(""), m), DType::kF16);
  EXPECT_EQ(*ResolveExecDType(std::string("fp32"), m), DType::kF32);
  m.blocks[0].params = {{"a", {10}, DType::kF64}};
  EXPECT_EQ(DefaultExecDType(m), DType::kF32);
}

TEST(BudgetTest, RunShape) {
  ModelDescription m;
  m.config.max_position_embeddings = 4096;
  EXPECT_TRUE(ValidateRunShape(RunShape{4, 4096}, m).ok());
  EXPECT_FALSE(ValidateRunShape(RunShape{0, 16}, m).ok());
  EXPECT_FALSE(ValidateRunShape(RunShape{1, 0}, m).ok());
  Status too_long = ValidateRunShape(RunShape{1, 4097}, m);
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.error().message.find("max_position_embeddings 4096"), std::string::npos);
  EXPECT_EQ((RunShape{3, 100}.tokens()), 300u);
}

}  // namespace
}  // namespace bigplan
