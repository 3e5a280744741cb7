// The "auto" strategy (see planner/placement.h for the objective).
//
// 1. Ranges: blocks are split into contiguous ranges, one per budgeted GPU in ordinal order (a range may be empty).
//    A dynamic program over (GPU, first block) picks the split that maximizes the total resident bytes, then, among
//    those, minimizes the largest range's weight bytes (balance). Each (GPU, range) is scored by step 2.
// 2. Resident set of one range on one GPU: available = budget - workspace reserve - activations (for the kinds of
//    blocks in the range) - KV cache of its decoder layers; staging for the streamed blocks comes out of it too
//    (min(#streamed, prefetch_depth + 1) buffers of the largest streamed block). BestKeep maximizes the resident
//    bytes exactly: for each candidate size m of the largest streamed block, blocks larger than m stay resident and
//    either depth + 1 buffers of m are reserved and an exact bounded knapsack (MaxFill) fills the rest, or exactly
//    k <= depth blocks are streamed and the cheapest such k-block choice is enumerated. The best candidate wins.
//    Which blocks of one size are streamed is spread evenly over the range, so copies overlap the compute of the
//    resident blocks between them instead of queueing up behind a limited number of staging buffers.
// 3. Tiers of the streamed blocks: CPU (pinned) as long as the cpu budget holds them plus the disk staging buffers,
//    maximizing CPU-tier bytes with the same BestKeep (dropped = Disk tier, staged in pinned memory); the disk
//    budget, if given, caps the Disk-tier bytes.
// With no GPU budgeted, the CPU computes everything: the range is all blocks on device -1 with the cpu budget,
// blocks that do not fit stay on disk (staged twice in host memory: pinned disk staging and the compute staging).
#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "planner/placement.h"
#include "planner/placement_strategies.h"
#include "support/units.h"

namespace bigplan {
namespace {

struct Group {
  uint64_t size = 0;
  uint64_t count = 0;
};

// Maximizes sum(n_j * size_j) <= cap with 0 <= n_j <= count_j. Exact: every group but the most numerous is
// enumerated (when the number of combinations is at most kMaxCombos) and the most numerous is filled greedily,
// which is optimal once the others are fixed. Beyond kMaxCombos (no supported architecture comes close: its blocks
// have at most five distinct sizes, one of them shared by all decoder layers) it falls back to filling the largest
// sizes first. Returns the counts (parallel to groups) and the sum.
constexpr uint64_t kMaxCombos = 1 << 16;

std::pair<std::vector<uint64_t>, uint64_t> MaxFill(const std::vector<Group>& groups, uint64_t cap) {
  std::vector<uint64_t> best(groups.size(), 0);
  uint64_t best_sum = 0;
  if (groups.empty()) return {best, 0};
  size_t greedy = 0;
  for (size_t g = 1; g < groups.size(); ++g) {
    if (groups[g].count > groups[greedy].count) greedy = g;
  }
  uint64_t combos = 1;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g == greedy) continue;
    combos *= groups[g].count + 1;
    if (combos > kMaxCombos) break;
  }
  if (combos > kMaxCombos) {
    std::vector<size_t> order(groups.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return groups[a].size > groups[b].size; });
    uint64_t left = cap;
    for (size_t g : order) {
      const uint64_t n = groups[g].size == 0 ? groups[g].count : std::min(groups[g].count, left / groups[g].size);
      best[g] = n;
      left -= n * groups[g].size;
      best_sum += n * groups[g].size;
    }
    return {best, best_sum};
  }
  std::vector<uint64_t> counts(groups.size(), 0);
  // Depth-first over the enumerated groups, larger counts first (so ties keep more of the earlier groups).
  std::vector<size_t> enumerated;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g != greedy) enumerated.push_back(g);
  }
  bool first = true;
  auto visit = [&](auto&& self, size_t k, uint64_t used) -> void {
    if (k == enumerated.size()) {
      const Group& gg = groups[greedy];
      const uint64_t left = cap - used;
      counts[greedy] = gg.size == 0 ? gg.count : std::min(gg.count, left / gg.size);
      const uint64_t sum = used + counts[greedy] * gg.size;
      if (first || sum > best_sum) {
        first = false;
        best_sum = sum;
        best = counts;
      }
      return;
    }
    const Group& g = groups[enumerated[k]];
    for (uint64_t n = g.count + 1; n-- > 0;) {
      if (g.size != 0 && n > (cap - used) / g.size) continue;
      counts[enumerated[k]] = n;
      self(self, k + 1, used + n * g.size);
    }
    counts[enumerated[k]] = 0;
  };
  visit(visit, 0, 0);
  return {best, best_sum};
}

