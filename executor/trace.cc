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

Status TraceRecorder::Write(const std::string& path) const {
  const std::string text = ToJson();
  return WriteFileBytes(path, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace bigplan::executor_internal
