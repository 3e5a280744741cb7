#include "planner/streaming.h"

#include <gtest/gtest.h>

namespace bigplan {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

StreamWeight W(uint32_t block, uint32_t weight, uint64_t bytes, int64_t rows, Tier source = Tier::kCpu) {
  StreamWeight w;
  w.block = block;
  w.weight = weight;
  w.source = source;
  w.bytes = bytes;
  w.rows = rows;
  w.row_bytes = bytes / rows;
  w.chunkable = rows > 1;
  w.order = weight;
  w.file_bytes = bytes;
  w.file_row_bytes = bytes / rows;
  return w;
}

// Four blocks of three weights (1, 2, 1 MiB) streamed through a ring of two blocks: slots, double buffering.
TEST(Streaming, SlotsDoubleBufferBlocks) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 4; ++b) {
    ws.push_back(W(b, 0, 1 * kMiB, 256));
    ws.push_back(W(b, 1, 2 * kMiB, 512));
    ws.push_back(W(b, 2, 1 * kMiB, 256));
  }
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->layout, "slots");
  EXPECT_EQ(s->slots, 2u);
  ASSERT_EQ(s->units.size(), 12u);
  for (const auto& u : s->units) EXPECT_TRUE(u.whole);
  // Block 2 reuses block 0's slot: its units wait for block 0's release (whole units are released together).
  EXPECT_EQ(s->units[6].ring_offset, 0u);
  EXPECT_EQ(s->units[6].wait_unit / 3, 0);
  EXPECT_EQ(s->units[9].wait_unit / 3, 1);
  // Block 0 of the next pass waits for block 2 of this one.
  EXPECT_EQ(s->units[0].wait_unit / 3, 2);
  EXPECT_EQ(s->streamed_bytes(), 16 * kMiB);
  EXPECT_TRUE(CheckDeviceStream(*s).ok());
}

TEST(Streaming, DeeperRingHasMoreSlots) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 6; ++b) ws.push_back(W(b, 0, 4 * kMiB, 16));
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 13 * kMiB});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->slots, 3u);
  EXPECT_EQ(s->ring_bytes, 12 * kMiB);
  EXPECT_EQ(s->units[3].wait_unit, 0);
}

// A layer larger than the ring: its big weights stream in row chunks; small ones are whole units first.
TEST(Streaming, ChunksForLayersLargerThanTheRing) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 2; ++b) {
    ws.push_back(W(b, 0, 40 * kMiB, 4096));  // chunked
    ws.push_back(W(b, 1, 4096, 1));          // a norm: whole
    ws.push_back(W(b, 2, 24 * kMiB, 1024));  // chunked
  }
  ws[0].order = 1;  // consumed after weight 2
  ws[2].order = 0;
  ws[3].order = 1;
  ws[5].order = 0;
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 16 * kMiB, .chunk_bytes = 4 * kMiB});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->layout, "chunks");
  EXPECT_LE(s->chunk_bytes, 4 * kMiB);
  EXPECT_EQ(s->chunk_bytes, 409 * 10240u);  // weight 0: 409 rows of 10 KiB
  // Block 0: the norm, then weight 2 in 7 chunks of 170 rows, then weight 0 in chunks.
  ASSERT_GE(s->units.size(), 17u);
  EXPECT_TRUE(s->units[0].whole);
  EXPECT_EQ(s->units[0].weight, 1u);
  EXPECT_FALSE(s->units[1].whole);
  EXPECT_EQ(s->units[1].weight, 2u);
  EXPECT_EQ(s->units[1].row_begin, 0);
  EXPECT_EQ(s->units[1].row_end, 170);  // 4 MiB / 24 KiB rows
  EXPECT_EQ(s->units[7].weight, 2u);
  EXPECT_EQ(s->units[8].weight, 0u);
  uint64_t total = 0;
  for (const auto& u : s->units) total += u.bytes;
  EXPECT_EQ(total, 2 * (64 * kMiB + 4096));
  EXPECT_TRUE(CheckDeviceStream(*s).ok());
}

TEST(Streaming, RingTooSmallForAWholeUnitIsInfeasible) {
  std::vector<StreamWeight> ws{W(0, 0, 8 * kMiB, 1), W(1, 0, 8 * kMiB, 1)};  // 1-d: cannot be chunked
  auto s = BuildDeviceStream(3, ws, {.ring_bytes = 4 * kMiB});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInfeasible);
  EXPECT_NE(s.error().message.find("cuda:3"), std::string::npos) << s.error().message;
}

TEST(Streaming, WholeUnitsOfABlockMustFitWithAChunk) {
  // Two blocks' whole units (2 x 3 MiB) plus two 2 MiB chunks do not fit a 4 MiB ring.
  std::vector<StreamWeight> ws{W(0, 0, 3 * kMiB, 1), W(0, 1, 8 * kMiB, 64)};
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 4 * kMiB, .chunk_bytes = 2 * kMiB});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kInfeasible);
}

