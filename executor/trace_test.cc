// AccountForward and TraceRecorder on synthetic timings: Stats totals and last-pass fields, and the trace JSON.
#include "executor/trace.h"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

namespace bigplan::executor_internal {
namespace {

std::vector<BlockLabel> Blocks() {
  return {{"model.embed_tokens", "embedding", "gpu"}, {"model.layers.0", "decoder_layer", "disk"}};
}

ForwardTimings Pass() {
  ForwardTimings t;
  t.cpu_tier_bytes = 1000;
  t.disk_tier_bytes = 4096;
  t.disk_h2d_bytes = 3000;
  t.disk_direct_blocks = 1;
  t.disk_bounce_blocks = 2;
  t.disk_mmap_blocks = 3;
  t.disk_direct_fallbacks = 1;
  t.disk_read_bytes = 8192;
  t.steps = {{.step = 0, .block = 0, .device = 0, .start_us = 10, .end_us = 30},
             {.step = 1, .block = 1, .device = -1, .start_us = 40, .end_us = 35}};  // negative duration
  CopyTiming copy;
  copy.step = 0;
  copy.block = 1;
  copy.source = "cpu";
  copy.bytes = 1000;
  copy.what = "model.layers.0.mlp.up_proj.weight[0:64]";
  copy.start_us = 5;
  copy.end_us = 25;
  CopyTiming read;
  read.step = 0;
  read.block = 1;
  read.source = "disk_read";
  read.worker = 1;
  read.read = "direct";
  read.bytes = 4096;
  read.start_us = 1;
  read.end_us = 4;
  CopyTiming inline_read = read;
  inline_read.worker = -1;
  inline_read.read = "mmap_fallback";
  inline_read.what = "w";
  t.copies = {copy, read, inline_read};
  return t;
}

TEST(AccountForward, StatsAddUpAndKeepTheLastPass) {
  Stats stats;
  stats.loaded_bytes = 77;
  ForwardTimings t = Pass();
  AccountForward(t, 2, 7, 12.5, 0, Blocks(), &stats, nullptr);
  ForwardTimings second;  // a replayed step: no timings
  AccountForward(second, 2, 1, 0.25, 0, Blocks(), &stats, nullptr);
  AccountForward(t, 4, 3, 9.0, 0, Blocks(), &stats, nullptr);
  EXPECT_EQ(stats.loaded_bytes, 77u);
  EXPECT_EQ(stats.forward_count, 3u);
  EXPECT_EQ(stats.cpu_tier_bytes, 2000u);
  EXPECT_EQ(stats.disk_tier_bytes, 8192u);
  EXPECT_EQ(stats.disk_h2d_bytes, 6000u);
  EXPECT_EQ(stats.disk_direct_blocks, 2u);
  EXPECT_EQ(stats.disk_bounce_blocks, 4u);
  EXPECT_EQ(stats.disk_mmap_blocks, 6u);
  EXPECT_EQ(stats.disk_direct_fallbacks, 2u);
  EXPECT_EQ(stats.disk_read_bytes, 16384u);
  EXPECT_EQ(stats.last_batch, 4u);
  EXPECT_EQ(stats.last_seq, 3u);
  EXPECT_EQ(stats.last_forward_ms, 9.0);
  EXPECT_EQ(stats.last_streamed_bytes, 5096u);
  ASSERT_EQ(stats.last_steps.size(), 2u);
  EXPECT_EQ(stats.last_steps[1].block, 1u);
  ASSERT_EQ(stats.last_copies.size(), 3u);
  EXPECT_EQ(stats.last_copies[0].what, "model.layers.0.mlp.up_proj.weight[0:64]");
  // A pass with no timings empties the last-pass lists.
  AccountForward(second, 1, 1, 0.5, 0, Blocks(), &stats, nullptr);
  EXPECT_TRUE(stats.last_steps.empty());
  EXPECT_TRUE(stats.last_copies.empty());
  EXPECT_EQ(stats.last_streamed_bytes, 0u);
}

TEST(AccountForward, TraceEventsAndJson) {
  Stats stats;
  TraceRecorder trace;
  AccountForward(Pass(), 2, 7, 12.5, 1000.0, Blocks(), &stats, &trace);
  EXPECT_EQ(trace.size(), 5u);  // 2 steps + 3 copies
  const nlohmann::json root = nlohmann::json::parse(trace.ToJson());
  std::map<int, std::string> tracks;  // tid -> name
  std::vector<nlohmann::json> spans;
  for (const auto& e : root["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") tracks[e["tid"].get<int>()] = e["args"]["name"];
    if (e["ph"] == "X") spans.push_back(e);
  }
  // "compute" and "copy" first, then the other tracks sorted.
  EXPECT_EQ(tracks, (std::map<int, std::string>{
                        {1, "compute"}, {2, "copy"}, {3, "disk (inline)"}, {4, "disk worker 1"}}));
  ASSERT_EQ(spans.size(), 5u);
  const auto& embed = spans[0];
  EXPECT_EQ(embed["name"], "model.embed_tokens");
  EXPECT_EQ(embed["tid"], 1);
  EXPECT_DOUBLE_EQ(embed["ts"].get<double>(), 1010.0);
  EXPECT_DOUBLE_EQ(embed["dur"].get<double>(), 20.0);
  EXPECT_EQ(embed["args"]["step"], "0");
  EXPECT_EQ(embed["args"]["forward"], "1");
  EXPECT_EQ(embed["args"]["kind"], "embedding");
  EXPECT_EQ(embed["args"]["tier"], "gpu");
  EXPECT_EQ(embed["args"]["device"], "cuda:0");
  EXPECT_EQ(embed["args"]["tokens"], "2x7");
  const auto& layer = spans[1];
  EXPECT_EQ(layer["name"], "model.layers.0");
  EXPECT_EQ(layer["args"]["device"], "cpu");
  EXPECT_EQ(layer["args"]["tier"], "disk");
  EXPECT_DOUBLE_EQ(layer["dur"].get<double>(), 0.0);  // negative durations are clamped
  const auto& copy = spans[2];
  EXPECT_EQ(copy["name"], "copy model.layers.0.mlp.up_proj.weight[0:64]");
  EXPECT_EQ(copy["tid"], 2);
  EXPECT_DOUBLE_EQ(copy["ts"].get<double>(), 1005.0);
  EXPECT_EQ(copy["args"]["source"], "cpu");
  EXPECT_EQ(copy["args"]["bytes"], "1000");
  EXPECT_FALSE(copy["args"].contains("read"));
  const auto& read = spans[3];
  EXPECT_EQ(read["name"], "read model.layers.0");  // no `what`: the block's name
  EXPECT_EQ(read["tid"], 4);
  EXPECT_EQ(read["args"]["read"], "direct");
  EXPECT_FALSE(read["args"].contains("note"));
  const auto& fallback = spans[4];
  EXPECT_EQ(fallback["name"], "read w");
  EXPECT_EQ(fallback["tid"], 3);
  EXPECT_EQ(fallback["args"]["read"], "mmap_fallback");
  EXPECT_TRUE(fallback["args"].contains("note"));

  // A second pass numbers its events as forward 2.
  AccountForward(Pass(), 1, 1, 1.0, 2000.0, Blocks(), &stats, &trace);
  EXPECT_EQ(trace.size(), 10u);
  const nlohmann::json again = nlohmann::json::parse(trace.ToJson());
  int second_pass = 0;
  for (const auto& e : again["traceEvents"]) {
    if (e["ph"] == "X" && e["args"]["forward"] == "2") ++second_pass;
  }
  EXPECT_EQ(second_pass, 5);
}

TEST(AccountForward, UnknownBlocksAreNamedByIndex) {
  Stats stats;
  TraceRecorder trace;
  ForwardTimings t;
  t.steps = {{.step = 0, .block = 9, .device = -1, .start_us = 0, .end_us = 1}};
  AccountForward(t, 1, 1, 1.0, 0, Blocks(), &stats, &trace);
  const nlohmann::json root = nlohmann::json::parse(trace.ToJson());
  bool found = false;
  for (const auto& e : root["traceEvents"]) found |= e["ph"] == "X" && e["name"] == "block 9";
  EXPECT_TRUE(found);
}

TEST(TraceRecorder, WritesTheJsonToAFile) {
  TraceRecorder trace;
  trace.Add(TraceEvent{"x", "compute", 1, 2, {}});
  const std::string path = std::string(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp") + "/trace.json";
  ASSERT_TRUE(trace.Write(path).ok());
  Status bad = trace.Write("/nonexistent-dir/trace.json");
  EXPECT_FALSE(bad.ok());
}

}  // namespace
}  // namespace bigplan::executor_internal