// Picks `keep` of `members` blocks (execution order) to keep, spreading the dropped ones evenly.
std::vector<bool> SpreadKeep(size_t members, size_t keep) {
  std::vector<bool> kept(members, true);
  const size_t drop = members - keep;
  for (size_t t = 0; t < drop; ++t) kept[(2 * t + 1) * members / (2 * drop)] = false;
  return kept;
}

// The choice at the heart of both steps 2 and 3: keep (resident on the GPU, or in the CPU tier) a subset of blocks,
// given as groups of equal size in decreasing size order, within `avail` bytes, where the dropped blocks (streamed,
// or left on disk) cost `copies` x min(#dropped, depth + 1) x (largest dropped size) of staging inside `avail`.
// Maximizes kept bytes, exactly: for each candidate largest dropped size m, either at least depth + 1 blocks are
// dropped (or all blocks <= m are droppable in fewer), and a bounded knapsack fills the rest (MaxFill), or exactly
// k <= depth blocks are dropped, and the cheapest k-block drop that frees enough is enumerated.
struct KeepChoice {
  bool feasible = false;
  uint64_t kept_bytes = 0;
  std::vector<uint64_t> kept;  // per group
};

KeepChoice BestKeep(const std::vector<Group>& groups, uint64_t avail, uint32_t depth, uint64_t copies) {
  KeepChoice best;
  uint64_t total = 0;
  for (const Group& g : groups) total += g.size * g.count;
  if (total <= avail) {
    best.feasible = true;
    best.kept_bytes = total;
    for (const Group& g : groups) best.kept.push_back(g.count);
    return best;
  }
  auto consider = [&](uint64_t kept_bytes, std::vector<uint64_t> kept) {
    if (!best.feasible || kept_bytes > best.kept_bytes) {
      best.feasible = true;
      best.kept_bytes = kept_bytes;
      best.kept = std::move(kept);
    }
  };
  uint64_t forced = 0;
  for (size_t mi = 0; mi < groups.size(); forced += groups[mi].size * groups[mi].count, ++mi) {
    const uint64_t m = groups[mi].size;
    if (m == 0) continue;
    uint64_t n_le = 0, sum_le = 0;
    for (size_t g = mi; g < groups.size(); ++g) {
      n_le += groups[g].count;
      sum_le += groups[g].size * groups[g].count;
    }
    const std::vector<Group> le(groups.begin() + mi, groups.end());
    // (a) Reserve min(n_le, depth + 1) staging buffers.
    const uint64_t staging = copies * StagingBufferCount(n_le, depth) * m;
    if (forced + staging <= avail) {
      auto [counts, sum] = MaxFill(le, avail - forced - staging);
      std::vector<uint64_t> kept(groups.size());
      for (size_t g = 0; g < groups.size(); ++g) kept[g] = g < mi ? groups[g].count : counts[g - mi];
      consider(forced + sum, std::move(kept));
    }
    // (b) Drop exactly k <= depth blocks (fewer than n_le), reserving k buffers.
    const uint64_t max_k = std::min<uint64_t>({depth, n_le - 1, 8});
    for (uint64_t k = 1; k <= max_k; ++k) {
      if (forced + copies * k * m > avail) break;
      const uint64_t cap = avail - forced - copies * k * m;
      if (sum_le <= cap) continue;
      const uint64_t need = sum_le - cap;  // bytes the dropped blocks must free
      std::vector<uint64_t> drop(le.size(), 0), best_drop;
      uint64_t best_t = UINT64_MAX;
      auto visit = [&](auto&& self, size_t g, uint64_t left, uint64_t t) -> void {
        if (t >= need) {
          if (t < best_t) {
            best_t = t;
            best_drop = drop;
          }
          return;
        }
        if (g == le.size() || left == 0) return;
        for (uint64_t n = std::min(left, le[g].count); ; --n) {
          drop[g] = n;
          self(self, g + 1, left - n, t + n * le[g].size);
          if (n == 0) break;
        }
        drop[g] = 0;
      };
      visit(visit, 0, k, 0);
      if (best_t == UINT64_MAX) continue;
      std::vector<uint64_t> kept(groups.size());
      for (size_t g = 0; g < groups.size(); ++g) kept[g] = g < mi ? groups[g].count : le[g - mi].count - best_drop[g - mi];
      consider(forced + sum_le - best_t, std::move(kept));
    }
  }
  return best;
}

