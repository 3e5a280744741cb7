#include "executor/disk_reads.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <numeric>

namespace bigplan::executor_internal {
namespace {

constexpr uint64_t kBase = 0x7f0000000000ull;  // an aligned staging address

StagingRead Direct(uint32_t shard, uint64_t off, uint64_t bytes, uint64_t staging, uint64_t needed) {
  return {shard, off, bytes, staging, true, needed};
}
StagingRead Bounce(uint32_t shard, uint64_t off, uint64_t bytes, uint64_t staging) {
  return {shard, off, bytes, staging, false, 0};
}

void ExpectReads(const std::vector<StagingRead>& got, const std::vector<StagingRead>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("read " + std::to_string(i));
    EXPECT_EQ(got[i].shard, want[i].shard);
    EXPECT_EQ(got[i].file_offset, want[i].file_offset);
    EXPECT_EQ(got[i].bytes, want[i].bytes);
    EXPECT_EQ(got[i].staging_offset, want[i].staging_offset);
    EXPECT_EQ(got[i].direct, want[i].direct);
    if (want[i].direct) {
      EXPECT_EQ(got[i].needed, want[i].needed);
    }
  }
}

// Carries out the plan on in-memory shards (byte i of shard s is (i * 7 + s * 13) & 0xff) and checks that every
// tensor lands at its offset_in_block, that reads stay inside the staging buffer, and the alignment rules.
void Simulate(const BlockReadPlan& plan, const std::vector<TensorSpan>& tensors, uint64_t address,
              uint64_t capacity) {
  ASSERT_TRUE(plan.fits) << plan.why;
  auto byte = [](uint32_t shard, uint64_t i) { return static_cast<uint8_t>((i * 7 + shard * 13) & 0xff); };
  std::vector<int> staging(capacity, -1);
  for (const StagingRead& r : plan.reads) {
    ASSERT_LE(r.staging_offset + r.bytes, capacity);
    if (r.direct) {
      EXPECT_EQ(r.file_offset % kDirectAlignment, 0u);
      EXPECT_EQ(r.bytes % kDirectAlignment, 0u);
      EXPECT_EQ((address + r.staging_offset) % kDirectAlignment, 0u);
    }
    for (uint64_t i = 0; i < r.bytes; ++i) staging[r.staging_offset + i] = byte(r.shard, r.file_offset + i);
  }
  uint64_t block_size = 0;
  for (const TensorSpan& t : tensors) block_size = std::max(block_size, t.block_offset + t.bytes);
  std::vector<int> block(block_size, -1);
  for (const StagingCopy& c : plan.copies) {
    ASSERT_LE(c.staging_offset + c.bytes, capacity);
    ASSERT_LE(c.block_offset + c.bytes, block_size);
    for (uint64_t i = 0; i < c.bytes; ++i) block[c.block_offset + i] = staging[c.staging_offset + i];
  }
  for (const TensorSpan& t : tensors) {
    for (uint64_t i = 0; i < t.bytes; ++i) {
      ASSERT_EQ(block[t.block_offset + i], byte(t.shard, t.file_offset + i))
          << "tensor at shard " << t.shard << " offset " << t.file_offset << ", byte " << i;
    }
  }
}

TEST(PlanBlockReads, ContiguousSupersetFits) {
  const std::vector<TensorSpan> t = {{0, 1000, 3000, 0}, {0, 4000, 5000, 3072}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 16384);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "superset");
  ExpectReads(p.reads, {Direct(0, 0, 12288, 0, 9000)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{1000, 0, 3000}, {4000, 3072, 5000}}));
  EXPECT_EQ(p.direct_bytes, 12288u);
  EXPECT_EQ(p.bounce_bytes, 0u);
  Simulate(p, t, kBase, 16384);
}

TEST(PlanBlockReads, ContiguousExactBufferUsesInteriorLayout) {
  // The buffer holds exactly the tensors: the aligned superset [0, 12288) does not fit; the interior page is
  // read directly, the unaligned head and tail through the bounce buffer into the bytes after it.
  const std::vector<TensorSpan> t = {{0, 1000, 3000, 0}, {0, 4000, 5000, 3072}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 8192);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "interior");
  ExpectReads(p.reads, {Direct(0, 4096, 4096, 0, 4096), Bounce(0, 1000, 3096, 4096), Bounce(0, 8192, 808, 7192)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{4096, 0, 3000}, {7096, 3072, 96}, {0, 3168, 4096}, {7192, 7264, 808}}));
  EXPECT_EQ(p.direct_bytes, 4096u);
  EXPECT_EQ(p.bounce_bytes, 3096u + 808u);
  Simulate(p, t, kBase, 8192);
}