TEST(Streaming, CheckerCatchesAMissingWait) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 4; ++b) ws.push_back(W(b, 0, 2 * kMiB, 8));
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 4 * kMiB});
  ASSERT_TRUE(s.ok());
  DeviceStreamPlan broken = *s;
  broken.units[2].wait_unit = -1;  // block 2 overwrites block 0 while block 0 may still be in use
  Status st = CheckDeviceStream(broken);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("still in use"), std::string::npos) << st.error().message;
  broken = *s;
  broken.units[1].ring_offset = 3 * kMiB;  // past the end
  EXPECT_FALSE(CheckDeviceStream(broken).ok());
}

TEST(Streaming, DiskUnitsGetSlotsAndWaits) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 6; ++b) ws.push_back(W(b, 0, 1 * kMiB + 100, 1, b % 2 ? Tier::kDisk : Tier::kCpu));
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB, .disk_slots = 2});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  uint64_t slot = 0;
  for (const auto& u : s->units) {
    if (u.source != Tier::kDisk) continue;
    EXPECT_EQ(u.disk_slot_offset % kDiskSlotAlignment, 0u);
    EXPECT_GE(u.disk_slot_bytes, u.bytes + kDiskSlotAlignment);
    slot = u.disk_slot_bytes;
  }
  EXPECT_EQ(s->disk_ring_bytes, 2 * slot);
  // Units 1, 3, 5 are on disk; 5 reuses 1's slot.
  EXPECT_EQ(s->units[5].disk_slot_offset, s->units[1].disk_slot_offset);
  EXPECT_EQ(s->units[5].disk_wait_unit, 1);
  EXPECT_EQ(s->units[1].disk_wait_unit, 5);  // next pass: after this pass's unit 5
  DeviceStreamPlan broken = *s;
  broken.units[5].disk_wait_unit = -1;
  EXPECT_FALSE(CheckDeviceStream(broken).ok());
}


// Host rows in the slots layout: a weight with host rows becomes two chunks (GPU rows, then host rows), after the
// block's whole units, and the slot grows by the extra alignment only.
TEST(Streaming, HostRowsSplitAWeightInSlots) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 4; ++b) {
    ws.push_back(W(b, 0, 1 * kMiB, 256));
    ws.push_back(W(b, 1, 2 * kMiB, 512));
    ws.back().host_rows = 192;
    ws.push_back(W(b, 2, 1 * kMiB, 256));
  }
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->layout, "slots");
  EXPECT_EQ(s->slots, 2u);
  ASSERT_EQ(s->units.size(), 16u);
  // Per block: weights 0 and 2 whole, then weight 1's rows [0, 320) and its host rows [320, 512).
  for (uint32_t b = 0; b < 4; ++b) {
    const StreamUnitPlan* u = &s->units[4 * b];
    EXPECT_TRUE(u[0].whole && u[1].whole);
    EXPECT_EQ(u[0].weight, 0u);
    EXPECT_EQ(u[1].weight, 2u);
    EXPECT_FALSE(u[2].whole || u[2].host);
    EXPECT_EQ(u[2].row_begin, 0);
    EXPECT_EQ(u[2].row_end, 320);
    EXPECT_TRUE(!u[3].whole && u[3].host);
    EXPECT_EQ(u[3].row_begin, 320);
    EXPECT_EQ(u[3].row_end, 512);
    EXPECT_EQ(u[2].bytes + u[3].bytes, 2 * kMiB);
  }
  EXPECT_TRUE(CheckDeviceStream(*s).ok());
}

// Host rows in the chunks layout: the GPU's rows and the host's are chunked separately, so no chunk straddles them.
TEST(Streaming, HostRowsSplitChunksAtTheBoundary) {
  std::vector<StreamWeight> ws;
  for (uint32_t b = 0; b < 3; ++b) {
    ws.push_back(W(b, 0, 8 * kMiB, 1024));
    ws.back().host_rows = 448;
  }
  auto s = BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB, .chunk_bytes = 2 * kMiB});
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->layout, "chunks");
  // 576 GPU rows in chunks of 256 (256, 256, 64) and 448 host rows (256, 192) per block.
  ASSERT_EQ(s->units.size(), 15u);
  const int64_t begins[] = {0, 256, 512, 576, 832};
  const bool host[] = {false, false, false, true, true};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(s->units[i].row_begin, begins[i]) << i;
    EXPECT_EQ(s->units[i].host, host[i]) << i;
  }
  EXPECT_EQ(s->units[4].row_end, 1024);
  EXPECT_TRUE(CheckDeviceStream(*s).ok());
}

TEST(Streaming, HostRowsOnlyForCpuMatrices) {
  std::vector<StreamWeight> ws{W(0, 0, 1 * kMiB, 256, Tier::kDisk)};
  ws[0].host_rows = 64;
  EXPECT_FALSE(BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB}).ok());
  ws[0].source = Tier::kCpu;
  ws[0].host_rows = 256;  // every row: the GPU would have none
  EXPECT_FALSE(BuildDeviceStream(0, ws, {.ring_bytes = 8 * kMiB}).ok());
}

}  // namespace
}  // namespace bigplan