struct RangeScore {
  bool feasible = false;
  uint64_t resident = 0;
  uint64_t load = 0;  // weight bytes in the range
};

class AutoPlanner {
 public:
  explicit AutoPlanner(const PlacementRequest& request)
      : req_(request),
        model_(*request.model),
        bytes_(AllBlockWeightBytes(model_, request.exec_dtype)),
        kv_(KvCacheBytesPerLayer(model_.config, request.run, request.exec_dtype)),
        depth_(request.options.prefetch_depth) {}

  // Everything the range [begin, end) needs besides weights and staging, on a GPU (or on the CPU).
  uint64_t Overhead(size_t begin, size_t end, bool cpu_compute) const {
    if (begin == end) return 0;
    std::vector<size_t> reps;
    std::map<int, bool> seen;
    uint64_t layers = 0;
    for (size_t i = begin; i < end; ++i) {
      const int k = static_cast<int>(model_.blocks[i].kind);
      if (!seen[k]) {
        seen[k] = true;
        reps.push_back(i);
      }
      if (model_.blocks[i].kind == BlockKind::kDecoderLayer) ++layers;
    }
    const uint64_t act = EstimateActivations(model_, req_.run, req_.exec_dtype, reps).total;
    return act + layers * kv_ + (cpu_compute ? 0 : GpuWorkspaceReserveBytes());
  }

  // Best resident set of [begin, end) within `budget`; on the CPU (cpu_compute) streamed blocks are staged twice
  // (pinned disk staging, then the compute staging). Fills `keep` (size end-begin) when given.
  RangeScore Score(size_t begin, size_t end, uint64_t budget, bool cpu_compute, std::vector<bool>* keep) const {
    RangeScore s;
    s.feasible = true;
    if (begin == end) return s;
    std::map<uint64_t, uint64_t, std::greater<>> by_size;
    for (size_t i = begin; i < end; ++i) {
      s.load += bytes_[i];
      ++by_size[bytes_[i]];
    }
    const uint64_t overhead = Overhead(begin, end, cpu_compute);
    if (overhead > budget) {
      s.feasible = false;
      return s;
    }
    std::vector<Group> groups;
    for (const auto& [size, count] : by_size) groups.push_back({size, count});
    const KeepChoice choice = BestKeep(groups, budget - overhead, depth_, cpu_compute ? 2 : 1);
    if (!choice.feasible) {
      s.feasible = false;
      return s;
    }
    s.resident = choice.kept_bytes;
    if (keep) {
      keep->assign(end - begin, true);
      for (size_t g = 0; g < groups.size(); ++g) {
        std::vector<size_t> members;
        for (size_t i = begin; i < end; ++i) {
          if (bytes_[i] == groups[g].size) members.push_back(i - begin);
        }
        const std::vector<bool> kept = SpreadKeep(members.size(), choice.kept[g]);
        for (size_t t = 0; t < members.size(); ++t) (*keep)[members[t]] = kept[t];
      }
    }
    return s;
  }

