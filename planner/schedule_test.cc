#include "planner/schedule.h"

#include <gtest/gtest.h>

#include <random>

#include "planner/accounting.h"
#include "planner/overlap_check.h"

namespace bigplan {
namespace {

constexpr uint64_t kKiB = 1024;

ScheduleBlock B(const std::string& name, uint64_t resident, uint64_t host, uint64_t kv = 0, int32_t device = 0) {
  return ScheduleBlock{name, device, resident, host, kv};
}

StreamWeight W(uint32_t block, uint32_t weight, uint64_t bytes, Tier source = Tier::kCpu) {
  StreamWeight w;
  w.block = block;
  w.weight = weight;
  w.source = source;
  w.bytes = bytes;
  w.rows = 4;
  w.row_bytes = bytes / 4;
  w.chunkable = true;
  w.file_bytes = bytes;
  w.file_row_bytes = bytes / 4;
  return w;
}

// emb and L0 resident; L1 half resident (2 KiB resident, 2 KiB on the cpu tier); L2, head on the cpu tier; L3 on
// disk. Streamed through one ring on cuda:0.
struct Six {
  std::vector<ScheduleBlock> blocks{B("emb", 1 * kKiB, 0),          B("L0", 4 * kKiB, 0, 512),
                                    B("L1", 2 * kKiB, 2 * kKiB, 512), B("L2", 0, 4 * kKiB, 512),
                                    B("L3", 0, 0, 512),             B("head", 0, 1 * kKiB)};
  std::vector<StreamWeight> weights{W(2, 1, 2 * kKiB), W(3, 0, 2 * kKiB), W(3, 1, 2 * kKiB),
                                    W(4, 0, 2 * kKiB, Tier::kDisk), W(4, 1, 2 * kKiB, Tier::kDisk), W(5, 0, 1 * kKiB)};
};

TEST(ScheduleTest, BuffersLiveTheWholePassAndRingsComeLast) {
  Six six;
  auto stream = BuildDeviceStream(0, six.weights, {.ring_bytes = 8 * kKiB});
  ASSERT_TRUE(stream.ok()) << stream.error().ToString();
  ScheduleOptions opt;
  opt.activation_bytes[0] = 256;
  auto s = BuildSchedule(six.blocks, {*stream}, opt);
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  // Per block: home, host, kv; then activations; then the ring and the disk ring.
  std::vector<std::string> names;
  for (const ScheduledBuffer& b : s->buffers) names.push_back(b.request.name);
  EXPECT_EQ(names, (std::vector<std::string>{"emb.weights", "L0.weights", "L0.kv", "L1.weights", "L1.host", "L1.kv",
                                             "L2.host", "L2.kv", "L3.kv", "head.host", "activations.cuda:0",
                                             "ring.cuda:0", "disk_ring.cuda:0"}));
  for (const ScheduledBuffer& b : s->buffers) {
    EXPECT_EQ(b.request.first_step, 0u) << b.request.name;
    EXPECT_EQ(b.request.last_step, 5u) << b.request.name;
  }
  EXPECT_EQ(s->buffers[4].kind, schema::BufferKind::HostWeights);
  EXPECT_EQ(s->buffers[4].request.pool.pool, schema::Pool::PinnedHost);
  EXPECT_EQ(s->buffers[11].kind, schema::BufferKind::Staging);
  EXPECT_EQ(s->buffers[11].request.size, stream->ring_bytes);
  EXPECT_EQ(s->buffers[12].kind, schema::BufferKind::DiskStaging);
  EXPECT_EQ(s->buffers[12].request.alignment, kDiskSlotAlignment);
  EXPECT_EQ(s->ring_buffer.at(0), 11);
  EXPECT_EQ(s->disk_ring_buffer.at(0), 12);
  // Blocks know their buffers.
  EXPECT_EQ(s->block_buffers[2].home, 3);
  EXPECT_EQ(s->block_buffers[2].host, 4);
  EXPECT_EQ(s->block_buffers[2].kv, 5);
  EXPECT_EQ(s->block_buffers[4].home, -1);
  EXPECT_EQ(s->block_buffers[4].host, -1);
  // Nothing is freed before the last step, which frees everything.
  for (size_t i = 0; i + 1 < s->steps.size(); ++i) EXPECT_TRUE(s->steps[i].frees.empty());
  EXPECT_EQ(s->steps[5].frees.size(), s->buffers.size());
  // Everything lives at once, so every pool's arena is the sum of its buffers (aligned).
  uint64_t device = 0, pinned = 0;
  for (const ScheduledBuffer& b : s->buffers)
    (b.request.pool.pool == schema::Pool::PinnedHost ? pinned : device) += AlignUp(b.request.size, b.request.alignment);
  EXPECT_EQ(s->memory.ArenaSizeOf({schema::Pool::DeviceArena, 0}), device);
  EXPECT_LE(s->memory.ArenaSizeOf({schema::Pool::PinnedHost, -1}), pinned);
  ASSERT_EQ(s->streams.size(), 1u);
  EXPECT_EQ(s->streams[0].units.size(), 6u);
}

TEST(ScheduleTest, StreamsAreSortedByDeviceAndEmptyOnesGetNoRing) {
  std::vector<ScheduleBlock> blocks{B("a", 0, kKiB, 0, 1), B("b", 0, kKiB, 0, 0), B("c", kKiB, 0, 0, 2)};
  auto s1 = BuildDeviceStream(1, {W(0, 0, kKiB)}, {.ring_bytes = 2 * kKiB});
  auto s0 = BuildDeviceStream(0, {W(1, 0, kKiB)}, {.ring_bytes = 2 * kKiB});
  auto s2 = BuildDeviceStream(2, {}, {.ring_bytes = 2 * kKiB});
  ASSERT_TRUE(s1.ok() && s0.ok() && s2.ok());
  auto s = BuildSchedule(blocks, {*s1, *s0, *s2}, {});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  ASSERT_EQ(s->streams.size(), 3u);
  EXPECT_EQ(s->streams[0].device, 0);
  EXPECT_EQ(s->streams[1].device, 1);
  EXPECT_EQ(s->ring_buffer.size(), 2u);
  EXPECT_FALSE(s->ring_buffer.count(2));
  EXPECT_TRUE(s->disk_ring_buffer.empty());
  EXPECT_EQ(s->buffers[s->ring_buffer.at(1)].request.pool.device, 1);
}

TEST(ScheduleTest, RejectsBadInput) {
  EXPECT_FALSE(BuildSchedule({}, {}, {}).ok());
  ScheduleOptions opt;
  opt.memory_algorithm = "nope";
  EXPECT_FALSE(BuildSchedule(Six().blocks, {}, opt).ok());
}

// Random placements: the memory plan passes the independent checker, and every stream passes CheckDeviceStream.
TEST(ScheduleTest, RandomSchedulesAreSafe) {
  std::mt19937_64 rng(99);
  for (int iter = 0; iter < 200; ++iter) {
    std::uniform_int_distribution<int> nblocks(1, 30), tier(0, 2), dev(-1, 1);
    std::uniform_int_distribution<uint64_t> size(1, 5000);
    std::vector<ScheduleBlock> blocks;
    std::map<int32_t, std::vector<StreamWeight>> weights;
    const int n = nblocks(rng);
    for (int i = 0; i < n; ++i) {
      ScheduleBlock b = B("b" + std::to_string(i), 0, 0, size(rng) / 2, dev(rng));
      for (uint32_t w = 0; w < 3; ++w) {
        const uint64_t bytes = size(rng) * 4;
        const int t = tier(rng);
        if (t == 0) b.resident_bytes += AlignUp(bytes);
        if (t == 1) b.host_bytes += AlignUp(bytes);
        if (t != 0 && (b.device >= 0 || t == 2))
          weights[b.device].push_back(W(i, w, bytes, t == 1 ? Tier::kCpu : Tier::kDisk));
      }
      blocks.push_back(b);
    }
    std::vector<DeviceStreamPlan> streams;
    for (const auto& [d, ws] : weights) {
      StreamOptions so;
      so.ring_bytes = (iter % 2 ? 2 : 3) * LargestBlockStream(ws);
      if (d < 0) so.disk_slots = 2;
      auto st = BuildDeviceStream(d, ws, so);
      ASSERT_TRUE(st.ok()) << st.error().ToString();
      EXPECT_TRUE(CheckDeviceStream(*st).ok());
      streams.push_back(*st);
    }
    ScheduleOptions opt;
    opt.activation_bytes = {{-1, 300}, {0, 700}, {1, 256}};
    opt.memory_algorithm = iter % 3 == 0 ? "linear" : "greedy_by_size";
    auto s = BuildSchedule(blocks, streams, opt);
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    std::vector<CheckedBuffer> cb;
    for (const auto& b : s->buffers)
      cb.push_back({b.request.name, b.request.pool.pool, b.request.pool.device, b.offset, b.request.size,
                    b.request.first_step, b.request.last_step});
    std::vector<CheckedArena> ca;
    for (const auto& a : s->memory.arenas) ca.push_back({a.pool.pool, a.pool.device, a.size});
    ASSERT_TRUE(CheckNoOverlaps(cb, ca).ok()) << "iteration " << iter;
    for (const auto& [d, ring] : s->ring_buffer) {
      const DeviceStreamPlan* st = nullptr;
      for (const auto& x : s->streams)
        if (x.device == d) st = &x;
      ASSERT_NE(st, nullptr);
      EXPECT_EQ(s->buffers[ring].request.size, st->ring_bytes);
      for (const StreamUnitPlan& u : st->units) EXPECT_LE(u.ring_offset + u.bytes, st->ring_bytes);
    }
  }
}

}  // namespace
}  // namespace bigplan
