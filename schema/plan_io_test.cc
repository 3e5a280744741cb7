#include "schema/plan_io.h"
#include "schema/streamed_plan_testutil.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

namespace bigplan {
namespace {

// What MinimalPlan writes for the model and its block (version 3's typed fields).
struct ModelFields {
  bool rope_table = true;  // false: config.rope absent (as in plans of older versions)
  arch::RopeParams rope;   // config.rope
  uint32_t head_dim = 0;   // config.head_dim
  schema::BlockKind block_kind = schema::BlockKind::DecoderLayer;
  const char* kind = "decoder_layer";  // Block.kind
  schema::WeightFormat format = schema::WeightFormat::Plain;  // the weight's format, group size and size
  uint32_t group = 0;
  uint64_t weight_bytes = 1024;
  schema::Tier tier = schema::Tier::Gpu;           // the weight's tier
  schema::DType src_dtype = schema::DType::F32;    // the tensor's dtype in the checkpoint
  // (v5) A pre-quantized tensor: its kind and source tensors (name, dtype); the tensor's own location is the
  // first source's unless `moved_source`.
  schema::PreQuantKind prequant = schema::PreQuantKind::None;
  std::vector<std::pair<std::string, schema::DType>> sources;
  bool moved_source = false;
  std::vector<int64_t> shape{16, 16};  // the tensor's shape
};

// A minimal valid plan: one shard, one tensor, one resident block, one buffer, one arena, one step.
flatbuffers::DetachedBuffer MinimalPlan(uint32_t version = kPlanVersion, uint64_t arena_size = 1024,
                                        uint32_t tensor_shard = 0, const char* checksum = nullptr,
                                        const ModelFields& m = {}) {
  flatbuffers::FlatBufferBuilder fb;
  auto shard = schema::CreateShardInfoDirect(fb, "model.safetensors", 4096, "00");
  std::vector<flatbuffers::Offset<schema::ShardInfo>> shards{shard};
  auto fp = schema::CreateFingerprintDirect(fb, &shards, "ff");
  std::vector<int64_t> shape = m.shape;
  std::vector<flatbuffers::Offset<schema::SourceTensor>> sources;
  for (size_t i = 0; i < m.sources.size(); ++i) {
    std::vector<int64_t> source_shape{16};
    sources.push_back(schema::CreateSourceTensorDirect(fb, m.sources[i].first.c_str(), tensor_shard,
                                                       8 + (i == 0 && !m.moved_source ? 0 : 2048), 1024,
                                                       m.sources[i].second, &source_shape));
  }
  auto tensor = schema::CreateTensorDirect(fb, "w", tensor_shard, 8, 1024, m.src_dtype, &shape, m.prequant, 0, 0,
                                           true, m.sources.empty() ? nullptr : &sources);
  std::vector<flatbuffers::Offset<schema::Tensor>> tensors{tensor};
  std::vector<schema::Weight> unused;
  auto weight = schema::CreateWeight(fb, 0, schema::DType::F32, m.weight_bytes, 0, m.tier, m.format, m.group);
  std::vector<flatbuffers::Offset<schema::Weight>> weights{weight};
  auto block = schema::CreateBlockDirect(fb, "b", m.kind, 0, "b.", 0, schema::Tier::Gpu, &weights, 1024, 0, -1, -1, -1,
                                         -1, m.block_kind);
  std::vector<flatbuffers::Offset<schema::Block>> blocks{block};
  auto buffer = schema::CreateBufferDirect(fb, "b.weights", schema::BufferKind::ResidentWeights,
                                           schema::Pool::DeviceArena, 0, 0, 1024, 0, 0);
  std::vector<flatbuffers::Offset<schema::Buffer>> buffers{buffer};
  auto arena = schema::CreateArena(fb, schema::Pool::DeviceArena, 0, arena_size);
  std::vector<flatbuffers::Offset<schema::Arena>> arenas{arena};
  auto step = schema::CreateStepDirect(fb, 0);
  std::vector<flatbuffers::Offset<schema::Step>> steps{step};
  auto config = m.rope_table ? schema_testing::TestModelConfig(fb, m.rope, m.head_dim)
                             : schema::CreateModelConfigDirect(fb, "llama");
  auto run_shape = schema::CreateRunShape(fb, 1, 16);
  auto plan = schema::CreatePlanDirect(fb, version, "test", "sequential", "m", "d", config, fp,
                                       schema::DType::F32, run_shape, nullptr, 0, &tensors, &blocks, &buffers,
                                       &arenas, &steps, nullptr, 0, 0, checksum);
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
  EXPECT_NE(r.error().message.find("reads version " + std::to_string(kPlanVersion)), std::string::npos)
      << r.error().message;
}

// Version 7 (tensor parallelism): a version-6 reader would load a shard's sliced weights as whole tensors.
// Version 6 (routed experts): a version-5 reader would stream nothing for a routed expert's weights. Version 5
// (pre-quantized checkpoints): a version-4 reader would read a pre-quantized weight's first source
// tensor as the weight. Version 4 (weight formats): a version-3 reader would read quantized weights as plain ones.
// Older plans are refused with "plan again", never read with a guessed field.
TEST(PlanIoTest, RefusesVersion2To6PlansWithPlanAgain) {
  ASSERT_EQ(kPlanVersion, 7u);
  for (uint32_t version : {2u, 3u, 4u, 5u, 6u}) {
    ModelFields old;
    old.rope_table = version >= 3;
    auto buf = MinimalPlan(version, 1024, 0, nullptr, old);
    auto r = VerifyPlan(buf.data(), buf.size(), "old.bplan");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kIncompatible);
    EXPECT_NE(r.error().message.find("old.bplan: made by an older planner (plan version " + std::to_string(version) +
                                     "; this build reads version 7): plan again"),
              std::string::npos)
        << r.error().message;
  }
}

// (v5) A pre-quantized tensor: its sources' count and dtypes fit its kind, its location is its first source's, and
// its weight is stored in the kind's format.
TEST(PlanIoTest, ChecksPreQuantizedTensors) {
  ModelFields m;
  m.format = schema::WeightFormat::Int4;
  m.group = 16;
  m.weight_bytes = 16 * (8 + 4);
  m.src_dtype = schema::DType::I32;
  m.prequant = schema::PreQuantKind::Gptq;
  m.sources = {{"w.qweight", schema::DType::I32}, {"w.qzeros", schema::DType::I32}, {"w.scales", schema::DType::F16}};
  auto ok = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  auto plan = VerifyPlan(ok.data(), ok.size(), "q.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ((*plan)->tensors()->Get(0)->sources()->size(), 3u);

  auto expect_corrupt = [](const ModelFields& bad, const std::string& what) {
    auto buf = MinimalPlan(kPlanVersion, 1024, 0, nullptr, bad);
    auto r = VerifyPlan(buf.data(), buf.size(), "q.bplan");
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
    EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
  };
  ModelFields bad = m;
  bad.sources.pop_back();
  expect_corrupt(bad, "has 2 source tensors, expected 3 or 4");
  bad = m;
  bad.sources[2].second = schema::DType::I8;
  expect_corrupt(bad, "sources[2] (w.scales) has dtype I8");
  bad = m;
  bad.moved_source = true;
  expect_corrupt(bad, "its location is not that of its first source tensor");
  bad = m;
  bad.format = schema::WeightFormat::Int8;
  bad.weight_bytes = 16 * (16 + 4);
  expect_corrupt(bad, "a GPTQ pre-quantized tensor stored as int8");
  bad = m;
  bad.format = schema::WeightFormat::Plain;
  bad.group = 0;
  bad.weight_bytes = 1024;
  expect_corrupt(bad, "a pre-quantized tensor used as a plain weight");
  bad = m;
  bad.prequant = schema::PreQuantKind::None;
  expect_corrupt(bad, "has source tensors but is not pre-quantized");
  bad = m;
  bad.prequant = schema::PreQuantKind::Fp8;
  bad.format = schema::WeightFormat::Fp8E4M3;
  bad.weight_bytes = 16 * (16 + 4);
  expect_corrupt(bad, "has 3 source tensors, expected 2");
}

// A row's bytes from a damaged shape: dimensions whose product overflows, or negative ones, give 0 (no row), never
// an overflowed product.
TEST(PlanIoTest, WeightRowBytesOfDamagedShapes) {
  ModelFields m;
  auto ok = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  auto plan = VerifyPlan(ok.data(), ok.size(), "p.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(WeightRowBytes(*(*plan)->blocks()->Get(0)->weights()->Get(0), *(*plan)->tensors()->Get(0)), 64u);
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{
           {47416438947840, 7306087009443905571}, {16, int64_t{1} << 62, 8}, {16, -16}, {0, 16}}) {
    m.shape = shape;
    auto buf = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
    const schema::Plan* p = schema::GetPlan(buf.data());
    EXPECT_EQ(WeightRowBytes(*p->blocks()->Get(0)->weights()->Get(0), *p->tensors()->Get(0)), 0u) << shape[1];
  }
}

// A quantized weight's size is rows x RowBytes of its format; a group that does not divide its columns, or another
// size, is damage.
TEST(PlanIoTest, ChecksQuantizedWeightSizes) {
  ModelFields m;
  m.format = schema::WeightFormat::Fp8E4M3;
  m.group = 16;
  m.weight_bytes = 16 * (16 + 4);  // 16 rows of 16 fp8 values and one float32 scale
  auto ok = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  auto plan = VerifyPlan(ok.data(), ok.size(), "q.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(WeightRowBytes(*(*plan)->blocks()->Get(0)->weights()->Get(0), *(*plan)->tensors()->Get(0)), 20u);

  m.weight_bytes = 1024;
  auto wrong_size = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  auto r = VerifyPlan(wrong_size.data(), wrong_size.size(), "q.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("size_bytes 1024, expected 320"), std::string::npos) << r.error().message;

  m.format = schema::WeightFormat::Int4;
  m.group = 5;
  auto bad_group = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  r = VerifyPlan(bad_group.data(), bad_group.size(), "q.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("int4 weight with group size 5 does not fit"), std::string::npos)
      << r.error().message;

  // Quantized at load from a floating-point tensor, into GPU or CPU memory: never from an integer tensor, never on
  // disk.
  m.group = 16;
  m.weight_bytes = 16 * (8 + 4);
  m.src_dtype = schema::DType::I32;
  auto from_int = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  r = VerifyPlan(from_int.data(), from_int.size(), "q.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("is quantized from a I32 tensor"), std::string::npos) << r.error().message;
  m.src_dtype = schema::DType::BF16;
  m.tier = schema::Tier::Disk;
  auto on_disk = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  r = VerifyPlan(on_disk.data(), on_disk.size(), "q.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(r.error().message.find("is quantized but rests on disk"), std::string::npos) << r.error().message;
}

TEST(PlanIoTest, TypedRopeAndBlockKindReadBack) {
  ModelFields m;
  m.head_dim = 16;
  m.rope.type = arch::RopeType::kLongrope;
  m.rope.theta = 250000.0;
  m.rope.rotary_dim = 12;
  m.rope.original_max_position_embeddings = 4096;
  m.rope.factor = 32.0;
  m.rope.attention_factor = 1.19;
  m.rope.short_factor = {1, 1.5f, 2, 2.5f, 3, 3.5f};
  m.rope.long_factor = {4, 4, 4, 4, 4, 8};
  m.block_kind = schema::BlockKind::LmHead;
  m.kind = "lm_head";
  auto buf = MinimalPlan(kPlanVersion, 1024, 0, nullptr, m);
  auto plan = VerifyPlan(buf.data(), buf.size(), "p.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  EXPECT_EQ(RopeParamsOf(*(*plan)->config()->rope()), m.rope);
  EXPECT_EQ(BlockKindOf(*(*plan)->blocks()->Get(0)), arch::BlockKind::kLmHead);
}

TEST(PlanIoTest, RefusesDamagedRopeAndBlockKind) {
  struct Case {
    const char* what;
    ModelFields m;
    const char* needle;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, auto edit, const char* needle) {
    ModelFields m;
    m.head_dim = 8;
    m.rope.rotary_dim = 8;
    edit(m);
    cases.push_back({what, m, needle});
  };
  add("no rope", [](ModelFields& m) { m.rope_table = false; }, "plan lacks config.rope");
  add("unknown rope type", [](ModelFields& m) { m.rope.type = static_cast<arch::RopeType>(9); },
      "config.rope.type 9 is unknown");
  add("theta 0", [](ModelFields& m) { m.rope.theta = 0; }, "config.rope.theta 0 must be finite and positive");
  add("negative factor", [](ModelFields& m) { m.rope.type = arch::RopeType::kLinear; m.rope.factor = -2; },
      "config.rope.factor -2");
  add("infinite attention factor", [](ModelFields& m) { m.rope.attention_factor = 1.0 / 0.0; },
      "config.rope.attention_factor inf");
  add("rotary dims past the head", [](ModelFields& m) { m.rope.rotary_dim = 10; }, "exceeds head_dim 8");
  add("longrope factors", [](ModelFields& m) {
        m.rope.type = arch::RopeType::kLongrope;
        m.rope.original_max_position_embeddings = 16;
        m.rope.short_factor = {1, 1, 1, 1};
        m.rope.long_factor = {1, 1};
      },
      "config.rope.long_factor has 2 entries, expected rotary_dim / 2 = 4");
  add("factors of another type", [](ModelFields& m) { m.rope.short_factor = {1, 1, 1, 1}; }, "longrope only");
  add("llama3 bands", [](ModelFields& m) {
        m.rope.type = arch::RopeType::kLlama3;
        m.rope.original_max_position_embeddings = 16;
        m.rope.low_freq_factor = m.rope.high_freq_factor = 2;
      },
      "high_freq_factor equals low_freq_factor");
  add("unknown block kind", [](ModelFields& m) { m.block_kind = static_cast<schema::BlockKind>(7); },
      "blocks[0].block_kind 7 is unknown");
  add("kind string disagrees", [](ModelFields& m) { m.block_kind = schema::BlockKind::Embedding; },
      "blocks[0].kind \"decoder_layer\" disagrees with its block_kind embedding");
  for (const Case& c : cases) {
    auto buf = MinimalPlan(kPlanVersion, 1024, 0, nullptr, c.m);
    auto r = VerifyPlan(buf.data(), buf.size(), "p.bplan");
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << c.what;
    EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << c.what << ": " << r.error().message;
  }
}

TEST(PlanIoTest, RefusesAnOlderPlanWithPlanAgain) {
  auto buf = MinimalPlan(1);
  auto r = VerifyPlan(buf.data(), buf.size(), "old.bplan");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIncompatible);
  EXPECT_NE(r.error().message.find("old.bplan: made by an older planner"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("plan again"), std::string::npos) << r.error().message;
}

using schema_testing::StreamedPlan;
using schema_testing::StreamFields;

TEST(PlanIoTest, AcceptsAStreamedPlan) {
  auto buf = StreamedPlan();
  auto plan = VerifyPlan(buf.data(), buf.size(), "s.bplan");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  ASSERT_EQ((*plan)->streams()->size(), 1u);
  EXPECT_EQ((*plan)->streams()->Get(0)->units()->size(), 2u);
  EXPECT_EQ((*plan)->blocks()->Get(0)->weights()->Get(1)->tier(), schema::Tier::Cpu);
}

TEST(PlanIoTest, RefusesDamagedStreamFields) {
  struct Case {
    const char* what;
    StreamFields f;
    const char* needle;
  };
  std::vector<Case> cases;
  auto add = [&](const char* what, auto edit, const char* needle) {
    StreamFields f;
    edit(f);
    cases.push_back({what, f, needle});
  };
  add("block out of range", [](StreamFields& f) { f.block = 7; }, "units[0].block out of range");
  add("weight out of range", [](StreamFields& f) { f.weight = 5; }, "units[0].weight out of range");
  add("a resident weight", [](StreamFields& f) { f.weight = 0; }, "does not match its weight's tier");
  add("source is not the weight's tier", [](StreamFields& f) { f.source = schema::Tier::Disk; },
      "does not match its weight's tier");
  add("rows past the end", [](StreamFields& f) { f.row_end = 17; f.bytes = 17 * 64; }, "outside the weight's 16 rows");
  add("empty row range", [](StreamFields& f) { f.row_end = 0; f.bytes = 0; }, "rows [0, 0)");
  add("bytes", [](StreamFields& f) { f.bytes = 513; }, "units[0].bytes 513, expected 512");
  add("outside the ring", [](StreamFields& f) { f.ring_offset = 768; }, "lies outside its ring");
  add("wait out of range", [](StreamFields& f) { f.wait_unit = 2; }, "waits on a unit out of range");
  add("wait below -1", [](StreamFields& f) { f.wait_unit = -2; }, "waits on a unit out of range");
  add("ring buffer out of range", [](StreamFields& f) { f.ring_buffer = 9; }, "ring_buffer 9 out of range");
  add("ring not in the device's arena", [](StreamFields& f) { f.ring_buffer = 1; }, "not in the arena of device 0");
  add("stream of another device", [](StreamFields& f) { f.device = 1; }, "not in the arena of device 1");
  add("disk ring out of range", [](StreamFields& f) { f.disk_ring_buffer = 3; }, "disk_ring_buffer out of range");
  add("disk ring not pinned", [](StreamFields& f) { f.disk_ring_buffer = 0; }, "disk_ring_buffer is not pinned");
  add("disk unit without a disk ring",
      [](StreamFields& f) { f.source = schema::Tier::Disk; f.weight1_tier = schema::Tier::Disk; },
      "the stream has no disk ring");
  add("repeated device", [](StreamFields& f) { f.second_stream = true; }, "repeats device 0");
  for (const Case& c : cases) {
    auto buf = StreamedPlan(c.f);
    auto r = VerifyPlan(buf.data(), buf.size(), "s.bplan");
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << c.what;
    EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << c.what << ": " << r.error().message;
  }
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

std::vector<uint8_t> SealedPlan() {
  auto buf = MinimalPlan(kPlanVersion, 1024, 0, kPlanChecksumPlaceholder);
  std::vector<uint8_t> bytes(buf.data(), buf.data() + buf.size());
  EXPECT_TRUE(SealPlan(&bytes).ok());
  return bytes;
}

TEST(PlanIoTest, ChecksumCatchesEveryDamagedByte) {
  const std::vector<uint8_t> sealed = SealedPlan();
  ASSERT_TRUE(VerifyPlan(sealed.data(), sealed.size(), "p.bplan").ok());
  // Whatever byte is damaged (the checksum's own included), the plan is refused as corrupt, never accepted with
  // different values.
  for (size_t i = 0; i < sealed.size(); ++i) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}}) {
      std::vector<uint8_t> bad = sealed;
      bad[i] ^= flip;
      auto r = VerifyPlan(bad.data(), bad.size(), "p.bplan");
      if (r.ok()) {
        // Only a flip that hides the checksum field itself (its vtable slot) may leave an otherwise intact plan.
        EXPECT_EQ((*r)->content_sha256(), nullptr) << "byte " << i;
        continue;
      }
      // (A damaged root offset reads another table: no checksum there, and no plan version either.)
      EXPECT_TRUE(r.error().code == ErrorCode::kCorrupt || r.error().code == ErrorCode::kIncompatible)
          << "byte " << i << ": " << r.error().ToString();
      EXPECT_NE(r.error().message.find("p.bplan: "), std::string::npos) << r.error().message;
    }
  }
  std::vector<uint8_t> bad = sealed;
  bad[bad.size() / 2] ^= 0x10;
  auto r = VerifyPlan(bad.data(), bad.size(), "p.bplan");
  if (!r.ok() && r.error().message.find("checksum") == std::string::npos) GTEST_SKIP() << "caught by the verifier";
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("do not match its checksum"), std::string::npos) << r.error().message;
}

TEST(PlanIoTest, SealNeedsThePlaceholder) {
  auto buf = MinimalPlan();
  std::vector<uint8_t> bytes(buf.data(), buf.data() + buf.size());
  EXPECT_EQ(SealPlan(&bytes).error().code, ErrorCode::kInternal);
}

TEST(PlanIoTest, WriteIntoDirectoryOrThroughSymlink) {
  const std::string dir = ::testing::TempDir() + "/plan_io_dir";
  std::remove(dir.c_str());
  ::mkdir(dir.c_str(), 0755);
  const uint8_t data[] = {1, 2, 3};
  Status s = WriteFileBytes(dir, data, sizeof(data));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kIo);
  EXPECT_NE(s.error().message.find("is a directory"), std::string::npos) << s.error().message;
  auto read_dir = ReadFileBytes(dir);
  ASSERT_FALSE(read_dir.ok());
  EXPECT_NE(read_dir.error().message.find(dir + ": is a directory"), std::string::npos) << read_dir.error().message;

  // A symbolic link stays a link; the file it names gets the bytes.
  const std::string target = dir + "/target.bin", link = dir + "/link.bin";
  ASSERT_TRUE(WriteFileBytes(target, data, 1).ok());
  std::remove(link.c_str());
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  ASSERT_TRUE(WriteFileBytes(link, data, sizeof(data)).ok());
  struct stat st;
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  auto back = ReadFileBytes(target);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->size(), sizeof(data));
}

TEST(PlanIoTest, WriteReportsAFullDevice) {
  struct stat st;
  if (::stat("/dev/full", &st) != 0 || !S_ISCHR(st.st_mode)) GTEST_SKIP() << "no /dev/full";
  const uint8_t data[] = {1, 2, 3};
  Status s = WriteFileBytes("/dev/full", data, sizeof(data));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kIo);
  EXPECT_NE(s.error().message.find("/dev/full: write failed"), std::string::npos) << s.error().message;
  ASSERT_EQ(::stat("/dev/full", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode)) << "the device was replaced by a file";
}

TEST(PlanIoTest, DTypeSizes) {
  EXPECT_EQ(DTypeSize(schema::DType::BF16), 2u);
  EXPECT_EQ(DTypeSize(schema::DType::F32), 4u);
  EXPECT_EQ(DTypeSize(schema::DType::F8_E4M3), 1u);
  EXPECT_STREQ(DTypeName(schema::DType::BF16), "BF16");
}

}  // namespace
}  // namespace bigplan