  Result<Placement> Run() {
    const size_t n_blocks = model_.blocks.size();
    std::vector<BlockPlacement> blocks(n_blocks);
    if (req_.budget.gpus.empty()) {
      // CPU compute.
      std::vector<bool> keep;
      RangeScore s = Score(0, n_blocks, *req_.budget.cpu, true, &keep);
      if (!s.feasible) return Infeasible({});
      for (size_t i = 0; i < n_blocks; ++i) blocks[i] = BlockPlacement{-1, keep[i] ? Tier::kGpu : Tier::kDisk};
      BIGPLAN_RETURN_IF_ERROR(CheckDisk(blocks));
      return FinishPlacement(req_, "auto", std::move(blocks));
    }

    std::vector<int> gpus;
    std::vector<uint64_t> budgets;
    for (const auto& [ordinal, bytes] : req_.budget.gpus) {
      gpus.push_back(ordinal);
      budgets.push_back(bytes);
    }
    const size_t n_gpus = gpus.size();
    // best[g][i]: the best way for GPUs g.. to cover blocks i..; choice[g][i] = end of GPU g's range.
    struct Best {
      bool feasible = false;
      uint64_t resident = 0;
      uint64_t max_load = 0;
    };
    std::vector<std::vector<Best>> best(n_gpus + 1, std::vector<Best>(n_blocks + 1));
    std::vector<std::vector<size_t>> choice(n_gpus + 1, std::vector<size_t>(n_blocks + 1, 0));
    best[n_gpus][n_blocks] = Best{true, 0, 0};
    // Range scores depend on the budget only, so GPUs with equal budgets share them.
    std::map<uint64_t, std::vector<std::optional<RangeScore>>> scores;
    auto score = [&](size_t begin, size_t end, uint64_t budget) -> const RangeScore& {
      auto& table = scores[budget];
      if (table.empty()) table.resize((n_blocks + 1) * (n_blocks + 1));
      std::optional<RangeScore>& slot = table[begin * (n_blocks + 1) + end];
      if (!slot) slot = Score(begin, end, budget, false, nullptr);
      return *slot;
    };
    for (size_t g = n_gpus; g-- > 0;) {
      for (size_t i = 0; i <= n_blocks; ++i) {
        if (g == 0 && i > 0) break;  // GPU 0's range always starts at block 0
        Best b;
        for (size_t end = i; end <= n_blocks; ++end) {
          const Best& rest = best[g + 1][end];
          if (!rest.feasible) continue;
          const RangeScore& s = score(i, end, budgets[g]);
          if (!s.feasible) continue;
          Best cand{true, s.resident + rest.resident, std::max(s.load, rest.max_load)};
          if (!b.feasible || cand.resident > b.resident || (cand.resident == b.resident && cand.max_load < b.max_load)) {
            b = cand;
            choice[g][i] = end;
          }
        }
        best[g][i] = b;
      }
    }
    if (!best[0][0].feasible) return Infeasible(gpus);

    size_t begin = 0;
    for (size_t g = 0; g < n_gpus; ++g) {
      const size_t end = choice[g][begin];
      std::vector<bool> keep;
      Score(begin, end, budgets[g], false, &keep);
      for (size_t i = begin; i < end; ++i) blocks[i] = BlockPlacement{gpus[g], keep[i - begin] ? Tier::kGpu : Tier::kCpu};
      begin = end;
    }
    BIGPLAN_RETURN_IF_ERROR(AssignHostTiers(blocks));
    return FinishPlacement(req_, "auto", std::move(blocks));
  }

