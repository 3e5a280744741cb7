#include "executor/trace.h"

#include <map>
#include <nlohmann/json.hpp>

#include "schema/plan_io.h"

namespace bigplan::executor_internal {

void TraceRecorder::Add(TraceEvent event) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(std::move(event));
}

size_t TraceRecorder::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

std::string TraceRecorder::ToJson() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, int> tids;
  tids["compute"] = 1;
  tids["copy"] = 2;
  for (const TraceEvent& e : events_) tids.emplace(e.track, 0);
  int next = 3;
  for (auto& [track, tid] : tids) {
    if (tid == 0) tid = next++;
  }
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"args", {{"name", "bigplan"}}}});
  for (const auto& [track, tid] : tids) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", tid}, {"args", {{"name", track}}}});
    events.push_back(
        {{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", 1}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
  }
  for (const TraceEvent& e : events_) {
    nlohmann::json args = nlohmann::json::object();
    for (const auto& [k, v] : e.args) args[k] = v;
    events.push_back({{"name", e.name},
                      {"ph", "X"},
                      {"pid", 1},
                      {"tid", tids[e.track]},
                      {"ts", e.start_us},
                      {"dur", e.dur_us < 0 ? 0.0 : e.dur_us},
                      {"args", args}});
  }
  nlohmann::json root = {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
  return root.dump(1);
}

void AccountForward(const ForwardTimings& t, int64_t batch, int64_t seq, double ms, double base_us,
                    const std::vector<BlockLabel>& blocks, Stats* stats, TraceRecorder* trace) {
  ++stats->forward_count;
  stats->cpu_tier_bytes += t.cpu_tier_bytes;
  stats->host_compute_bytes += t.host_compute_bytes;
  stats->host_compute_forwards += t.host_compute_bytes > 0 ? 1 : 0;
  stats->disk_tier_bytes += t.disk_tier_bytes;
  stats->disk_h2d_bytes += t.disk_h2d_bytes;
  stats->disk_direct_blocks += t.disk_direct_blocks;
  stats->disk_bounce_blocks += t.disk_bounce_blocks;
  stats->disk_mmap_blocks += t.disk_mmap_blocks;
  stats->disk_direct_fallbacks += t.disk_direct_fallbacks;
  stats->disk_read_bytes += t.disk_read_bytes;
  stats->last_batch = static_cast<uint32_t>(batch);
  stats->last_seq = static_cast<uint32_t>(seq);
  stats->last_forward_ms = ms;
  stats->last_streamed_bytes = t.cpu_tier_bytes + t.disk_tier_bytes;
  stats->last_steps = t.steps;
  stats->last_copies = t.copies;
  if (trace == nullptr) return;
  const BlockLabel unknown;
  auto label = [&](uint32_t block) -> BlockLabel {
    if (block < blocks.size()) return blocks[block];
    BlockLabel l = unknown;
    l.name = "block " + std::to_string(block);
    return l;
  };
  const std::string fwd = std::to_string(stats->forward_count);
  for (const StepTiming& s : t.steps) {
    const BlockLabel b = label(s.block);
    trace->Add(TraceEvent{b.name, "compute", base_us + s.start_us, s.end_us - s.start_us,
                          {{"step", std::to_string(s.step)},
                           {"forward", fwd},
                           {"kind", b.kind},
                           {"tier", b.tier},
                           {"device", s.device < 0 ? "cpu" : "cuda:" + std::to_string(s.device)},
                           {"tokens", std::to_string(batch) + "x" + std::to_string(seq)}}});
  }
  for (const CopyTiming& c : t.copies) {
    const BlockLabel b = label(c.block);
    std::string track = "copy";
    std::string name = "copy " + (c.what.empty() ? b.name : c.what);
    std::vector<std::pair<std::string, std::string>> args{
        {"step", std::to_string(c.step)}, {"forward", fwd}, {"source", c.source}, {"bytes", std::to_string(c.bytes)}};
    if (c.source == "host") {
      track = "host compute";
      name = "host " + (c.what.empty() ? b.name : c.what);
    } else if (c.source == "disk_read") {
      track = c.worker < 0 ? "disk (inline)" : "disk worker " + std::to_string(c.worker);
      name = "read " + (c.what.empty() ? b.name : c.what);
      args.emplace_back("read", c.read);
      if (c.read == "mmap_fallback") {
        args.emplace_back("note", "direct reads do not fit the disk staging buffer: copied from the mapping");
      }
    }
    trace->Add(TraceEvent{name, track, base_us + c.start_us, c.end_us - c.start_us, std::move(args)});
  }
}

Status TraceRecorder::Write(const std::string& path) const {
  const std::string text = ToJson();
  return WriteFileBytes(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace bigplan::executor_internal
