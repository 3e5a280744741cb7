#include "schema/plan_dump.h"
#include "schema/streamed_plan_testutil.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace bigplan {
namespace {

// A small plan: one shard, one tensor, one block of 1024 bytes (resident on cuda:0, or in the pinned pool), one
// buffer, one arena, one step.
flatbuffers::DetachedBuffer TinyPlan(bool pinned, double decode_us, const arch::RopeParams& rope = {},
                                     uint32_t head_dim = 0) {
  flatbuffers::FlatBufferBuilder fb;
  auto shard = schema::CreateShardInfoDirect(fb, "model.safetensors", 4096, "00");
  std::vector<flatbuffers::Offset<schema::ShardInfo>> shards{shard};
  auto fp = schema::CreateFingerprintDirect(fb, &shards, "ff");
  std::vector<int64_t> shape{16, 16};
  auto tensor = schema::CreateTensorDirect(fb, "w", 0, 8, 1024, schema::DType::F32, &shape);
  std::vector<flatbuffers::Offset<schema::Tensor>> tensors{tensor};
  const schema::Tier tier = pinned ? schema::Tier::Cpu : schema::Tier::Gpu;
  const schema::Pool pool = pinned ? schema::Pool::PinnedHost : schema::Pool::DeviceArena;
  auto weight = schema::CreateWeight(fb, 0, schema::DType::F32, 1024, 0, tier);
  std::vector<flatbuffers::Offset<schema::Weight>> weights{weight};
  auto block = schema::CreateBlockDirect(fb, "b", "decoder_layer", 0, "b.", 0, tier, &weights, 1024, pinned ? -1 : 0,
                                         -1, -1, -1, pinned ? 0 : -1, schema::BlockKind::DecoderLayer);
  std::vector<flatbuffers::Offset<schema::Block>> blocks{block};
  auto buffer = schema::CreateBufferDirect(fb, pinned ? "b.host" : "b.weights",
                                           pinned ? schema::BufferKind::HostWeights : schema::BufferKind::ResidentWeights,
                                           pool, 0, 0, 1024, 0, 0);
  std::vector<flatbuffers::Offset<schema::Buffer>> buffers{buffer};
  auto arena = schema::CreateArena(fb, pool, 0, 1024);
  std::vector<flatbuffers::Offset<schema::Arena>> arenas{arena};
  auto step = schema::CreateStepDirect(fb, 0);
  std::vector<flatbuffers::Offset<schema::Step>> steps{step};
  auto config = schema_testing::TestModelConfig(fb, rope, head_dim);
  auto run_shape = schema::CreateRunShape(fb, 1, 16);
  auto plan = schema::CreatePlanDirect(fb, kPlanVersion, "test", "sequential", "m", "d", config, fp,
                                       schema::DType::F32, run_shape, nullptr, 0, &tensors, &blocks, &buffers,
                                       &arenas, &steps, nullptr, decode_us, 2000);
  schema::FinishPlanBuffer(fb, plan);
  return fb.Release();
}

// Block "b" partly resident: weight 0 (tensor w0) on cuda:0, weight 1 (w1, 16 x 16 F32) in the Cpu tier, streamed to
// cuda:0 as two row chunks of 512 bytes through a 1 KiB ring.
flatbuffers::DetachedBuffer PartialPlan() {
  return schema_testing::StreamedPlan({.unit_copy_us = 0.25, .predicted_decode_us = 1200, .predicted_prefill_us = 2000});
}

const schema::Plan& Verified(const flatbuffers::DetachedBuffer& buf) {
  auto plan = VerifyPlan(buf.data(), buf.size(), "tiny.bplan");
  EXPECT_TRUE(plan.ok()) << plan.error().ToString();
  return **plan;
}

TEST(PlanDumpTest, Text) {
  auto buf = TinyPlan(false, 1500);
  std::ostringstream out;
  WritePlanText(out, Verified(buf));
  const std::string v = std::to_string(kPlanVersion);
  EXPECT_EQ(out.str(),
            "bigplan plan, version " + v + ", written by test\n"
            "model: m (llama), digest d\n"
            "strategy: sequential\n"
            "exec dtype: F32\n"
            "run shape: batch 1, seq 16\n"
            "config: hidden 0, layers 0, heads 0/0 kv, head_dim 0, intermediate 0, vocab 0, max_pos 0, rotary_dim 0, "
            "rope_theta 10000.0, eps 0, act , tied no, bias attn/mlp no/no, bos -1, eos []\n"
            "rope: default theta 10000 dims 0\n"
            "checkpoint: digest ff\n"
            "  shard 0: model.safetensors, 4096 bytes, header 00\n"
            "budgets:\n"
            "tensors: 1 (1.00 KiB in the checkpoint)\n"
            "  [0] w F32[16,16] shard 0 @8 +1024\n"
            "blocks: 1\n"
            "  [0] b decoder_layer layer 0, cuda:0 gpu, 1024 bytes, buffers home 0 host -1 kv -1\n"
            "      weight tensor 0 F32 gpu @0 +1024\n"
            "arenas:\n"
            "  cuda:0: 1024 bytes (1.00 KiB)\n"
            "buffers: 1\n"
            "  [0] b.weights ResidentWeights cuda:0 @0 +1024 steps 0..0\n"
            "steps: 1\n"
            "  [0] block 0 (b): decode 0.000 us, prefill 0.000 us, copies 0.000 us\n"
            "streams: 0\n"
            "usage:\n"
            "predicted: decode 1500.000 us, prefill 2000.000 us per forward\n");
}

TEST(PlanDumpTest, Json) {
  auto buf = TinyPlan(true, 1500);
  const nlohmann::ordered_json j = PlanToJson(Verified(buf));
  EXPECT_EQ(j.begin().key(), "version");
  EXPECT_EQ(j["version"], kPlanVersion);
  EXPECT_EQ(j["model_name"], "m");
  EXPECT_EQ(j["checkpoint"].dump(), R"({"shards":[{"file_name":"model.safetensors","size_bytes":4096,)"
                                    R"("header_digest":"00"}],"digest":"ff"})");
  EXPECT_EQ(j["blocks"][0]["tier"], "cpu");
  EXPECT_EQ(j["blocks"][0]["block_kind"], "decoder_layer");
  EXPECT_EQ(j["config"]["rope"]["type"], "default");
  EXPECT_EQ(j["config"]["rope"]["theta"], 10000.0);
  EXPECT_EQ(j["tensors"][0]["shape"].dump(), "[16,16]");
  EXPECT_EQ(j["arenas"].dump(), R"([{"pool":"PinnedHost","device":0,"size_bytes":1024}])");
  EXPECT_EQ(j["predicted_decode_us"], 1500.0);
  EXPECT_FALSE(j.contains("profile"));
}

TEST(PlanDumpTest, Diff) {
  auto a = TinyPlan(false, 1000), b = TinyPlan(true, 1500);
  std::ostringstream out;
  WritePlanDiff(out, Verified(a), Verified(b), "a.bplan", "b.bplan");
  EXPECT_EQ(out.str(),
            "A: a.bplan\n"
            "B: b.bplan\n"
            "predicted decode:  1.000 ms -> 1.500 ms (50.0%)\n"
            "predicted prefill: 2.000 ms -> 2.000 ms (0.0%)\n"
            "weight bytes by location:\n"
            "  cpu: 0 B -> 1.00 KiB  *\n"
            "  cuda:0: 1.00 KiB -> 0 B  *\n"
            "arenas:\n"
            "  cuda:0: 1.00 KiB -> 0 B  *\n"
            "  pinned: 0 B -> 1.00 KiB  *\n"
            "placement differences: 1\n"
            "  b: cuda:0 gpu -> cuda:0 cpu\n");
}

// Partly resident blocks show each weight's tier; streams show device, layout, ring, chunk size and their units.
TEST(PlanDumpTest, PartlyResidentBlockAndStream) {
  auto buf = PartialPlan();
  const schema::Plan& p = Verified(buf);
  std::ostringstream text;
  WritePlanText(text, p);
  const std::string t = text.str();
  for (const char* needle :
       {"  [0] b decoder_layer layer 0, cuda:0 cpu (partly resident: 1 gpu, 1 cpu weights), 2048 bytes, buffers home "
        "0 host 1 kv -1\n",
        "      weight tensor 0 F32 gpu @0 +1024\n", "      weight tensor 1 F32 cpu @0 +1024\n", "streams: 1\n",
        "  cuda:0: layout chunks, ring 1.00 KiB (buffer 2), chunks up to 512 B, 2 units (2 row chunks, 0 from disk), "
        "1.00 KiB per forward\n",
        "    [0] block 0 weight 1 rows 0-8 chunk from cpu +512 @0 waits 1, 0.250 us\n",
        "    [1] block 0 weight 1 rows 8-16 chunk from cpu +512 @512 waits 0, 0.250 us\n"}) {
    EXPECT_NE(t.find(needle), std::string::npos) << needle << "\nin:\n" << t;
  }
  const nlohmann::ordered_json j = PlanToJson(p);
  EXPECT_EQ(j["blocks"][0]["weights"][0]["tier"], "gpu");
  EXPECT_EQ(j["blocks"][0]["weights"][1]["tier"], "cpu");
  EXPECT_EQ(j["blocks"][0]["host_buffer"], 1);
  ASSERT_EQ(j["streams"].size(), 1u);
  const auto& st = j["streams"][0];
  EXPECT_EQ(st["device"], 0);
  EXPECT_EQ(st["layout"], "chunks");
  EXPECT_EQ(st["ring_bytes"], 1024);
  EXPECT_EQ(st["chunk_bytes"], 512);
  EXPECT_EQ(st["unit_count"], 2);
  EXPECT_EQ(st["row_chunks"], 2);
  EXPECT_EQ(st["disk_units"], 0);
  EXPECT_EQ(st["streamed_bytes"], 1024);
  EXPECT_EQ(st["units"][1].dump(),
            R"({"block":0,"weight":1,"row_begin":8,"row_end":16,"source":"cpu","bytes":512,"whole":false,)"
            R"("ring_offset":512,"wait_unit":0,"disk_slot_offset":0,"disk_slot_bytes":0,"disk_wait_unit":-1,)"
            R"("predicted_copy_us":0.25})");
  auto resident = TinyPlan(false, 1000);
  std::ostringstream diff;
  WritePlanDiff(diff, Verified(resident), p, "a", "b");
  const std::string d = diff.str();
  EXPECT_NE(d.find("  cpu: 0 B -> 1.00 KiB  *\n"), std::string::npos) << d;
  EXPECT_NE(d.find("streams:\n  A cuda:0: none\n  B cuda:0: layout chunks, ring 1.00 KiB"), std::string::npos) << d;
  EXPECT_NE(d.find("  b: cuda:0 gpu -> cuda:0 cpu (partly resident: 1 gpu, 1 cpu weights)\n"), std::string::npos) << d;
}

// The typed RoPE the executor computes from, as text and JSON.
TEST(PlanDumpTest, TypedRope) {
  arch::RopeParams yarn;
  yarn.type = arch::RopeType::kYarn;
  yarn.theta = 10000;
  yarn.rotary_dim = 16;
  yarn.factor = 4;
  yarn.original_max_position_embeddings = 64;
  yarn.beta_fast = 32;
  yarn.beta_slow = 1;
  yarn.ramp_low = 0;
  yarn.ramp_high = 3;
  yarn.attention_factor = 1.138629436111989;
  auto buf = TinyPlan(false, 1000, yarn, 16);
  const schema::Plan& p = Verified(buf);
  std::ostringstream text;
  WritePlanText(text, p);
  EXPECT_NE(text.str().find("\nrope: yarn theta 10000 dims 16 factor 4 original 64 beta_fast 32 beta_slow 1 ramp [0, 3] "
                            "attention_factor 1.13862944\n"),
            std::string::npos)
      << text.str();
  const nlohmann::ordered_json j = PlanToJson(p);
  EXPECT_EQ(j["config"]["rope"].dump(),
            R"({"type":"yarn","theta":10000.0,"rotary_dim":16,"factor":4.0,"low_freq_factor":1.0,)"
            R"("high_freq_factor":4.0,"original_max_position_embeddings":64,"beta_fast":32.0,"beta_slow":1.0,)"
            R"("ramp_low":0.0,"ramp_high":3.0,"attention_factor":1.138629436111989,"short_factor":[],"long_factor":[]})");
}

TEST(PlanDumpTest, DiffOfAPlanWithItselfShowsNoDifferences) {
  auto a = TinyPlan(false, 1000);
  std::ostringstream out;
  WritePlanDiff(out, Verified(a), Verified(a), "a", "a");
  EXPECT_NE(out.str().find("placement differences: 0\n"), std::string::npos) << out.str();
  EXPECT_EQ(out.str().find(" *"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace bigplan