 private:
  // Streamed blocks: CPU tier while the cpu budget holds them (with the disk staging for the rest), else Disk.
  Status AssignHostTiers(std::vector<BlockPlacement>& blocks) const {
    std::vector<size_t> streamed;
    uint64_t total = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].tier != Tier::kGpu) {
        streamed.push_back(i);
        total += bytes_[i];
      }
    }
    if (streamed.empty()) return Status::Ok();
    const uint64_t cap = req_.budget.cpu.value_or(0);
    if (total <= cap) return Status::Ok();  // all CPU tier
    // The most streamed blocks (spread over the model) that the cpu budget holds in the CPU tier, with the pinned
    // disk ring the rest need, by the accounting itself.
    for (size_t keep = streamed.size() + 1; keep-- > 0;) {
      const std::vector<bool> kept = SpreadKeep(streamed.size(), keep);
      for (size_t t = 0; t < streamed.size(); ++t) blocks[streamed[t]].tier = kept[t] ? Tier::kCpu : Tier::kDisk;
      BIGPLAN_ASSIGN_OR_RETURN(std::vector<DeviceAccount> usage, AccountPlacement(req_, blocks));
      bool fits = true;
      for (const DeviceAccount& a : usage)
        if (a.device == "cpu" && !a.fits()) fits = false;
      if (fits) return CheckDisk(blocks);
    }
    return CheckHostFits(blocks);  // all disk, and still short: the error names cpu
  }

  Status CheckDisk(const std::vector<BlockPlacement>& blocks) const {
    if (!req_.budget.disk) return Status::Ok();
    return CheckHostFits(blocks);
  }

  // kInfeasible naming cpu/disk when the streamed blocks do not fit there.
  Status CheckHostFits(const std::vector<BlockPlacement>& blocks) const {
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<DeviceAccount> usage, AccountPlacement(req_, blocks));
    std::string msg;
    for (const DeviceAccount& a : usage) {
      if ((a.device == "cpu" || a.device == "disk") && !a.fits()) msg += (msg.empty() ? "" : "; ") + a.ShortfallMessage();
    }
    if (msg.empty()) return Status::Ok();
    uint64_t streamed = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].tier != Tier::kGpu) streamed += bytes_[i];
    }
    return MakeError(ErrorCode::kInfeasible, "placement \"auto\" of " + model_.name + ": " + FormatBytes(streamed) +
                                                 " of weights do not fit on the GPUs and cpu + disk cannot hold them: " + msg);
  }

  // No split fits: report the accounts with every block streamed and blocks split evenly over the GPUs.
  Error Infeasible(const std::vector<int>& gpus) const {
    const size_t n_blocks = model_.blocks.size();
    std::vector<BlockPlacement> blocks(n_blocks);
    for (size_t i = 0; i < n_blocks; ++i) {
      const int32_t device = gpus.empty() ? -1 : gpus[i * gpus.size() / n_blocks];
      blocks[i] = BlockPlacement{device, gpus.empty() ? Tier::kDisk : Tier::kCpu};
    }
    Result<std::vector<DeviceAccount>> usage = AccountPlacement(req_, blocks);
    std::string msg;
    if (usage.ok()) {
      for (const DeviceAccount& a : *usage) {
        if (a.device == "cpu" || a.device == "disk") continue;
        if (!a.fits()) msg += (msg.empty() ? "" : "; ") + a.ShortfallMessage();
      }
      if (gpus.empty()) {
        for (const DeviceAccount& a : *usage) {
          if (a.device == "cpu" && !a.fits()) msg = a.ShortfallMessage();
        }
      }
    }
    if (msg.empty()) msg = "no split of the blocks over the GPUs fits their budgets";
    return MakeError(ErrorCode::kInfeasible, "placement \"auto\" of " + model_.name + ": even with every block streamed, " + msg);
  }

  const PlacementRequest& req_;
  const ModelDescription& model_;
  std::vector<uint64_t> bytes_;
  uint64_t kv_;
  uint32_t depth_;
};

class AutoStrategy : public PlacementStrategy {
 public:
  std::string name() const override { return "auto"; }
  std::string description() const override {
    return "maximize resident bytes (exact knapsack per GPU), stream the rest from cpu before disk, balance GPUs";
  }
  Result<Placement> Place(const PlacementRequest& request) const override {
    BIGPLAN_RETURN_IF_ERROR(placement_internal::CheckRequest(request));
    AutoPlanner planner(request);
    return planner.Run();
  }
};

}  // namespace

namespace placement_internal {
std::unique_ptr<PlacementStrategy> MakeAutoStrategy() { return std::make_unique<AutoStrategy>(); }
}  // namespace placement_internal

}  // namespace bigplan
