// The per-batch-size cache of captured decode steps and its "a failed capture turns graphs off" rule (internal to
// executor/). A template over the captured thing, so the rule is testable without CUDA (graph_cache_test.cc);
// graph_decode.h instantiates it with CUDA graphs.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "support/result.h"

namespace bigplan::executor_internal {

template <typename Graph>
class GraphCache {
 public:
  explicit GraphCache(bool enabled) : enabled_(enabled) {}

  // Whether steps may come from graphs. Starts as given; false for good after a failed capture.
  bool enabled() const { return enabled_; }
  // Graphs held (one per batch size captured).
  size_t size() const { return graphs_.size(); }

  struct Lookup {
    Graph* graph = nullptr;  // nullptr: graphs are off (now or from before); run the step eagerly
    bool captured = false;   // the graph was captured by this call
  };

  // The graph for `batch`: the cached one, or a new one from `capture(batch)`, which returns
  // Result<std::optional<Graph>>: a graph (kept for later calls with this batch size), std::nullopt (the capture
  // failed: every graph is dropped and the cache is off from then on) or an error (returned; the cache is
  // unchanged and capture is tried again next time). Off: returns {nullptr, false} without calling capture.
  template <typename Capture>
  Result<Lookup> Get(int64_t batch, Capture&& capture) {
    if (!enabled_) return Lookup{};
    for (auto& [b, g] : graphs_) {
      if (b == batch) return Lookup{g.get(), false};
    }
    Result<std::optional<Graph>> made = capture(batch);
    if (!made.ok()) return made.take_error();
    if (!made->has_value()) {
      Disable();
      return Lookup{};
    }
    graphs_.emplace_back(batch, std::make_unique<Graph>(std::move(**made)));
    return Lookup{graphs_.back().second.get(), true};
  }

  void Disable() {
    enabled_ = false;
    graphs_.clear();
  }

 private:
  bool enabled_;
  std::vector<std::pair<int64_t, std::unique_ptr<Graph>>> graphs_;
};

}  // namespace bigplan::executor_internal
