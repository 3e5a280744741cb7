#include "schema/plan_io.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

// A minimal valid plan: one shard, one tensor, one resident block, one buffer, one arena, one step.
flatbuffers::DetachedBuffer MinimalPlan(uint32_t version = kPlanVersion, uint64_t arena_size = 1024,
                                        uint32_t tensor_shard = 0) {
  flatbuffers::FlatBufferBuilder fb;
  auto shard = schema::CreateShardInfoDirect(fb, "model.safetensors", 4096, "00");
  std::vector<flatbuffers::Offset<schema::ShardInfo>> shards{shard};
  auto fp = schema::CreateFingerprintDirect(fb, &shards, "ff");
  std::vector<int64_t> shape{16, 16};
  auto tensor = schema::CreateTensorDirect(fb, "w", tensor_shard, 8, 1024, schema::DType::F32, &shape);
  std::vector<flatbuffers::Offset<schema::Tensor>> tensors{tensor};
  std::vector<schema::Weight> unused;
  auto weight = schema::CreateWeight(fb, 0, schema::DType::F32, 1024, 0);
  std::vector<flatbuffers::Offset<schema::Weight>> weights{weight};
  auto block = schema::CreateBlockDirect(fb, "b", "decoder_layer", 0, "b.", 0, schema::Tier::Gpu, &weights, 1024, 0);
  std::vector<flatbuffers::Offset<schema::Block>> blocks{block};
  auto buffer = schema::CreateBufferDirect(fb, "b.weights", schema::BufferKind::ResidentWeights,
                                           schema::Pool::DeviceArena, 0, 0, 1024, 0, 0);
  std::vector<flatbuffers::Offset<schema::Buffer>> buffers{buffer};
  auto arena = schema::CreateArena(fb, schema::Pool::DeviceArena, 0, arena_size);
  std::vector<flatbuffers::Offset<schema::Arena>> arenas{arena};
  auto step = schema::CreateStepDirect(fb, 0);
  std::vector<flatbuffers::Offset<schema::Step>> steps{step};
  auto config = schema::CreateModelConfigDirect(fb, "llama");
  auto run_shape = schema::CreateRunShape(fb, 1, 16);
  auto plan = schema::CreatePlanDirect(fb, version, "test", "sequential", "m", "d", config, fp,
                                       schema::DType::F32, run_shape, nullptr, 0, &tensors, &blocks, &buffers,
                                       &arenas, &steps);
  schema::FinishPlanBuffer(fb, plan);
  return fb.Release();
}

TEST(PlanIoTest, AcceptsValidPlan) {
  auto buf = MinimalPlan();
  auto plan = VerifyPlan(buf.data(), buf.size(), "p.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ((*plan)->blocks()->size(), 1u);
}

TEST(PlanIoTest, RejectsForeignBytes) {
  std::string junk = "{\"this\": \"is json\", \"not\": \"a plan\"}";
  auto r = VerifyPlan(reinterpret_cast<const uint8_t*>(junk.data()), junk.size(), "x.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(r.error().message.find("x.json: not a bigplan plan"), std::string::npos) << r.error().message;
}

TEST(PlanIoTest, RejectsTruncated) {
  auto buf = MinimalPlan();
  // (Cutting only trailing padding leaves a readable plan; any cut into real data must be caught.)
  for (size_t cut : {size_t{4}, buf.size() / 4, buf.size() / 2}) {
    auto r = VerifyPlan(buf.data(), cut, "p.bplan");
    ASSERT_FALSE(r.ok()) << cut;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  }
}

TEST(PlanIoTest, RejectsOtherVersionAsIncompatible) {
  auto buf = MinimalPlan(kPlanVersion + 1);
  auto r = VerifyPlan(buf.data(), buf.size(), "p.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIncompatible);
  EXPECT_NE(r.error().message.find("version 2"), std::string::npos) << r.error().message;
}

TEST(PlanIoTest, RejectsOutOfRangeIndices) {
  auto small_arena = MinimalPlan(kPlanVersion, 512);
  auto r = VerifyPlan(small_arena.data(), small_arena.size(), "p.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("exceeds its arena"), std::string::npos) << r.error().message;
  auto bad_shard = MinimalPlan(kPlanVersion, 1024, 7);
  r = VerifyPlan(bad_shard.data(), bad_shard.size(), "p.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("shard 7 out of range"), std::string::npos) << r.error().message;
}

TEST(PlanIoTest, FileRoundTripAndMissingFile) {
  auto buf = MinimalPlan();
  const std::string path = ::testing::TempDir() + "/p.bplan";
  ASSERT_TRUE(WriteFileBytes(path, buf.data(), buf.size()).ok());
  auto pf = PlanFile::Load(path);
  ASSERT_TRUE(pf.ok()) << pf.error().ToString();
  EXPECT_EQ(pf->plan().strategy()->str(), "sequential");
  auto missing = PlanFile::Load(path + ".nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

TEST(PlanIoTest, DTypeSizes) {
  EXPECT_EQ(DTypeSize(schema::DType::BF16), 2u);
  EXPECT_EQ(DTypeSize(schema::DType::F32), 4u);
  EXPECT_EQ(DTypeSize(schema::DType::F8_E4M3), 1u);
  EXPECT_STREQ(DTypeName(schema::DType::BF16), "BF16");
}

}  // namespace
}  // namespace bigplan
