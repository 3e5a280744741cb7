#include "planner/memory_plan.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <numeric>

namespace bigplan {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, MemoryAlgorithm> algorithms;
  Registry() {
    algorithms["greedy_by_size"] = GreedyBySize;
    algorithms["linear"] = LinearAllocate;
  }
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();
  return *registry;
}

bool IsPowerOfTwo(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

std::string PoolName(const PoolKey& key) {
  if (key.pool == schema::Pool::PinnedHost) return "pinned";
  if (key.device < 0) return "cpu";
  return "cuda:" + std::to_string(key.device);
}

uint64_t MemoryPlan::ArenaSizeOf(const PoolKey& key) const {
  for (const ArenaSize& a : arenas)
    if (a.pool == key) return a.size;
  return 0;
}

void RegisterMemoryAlgorithm(const std::string& name, MemoryAlgorithm algorithm) {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.algorithms[name] = std::move(algorithm);
}

std::vector<std::string> MemoryAlgorithmNames() {
  Registry& r = GetRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, fn] : r.algorithms) names.push_back(name);
  return names;
}

std::vector<uint64_t> GreedyBySize(const std::vector<BufferRequest>& buffers) {
  const size_t n = buffers.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].size != buffers[b].size) return buffers[a].size > buffers[b].size;
    return buffers[a].first_step < buffers[b].first_step;
  });
  std::vector<uint64_t> offsets(n, 0);
  // Placed buffers, kept sorted by offset (then by end, so a zero-size buffer never hides a gap).
  struct Placed {
    uint64_t offset, end;
    uint32_t first, last;
  };
  std::vector<Placed> placed;
  placed.reserve(n);
  for (size_t idx : order) {
    const BufferRequest& b = buffers[idx];
    uint64_t best_offset = 0;
    uint64_t best_gap = std::numeric_limits<uint64_t>::max();
    bool found = false;
    uint64_t current = 0;  // end of the highest time-overlapping buffer seen so far
    for (const Placed& p : placed) {
      if (p.last < b.first_step || p.first > b.last_step) continue;  // lifetimes do not intersect
      const uint64_t candidate = RoundUpTo(current, b.alignment);
      if (candidate + b.size <= p.offset) {
        const uint64_t gap = p.offset - current;
        if (gap < best_gap) {
          best_gap = gap;
          best_offset = candidate;
          found = true;
        }
      }
      current = std::max(current, p.end);
    }
    if (!found) best_offset = RoundUpTo(current, b.alignment);
    offsets[idx] = best_offset;
    Placed np{best_offset, best_offset + b.size, b.first_step, b.last_step};
    auto pos = std::upper_bound(placed.begin(), placed.end(), np, [](const Placed& x, const Placed& y) {
      return x.offset != y.offset ? x.offset < y.offset : x.end < y.end;
    });
    placed.insert(pos, np);
  }
  return offsets;
}

std::vector<uint64_t> LinearAllocate(const std::vector<BufferRequest>& buffers) {
  std::vector<uint64_t> offsets(buffers.size(), 0);
  uint64_t top = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    offsets[i] = RoundUpTo(top, buffers[i].alignment);
    top = offsets[i] + buffers[i].size;
  }
  return offsets;
}

Result<MemoryPlan> PlanMemory(const std::vector<BufferRequest>& buffers, const std::string& algorithm) {
  MemoryAlgorithm fn;
  {
    Registry& r = GetRegistry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.algorithms.find(algorithm);
    if (it != r.algorithms.end()) fn = it->second;
  }
  if (!fn) {
    std::string known;
    for (const std::string& name : MemoryAlgorithmNames()) known += (known.empty() ? "" : ", ") + name;
    return MakeError(ErrorCode::kInvalidArgument,
                     "unknown memory algorithm \"" + algorithm + "\" (known: " + known + ")");
  }
  for (const BufferRequest& b : buffers) {
    if (b.last_step < b.first_step)
      return MakeError(ErrorCode::kInvalidArgument, "buffer " + b.name + ": last_step " +
                                                        std::to_string(b.last_step) + " < first_step " +
                                                        std::to_string(b.first_step));
    if (!IsPowerOfTwo(b.alignment))
      return MakeError(ErrorCode::kInvalidArgument,
                       "buffer " + b.name + ": alignment " + std::to_string(b.alignment) + " is not a power of two");
  }
  std::map<PoolKey, std::vector<size_t>> by_pool;
  for (size_t i = 0; i < buffers.size(); ++i) by_pool[buffers[i].pool].push_back(i);

  MemoryPlan plan;
  plan.algorithm = algorithm;
  plan.offsets.assign(buffers.size(), 0);
  for (const auto& [pool, indices] : by_pool) {
    std::vector<BufferRequest> subset;
    subset.reserve(indices.size());
    for (size_t i : indices) subset.push_back(buffers[i]);
    std::vector<uint64_t> offs = fn(subset);
    if (offs.size() != subset.size())
      return MakeError(ErrorCode::kInternal, "memory algorithm \"" + algorithm + "\" returned " +
                                                 std::to_string(offs.size()) + " offsets for " +
                                                 std::to_string(subset.size()) + " buffers");
    uint64_t top = 0;
    for (size_t k = 0; k < indices.size(); ++k) {
      const BufferRequest& b = subset[k];
      if (offs[k] % b.alignment != 0)
        return MakeError(ErrorCode::kInternal, "memory algorithm \"" + algorithm + "\" misaligned buffer " + b.name);
      if (offs[k] + b.size < offs[k])
        return MakeError(ErrorCode::kInternal, "memory algorithm \"" + algorithm + "\" overflowed at " + b.name);
      plan.offsets[indices[k]] = offs[k];
      top = std::max(top, offs[k] + b.size);
    }
    plan.arenas.push_back({pool, RoundUpTo(top, kBufferAlignment)});
  }
  return plan;
}

}  // namespace bigplan
