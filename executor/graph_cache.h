// The per-batch-size cache of captured decode steps and its "a failed capture turns graphs off" rule (internal to
// executor/). A template over the captured thing, so the rule is testable without CUDA (graph_cache_test.cc);
// graph_decode.h instantiates it with CUDA graphs.
#pragma once

#include <algorithm>
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

// Prefill graphs of one GPU (internal to executor/): prompts are padded to a bucket of `granule` tokens, and a
// (rows, bucket) shape's second pass captures a graph that its later passes replay. Up to `capacity` graphs are
// kept (the least recently used goes first); a failed capture turns them off for good (Disable). Padding is at the
// end of each row, so causal attention leaves the real positions' results as they would be unpadded, and the
// padded positions' KV-cache entries lie past the sequence's end, where decode steps write before they attend.
template <typename Graph>
class PrefillGraphCache {
 public:
  PrefillGraphCache(bool enabled, size_t capacity, int64_t granule)
      : enabled_(enabled && capacity > 0 && granule > 0), capacity_(capacity), granule_(granule) {}

  bool enabled() const { return enabled_; }
  size_t size() const { return graphs_.size(); }

  // The padded length of a prompt of `seq` tokens in a cache of `max_seq` positions: seq rounded up to a multiple of
  // the granule, but at most max_seq (and never below seq).
  int64_t Bucket(int64_t seq, int64_t max_seq) const {
    const int64_t up = (seq + granule_ - 1) / granule_ * granule_;
    return std::max(seq, std::min(up, max_seq));
  }

  // The captured graph of the shape (now the most recently used), or nullptr.
  Graph* Find(int64_t rows, int64_t bucket) {
    for (Entry& e : graphs_) {
      if (e.rows == rows && e.bucket == bucket) {
        e.last = ++tick_;
        return e.graph.get();
      }
    }
    return nullptr;
  }

  // Counts an eager pass of the shape: true when it is the shape's second (capture it now, then Put). Counts are
  // kept for the last 16 shapes seen.
  bool CountEager(int64_t rows, int64_t bucket) {
    if (!enabled_) return false;
    for (auto& [r, b, n] : seen_) {
      if (r == rows && b == bucket) return ++n == 2;
    }
    if (seen_.size() == 16) seen_.erase(seen_.begin());
    seen_.push_back({rows, bucket, 1});
    return false;
  }

  // Keeps a captured graph; beyond capacity the least recently used one is dropped.
  Graph* Put(int64_t rows, int64_t bucket, Graph g) {
    if (graphs_.size() >= capacity_) {
      auto oldest = std::min_element(graphs_.begin(), graphs_.end(),
                                     [](const Entry& a, const Entry& b) { return a.last < b.last; });
      graphs_.erase(oldest);
    }
    graphs_.push_back(Entry{rows, bucket, ++tick_, std::make_unique<Graph>(std::move(g))});
    return graphs_.back().graph.get();
  }

  void Disable() {
    enabled_ = false;
    graphs_.clear();
    seen_.clear();
  }

 private:
  struct Entry {
    int64_t rows = 0, bucket = 0;
    uint64_t last = 0;
    std::unique_ptr<Graph> graph;
  };
  struct Seen {
    int64_t rows = 0, bucket = 0;
    int count = 0;
  };
  bool enabled_;
  size_t capacity_;
  int64_t granule_;
  uint64_t tick_ = 0;
  std::vector<Entry> graphs_;
  std::vector<Seen> seen_;
};

}  // namespace bigplan::executor_internal