TEST(PlanBlockReads, UnalignedStagingAddressGivesUpAPage) {
  // Staging 256 bytes past an aligned address: its first aligned byte is at 3840, so only one of the two aligned
  // file pages fits straight in; the other goes through the bounce buffer around it.
  const std::vector<TensorSpan> t = {{0, 0, 8192, 0}};
  const BlockReadPlan p = PlanBlockReads(t, kBase + 256, 8192);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "interior");
  ExpectReads(p.reads, {Direct(0, 0, 4096, 3840, 4096), Bounce(0, 4096, 3840, 0), Bounce(0, 7936, 256, 7936)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{3840, 0, 4096}, {0, 4096, 3840}, {7936, 7936, 256}}));
  Simulate(p, t, kBase + 256, 8192);
}

TEST(PlanBlockReads, UnalignedStartSupersetWithRoom) {
  // Staging at address % 4096 == 1024 with room to spare: the superset starts at the first aligned byte (3072).
  const std::vector<TensorSpan> t = {{0, 5000, 2000, 0}};
  const BlockReadPlan p = PlanBlockReads(t, kBase + 1024, 8192);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "superset");
  ExpectReads(p.reads, {Direct(0, 4096, 4096, 3072, 2904)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{3072 + 904, 0, 2000}}));
  Simulate(p, t, kBase + 1024, 8192);
}

TEST(PlanBlockReads, SmallGapIsMergedWhenItFits) {
  const std::vector<TensorSpan> t = {{0, 0, 4096, 0}, {0, 4196, 4096, 4096}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 16384);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "superset");
  ExpectReads(p.reads, {Direct(0, 0, 12288, 0, 8292)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{0, 0, 4096}, {4196, 4096, 4096}}));
  Simulate(p, t, kBase, 16384);
}

TEST(PlanBlockReads, GapIsSplitWhenMergingDoesNotFit) {
  // Merged, the gap's 100 bytes would not fit an exact buffer: the runs are read separately, and the second
  // (no whole aligned page inside) through the bounce buffer.
  const std::vector<TensorSpan> t = {{0, 0, 4096, 0}, {0, 4196, 4096, 4096}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 8192);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "interior");
  ExpectReads(p.reads, {Direct(0, 0, 4096, 0, 4096), Bounce(0, 4196, 4096, 4096)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{0, 0, 8192}}));  // coalesced: contiguous on both sides
  Simulate(p, t, kBase, 8192);
}

TEST(PlanBlockReads, LargeGapSplitsRuns) {
  // 2 MiB apart (> merge_gap): two runs, each its own aligned superset.
  const std::vector<TensorSpan> t = {{0, 100, 200, 0}, {0, (2u << 20) + 100, 200, 256}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 8192);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "superset");
  ExpectReads(p.reads, {Direct(0, 0, 4096, 0, 300), Direct(0, 2u << 20, 4096, 4096, 300)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{100, 0, 200}, {4196, 256, 200}}));
  Simulate(p, t, kBase, 8192);
}

TEST(PlanBlockReads, MultipleShards) {
  // Listed out of order; grouped by shard, then by offset.
  const std::vector<TensorSpan> t = {{1, 100, 200, 256}, {0, 50, 100, 0}};
  {
    const BlockReadPlan p = PlanBlockReads(t, kBase, 8192);
    ASSERT_TRUE(p.fits) << p.why;
    EXPECT_EQ(p.layout, "superset");
    ExpectReads(p.reads, {Direct(0, 0, 4096, 0, 150), Direct(1, 0, 4096, 4096, 300)});
    EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{50, 0, 100}, {4196, 256, 200}}));
    Simulate(p, t, kBase, 8192);
  }
  {
    // A 512-byte buffer: no page fits; both tensors through the bounce buffer.
    const BlockReadPlan p = PlanBlockReads(t, kBase, 512);
    ASSERT_TRUE(p.fits) << p.why;
    EXPECT_EQ(p.layout, "interior");
    ExpectReads(p.reads, {Bounce(0, 50, 100, 0), Bounce(1, 100, 200, 100)});
    EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{0, 0, 100}, {100, 256, 200}}));
    EXPECT_EQ(p.direct_bytes, 0u);
    Simulate(p, t, kBase, 512);
  }
}

TEST(PlanBlockReads, BlockSplitAcrossShardsUnaligned) {
  // A layer whose tensors straddle two shards, packed without padding in the buffer (sizes multiples of 256).
  const std::vector<TensorSpan> t = {{0, 20480 + 8, 8192, 0}, {0, 28680, 12288, 8192}, {1, 88, 16384, 20480}};
  const uint64_t capacity = 8192 + 12288 + 16384;
  const BlockReadPlan p = PlanBlockReads(t, kBase + 512, capacity);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_EQ(p.layout, "interior");
  EXPECT_GT(p.direct_bytes, capacity / 2);
  Simulate(p, t, kBase + 512, capacity);
}

TEST(PlanBlockReads, DoesNotFit) {
  const BlockReadPlan p = PlanBlockReads({{0, 0, 4096, 0}}, kBase, 4000);
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.why.find("4000-byte staging buffer"), std::string::npos) << p.why;
  EXPECT_TRUE(p.reads.empty());
  EXPECT_TRUE(p.copies.empty());
}

TEST(PlanBlockReads, LargeReadsAreChunked) {
  constexpr uint64_t kMiB = 1ull << 20;
  const std::vector<TensorSpan> t = {{0, 0, 24 * kMiB, 0}, {0, 24 * kMiB, 16 * kMiB, 24 * kMiB}};
  const BlockReadPlan p = PlanBlockReads(t, kBase, 40 * kMiB);
  ASSERT_TRUE(p.fits) << p.why;
  ExpectReads(p.reads, {Direct(0, 0, 16 * kMiB, 0, 16 * kMiB), Direct(0, 16 * kMiB, 16 * kMiB, 16 * kMiB, 16 * kMiB),
                        Direct(0, 32 * kMiB, 8 * kMiB, 32 * kMiB, 8 * kMiB)});
  EXPECT_EQ(p.copies, (std::vector<StagingCopy>{{0, 0, 40 * kMiB}}));
}

TEST(PlanBlockReads, ZeroByteTensorsAreIgnored) {
  const BlockReadPlan p = PlanBlockReads({{0, 123, 0, 0}}, kBase, 0);
  ASSERT_TRUE(p.fits) << p.why;
  EXPECT_TRUE(p.reads.empty());
  EXPECT_TRUE(p.copies.empty());
}

// ---- ShardReader on a real file ----

std::string TempFile(const std::string& name, const std::vector<uint8_t>& bytes) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(dir ? dir : "/tmp") + "/" + name + "." + std::to_string(::getpid());
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  return path;
}

TEST(ShardReader, ReadsAlignedAndUnalignedRanges) {
  std::vector<uint8_t> bytes(3 * 4096 + 123);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 31 + 7);
  const std::string path = TempFile("shard_reader", bytes);
  for (bool try_direct : {true, false}) {
    SCOPED_TRACE(try_direct ? "O_DIRECT if possible" : "plain");
    auto r = ShardReader::Open(path, try_direct);
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    std::printf("%s: direct %d\n", path.c_str(), r->direct());
    if (!try_direct) {
      EXPECT_FALSE(r->direct());
    }
    EXPECT_EQ(r->size(), bytes.size());
    void* raw = nullptr;
    ASSERT_EQ(posix_memalign(&raw, 4096, 4 * 4096), 0);
    uint8_t* buf = static_cast<uint8_t*>(raw);
    // The last page runs past the end of the file: only the bytes up to it are needed.
    Status s = r->ReadAligned(0, 4 * 4096, bytes.size(), buf);
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    EXPECT_EQ(std::memcmp(buf, bytes.data(), bytes.size()), 0);
    s = r->ReadAligned(4096, 4096, 4096, buf);
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    EXPECT_EQ(std::memcmp(buf, bytes.data() + 4096, 4096), 0);
    // Needing more than the file holds is an error naming the file.
    s = r->ReadAligned(0, 4 * 4096, 4 * 4096, buf);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().ToString().find(path), std::string::npos) << s.error().ToString();
    std::free(raw);

    std::vector<uint8_t> out(7000);
    s = r->Read(5000, 7000, out.data());
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    EXPECT_EQ(std::memcmp(out.data(), bytes.data() + 5000, 7000), 0);
    auto b = r->ReadToBounce(4096 * 3 + 5, 118);
    ASSERT_TRUE(b.ok()) << b.error().ToString();
    EXPECT_EQ(std::memcmp(*b, bytes.data() + 4096 * 3 + 5, 118), 0);
    EXPECT_FALSE(r->ReadToBounce(4096 * 3 + 5, 119).ok());
    s = r->Read(bytes.size() - 10, 20, out.data());
    EXPECT_FALSE(s.ok());
  }
  EXPECT_EQ(ShardReader::Open(path + ".missing").error().code, ErrorCode::kNotFound);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace bigplan::executor_internal
