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
// 3. Candidates at tensor granularity on the same ranges (or, when no block-granular split fits, ranges balanced by
//    weight bytes): B (step 2's block choice), P (partially resident blocks, slots ring) and C (chunked streaming);
//    see planner/placement.h. The feasible one with the most resident bytes wins.
//    With several GPUs, candidate S (striped) deals the decoder layers to the GPUs in turn instead, so every GPU's
//    link streams all along the forward; it wins when its busiest link copies less than the others' links together.
// 4. Host tiers, per weight in execution order: CPU (pinned) while the cpu budget holds them and the disk rings of
//    the rest (bounded by the largest disk slot still possible), else Disk; the disk budget, if given, caps Disk bytes.
// With no GPU budgeted, the CPU computes everything: the range is all blocks on device -1 with the cpu budget,
// blocks that do not fit stay on disk (staged twice in host memory: pinned disk staging and the compute staging).
#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "planner/placement.h"
#include "planner/experts.h"
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
// Candidate I (interleaved): each GPU's decoder layers in groups of at least this many, 2 to kInterleaveMaxRounds groups.
constexpr size_t kInterleaveMinGroup = 4;
constexpr size_t kInterleaveMaxRounds = 4;

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

constexpr uint64_t kMinChunkRing = uint64_t{256} << 20;
constexpr uint64_t kMaxChunkRing = uint64_t{2} << 30;

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
        depth_(std::max<uint32_t>(1, request.options.prefetch_depth)) {
    for (size_t i = 0; i < model_.blocks.size(); ++i) {
      layouts_.push_back(LayoutBlockWeights(model_, i, request.exec_dtype));
      std::vector<uint64_t> sz;
      for (const WeightSlot& w : layouts_.back().weights) sz.push_back(AlignUp(w.size_bytes));
      sizes_.push_back(std::move(sz));
    }
  }

  // Everything the range [begin, end) needs besides weights and staging, on a GPU (or on the CPU).
  uint64_t Overhead(size_t begin, size_t end, bool cpu_compute) const {
    std::vector<size_t> members;
    for (size_t i = begin; i < end; ++i) members.push_back(i);
    return Overhead(members, cpu_compute);
  }
  // The same for any set of blocks.
  uint64_t Overhead(const std::vector<size_t>& members, bool cpu_compute) const {
    if (members.empty()) return 0;
    std::vector<size_t> reps;
    std::map<int, bool> seen;
    uint64_t layers = 0;
    for (size_t i : members) {
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
    return Score(Members({begin, end}), budget, cpu_compute, keep);
  }
  // The same for any set of blocks (execution order); `keep` parallel to members.
  RangeScore Score(const std::vector<size_t>& members, uint64_t budget, bool cpu_compute,
                   std::vector<bool>* keep) const {
    RangeScore s;
    s.feasible = true;
    if (members.empty()) {
      if (keep) keep->clear();
      return s;
    }
    std::map<uint64_t, uint64_t, std::greater<>> by_size;
    for (size_t i : members) {
      s.load += bytes_[i];
      ++by_size[bytes_[i]];
    }
    const uint64_t overhead = Overhead(members, cpu_compute);
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
      keep->assign(members.size(), true);
      for (size_t g = 0; g < groups.size(); ++g) {
        std::vector<size_t> of_size;
        for (size_t t = 0; t < members.size(); ++t) {
          if (bytes_[members[t]] == groups[g].size) of_size.push_back(t);
        }
        const std::vector<bool> kept = SpreadKeep(of_size.size(), choice.kept[g]);
        for (size_t t = 0; t < of_size.size(); ++t) (*keep)[of_size[t]] = kept[t];
      }
    }
    return s;
  }

  // Candidate S (several GPUs): decoder layers dealt to the GPUs in turn (by `shares`), the final norm and head on
  // the last GPU with the last layer, the embedding there too or (host_embedding) on the host; on each GPU the
  // resident part of its blocks as candidate B (whole blocks) or P (partly resident blocks) chooses it, whichever
  // keeps more. Every GPU then streams its own share over its own PCIe link while the others
  // compute (the hidden state hops between the GPUs at every layer), where contiguous ranges leave the links idle
  // in turn. Streamed weights rest in the CPU tier or on disk as for the other candidates.
  // `shares`: each GPU's share of the decoder layers (smooth weighted round robin: each layer goes to the GPU with the
  // most accumulated credit), equal shares dealing them strictly in turn.
  Result<Placement> StripedCandidate(const std::vector<int>& gpus, const std::vector<uint64_t>& budgets,
                                     const std::vector<double>& shares, bool host_embedding) const {
    const size_t n_blocks = model_.blocks.size(), n_gpus = gpus.size();
    // The head (final norm, lm_head) on the last GPU, dealt from the last layer backwards so the last layer is there
    // too; with `host_embedding` the token embedding computed by the host from host memory (its lookup reads one row
    // per token: keeping the table off the GPUs leaves their memory to layers), n_gpus standing for "the host".
    std::vector<size_t> gpu_of(n_blocks, n_gpus - 1);
    std::vector<double> credit(n_gpus, 0);
    for (size_t i = n_blocks; i-- > 0;) {
      if (model_.blocks[i].kind != BlockKind::kDecoderLayer) continue;
      for (size_t g = 0; g < n_gpus; ++g) credit[g] += shares[g];
      size_t pick = n_gpus - 1;
      for (size_t g = n_gpus - 1; g-- > 0;) {
        if (credit[g] > credit[pick] + 1e-12) pick = g;
      }
      credit[pick] -= 1.0;
      gpu_of[i] = pick;
    }
    for (size_t i = 0; i < n_blocks; ++i) {
      if (model_.blocks[i].kind == BlockKind::kEmbedding && host_embedding) gpu_of[i] = n_gpus;
    }
    std::vector<BlockPlacement> blocks(n_blocks);
    std::map<int32_t, uint64_t> rings;
    for (size_t g = 0; g < n_gpus; ++g) {
      std::vector<size_t> members;
      for (size_t i = 0; i < n_blocks; ++i) {
        if (gpu_of[i] == g) members.push_back(i);
      }
      // Whole blocks (as B) or partly resident blocks with a ring of their streamed parts (as P), whichever keeps
      // more bytes on this GPU.
      std::vector<bool> keep;
      const RangeScore score = Score(members, budgets[g], false, &keep);
      const bool whole_ok = score.feasible;
      const uint64_t whole = score.resident;
      std::vector<BlockPlacement> partial = blocks;
      std::map<int32_t, uint64_t> partial_rings;
      const bool partial_ok = PartialSet(members, gpus[g], budgets[g], &partial, &partial_rings).ok();
      uint64_t kept = 0;
      for (size_t i : members) {
        const std::vector<Tier> t = WeightTiersOf(partial[i], sizes_[i].size());
        for (size_t w = 0; partial_ok && w < t.size(); ++w) kept += t[w] == Tier::kGpu ? sizes_[i][w] : 0;
      }
      if (partial_ok && (!whole_ok || kept > whole)) {
        for (size_t i : members) blocks[i] = partial[i];
        if (partial_rings.count(gpus[g])) rings[gpus[g]] = partial_rings[gpus[g]];
        continue;
      }
      if (!whole_ok) {
        return MakeError(ErrorCode::kInfeasible, "cuda:" + std::to_string(gpus[g]) + ": its striped blocks' " +
                                                     "activations, KV cache and ring do not fit its budget");
      }
      for (size_t t = 0; t < members.size(); ++t) {
        blocks[members[t]] = BlockPlacement{gpus[g], keep[t] ? Tier::kGpu : Tier::kCpu};
      }
    }
    for (size_t i = 0; i < n_blocks; ++i) {
      if (gpu_of[i] == n_gpus) blocks[i] = BlockPlacement{-1, Tier::kGpu};
    }
    return Candidate("S", std::move(blocks), rings, {});
  }

  // The bytes that bound a forward's copies, by how the GPUs' links work: striped (S), every link streams all along
  // the forward, so the busiest link's bytes; contiguous ranges (B, P, C), a GPU's link streams while its own range
  // computes (its ring holds only a few blocks ahead), so the links take turns: the sum over the GPUs.
  static uint64_t CopyBoundBytes(const Placement& p, const ModelDescription& model, DType exec, bool striped) {
    uint64_t worst = 0, sum = 0;
    for (const auto& [device, ring] : p.ring_bytes) {
      uint64_t bytes = 0;
      for (const StreamWeight& w : StreamWeightsFor(model, p.blocks, exec, device)) bytes += w.bytes;
      worst = std::max(worst, bytes);
      sum += bytes;
    }
    return striped ? worst : sum;
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

    // Ranges: the block-granular split when there is one, else one balanced by weight bytes.
    std::vector<std::pair<size_t, size_t>> ranges(n_gpus);
    const bool split_found = best[0][0].feasible;
    if (split_found) {
      size_t begin = 0;
      for (size_t g = 0; g < n_gpus; ++g) {
        const size_t end = choice[g][begin];
        ranges[g] = {begin, end};
        begin = end;
      }
    } else {
      uint64_t total = 0;
      for (uint64_t b : bytes_) total += b;
      size_t begin = 0;
      uint64_t acc = 0;
      for (size_t g = 0; g < n_gpus; ++g) {
        size_t end = begin;
        const uint64_t target = total / n_gpus * (g + 1);
        while (end < n_blocks && (g + 1 == n_gpus || acc + bytes_[end] / 2 <= target)) acc += bytes_[end++];
        ranges[g] = {begin, end};
        begin = end;
      }
    }

    std::vector<PlacementCandidate> report;
    std::optional<Placement> chosen;
    std::optional<Error> first_error;
    const std::string& allowed = req_.options.auto_candidates;
    auto enabled = [&](const char* name) { return allowed.find(name) != std::string::npos; };
    auto consider = [&](const std::string& name, Result<Placement> p) {
      PlacementCandidate c;
      c.name = name;
      if (!p.ok()) {
        c.why = p.error().message;
        if (!first_error) first_error = p.error();
        report.push_back(c);
        return;
      }
      c.feasible = true;
      for (const DeviceAccount& a : p->usage) {
        if (a.device.rfind("cuda:", 0) == 0) c.resident_bytes += a.resident_weights;
      }
      report.push_back(c);
      // Most resident bytes; ties keep the earlier candidate (B, then P, then C).
      if (!chosen || c.resident_bytes > ResidentBytes(*chosen)) chosen = std::move(*p);
    };

    // B: block-granular knapsack (the version-1 result), default rings.
    if (!enabled("B")) {
      report.push_back(PlacementCandidate{"B", false, 0, "not considered"});
    } else if (split_found) {
      for (size_t g = 0; g < n_gpus; ++g) {
        std::vector<bool> keep;
        Score(ranges[g].first, ranges[g].second, budgets[g], false, &keep);
        for (size_t i = ranges[g].first; i < ranges[g].second; ++i)
          blocks[i] = BlockPlacement{gpus[g], keep[i - ranges[g].first] ? Tier::kGpu : Tier::kCpu};
      }
      consider("B", Candidate("B", blocks, {}, {}));
    } else {
      PlacementCandidate c;
      c.name = "B";
      c.why = "no split of whole blocks over the GPUs fits their budgets";
      report.push_back(c);
    }
    // P: partially resident blocks, slots ring.
    if (!enabled("P")) {
      report.push_back(PlacementCandidate{"P", false, 0, "not considered"});
    } else {
      std::vector<BlockPlacement> pb(n_blocks);
      std::map<int32_t, uint64_t> rings;
      Status st = Status::Ok();
      for (size_t g = 0; g < n_gpus && st.ok(); ++g) st = PartialRange(ranges[g], gpus[g], budgets[g], &pb, &rings);
      consider("P", st.ok() ? Candidate("P", pb, rings, {}) : Result<Placement>(st.take_error()));
    }
    // C: chunked streaming through a ring of a quarter of what is left.
    if (!enabled("C")) {
      report.push_back(PlacementCandidate{"C", false, 0, "not considered"});
    } else {
      std::vector<BlockPlacement> cb(n_blocks);
      std::map<int32_t, uint64_t> rings, chunks;
      Status st = Status::Ok();
      for (size_t g = 0; g < n_gpus && st.ok(); ++g)
        st = ChunkedRange(ranges[g], gpus[g], budgets[g], &cb, &rings, &chunks);
      consider("C", st.ok() ? Candidate("C", cb, rings, chunks) : Result<Placement>(st.take_error()));
    }
    // E: a mixture-of-experts model: its blocks in contiguous ranges over the GPUs (one GPU: all of them), each GPU
    // keeping everything but its layers' routed experts resident, then as many of those experts as fit; the others
    // move to that GPU over its own link, or the host computes them, only when routed (planner/experts.h). Chosen
    // whenever it fits: a decode token then moves only its chosen experts, not whole layers.
    if (model_.config.num_experts > 0) {
      if (!enabled("E")) {
        report.push_back(PlacementCandidate{"E", false, 0, "not considered"});
      } else {
        Result<Placement> e = ExpertCandidate(gpus, budgets);
        if (e.ok()) {
          PlacementCandidate c{"E", true, ResidentBytes(*e), ""};
          report.push_back(c);
          chosen = std::move(*e);
        } else {
          report.push_back(PlacementCandidate{"E", false, 0, e.error().message});
        }
      }
    }
    // I: interleaved. A plan that keeps every block resident on two or more GPUs and serves batches (max_batch >= 2)
    // has its decoder layers dealt to the GPUs in rounds (each GPU's layers in groups of at least
    // kInterleaveMinGroup, 2 to kInterleaveMaxRounds groups; every GPU keeps as many layers as the contiguous
    // split gave it: the same memory; the embedding stays with the first group, the head with the last), so that the
    // executor's pipelined micro-batches keep every GPU busy: a shorter task fills and drains the pipeline sooner.
    // On 2x H200, a batch-8 prefill of 512-token rows of a Llama-3-8B shape (4 micro-batches of 2 rows, all in
    // flight) took 61.1 ms (median) contiguous, 53.0 ms in groups of 8 layers, 50.8 in groups of 4 and 50.0 in groups
    // of 2, while its graph-replayed decode step paid the hops between segments (about 15 us each): 4.879, 4.920,
    // 5.023 and 5.164 ms. Groups of 4 take most of the prefill's gain for 3% of the decode step.
    if (n_gpus >= 2 && req_.run.max_batch >= 2 && model_.config.num_experts == 0 && chosen &&
        CopyBoundBytes(*chosen, model_, req_.exec_dtype, false) == 0) {
      bool all_gpu = true;
      for (const BlockPlacement& b : chosen->blocks) all_gpu &= b.tier == Tier::kGpu && b.device >= 0;
      if (!enabled("I")) {
        report.push_back(PlacementCandidate{"I", false, 0, "not considered"});
      } else if (!all_gpu) {
        report.push_back(PlacementCandidate{"I", false, 0, "not every block is resident on a GPU"});
      } else {
        std::map<int32_t, std::vector<size_t>> layers_on;  // decoder layers per GPU, in order
        for (size_t i = 0; i < n_blocks; ++i) {
          if (model_.blocks[i].kind == BlockKind::kDecoderLayer) layers_on[chosen->blocks[i].device].push_back(i);
        }
        bool enough = layers_on.size() == n_gpus;
        for (const auto& [device, layers] : layers_on) enough &= layers.size() >= 2;
        if (!enough) {
          report.push_back(PlacementCandidate{"I", false, 0, "a GPU holds fewer than two decoder layers"});
        } else {
          // Rounds: as many groups of at least kInterleaveMinGroup layers as the GPU with the fewest layers makes
          // (2 to kInterleaveMaxRounds). Round r deals each GPU's group r (a share of its layers, the larger groups
          // first) in GPU order.
          size_t fewest = n_blocks;
          for (const auto& [device, layers] : layers_on) fewest = std::min(fewest, layers.size());
          const size_t rounds =
              std::clamp<size_t>(fewest / kInterleaveMinGroup, 2, std::min<size_t>(kInterleaveMaxRounds, fewest));
          std::vector<BlockPlacement> blocks = chosen->blocks;
          std::vector<size_t> layers;
          for (size_t i = 0; i < n_blocks; ++i) {
            if (model_.blocks[i].kind == BlockKind::kDecoderLayer) layers.push_back(i);
          }
          size_t next = 0;
          for (size_t round = 0; round < rounds; ++round) {
            for (int gpu : gpus) {
              const size_t count = layers_on[gpu].size();
              const size_t take = count / rounds + (round < count % rounds ? 1 : 0);
              for (size_t t = 0; t < take; ++t) blocks[layers[next++]] = BlockPlacement{gpu, Tier::kGpu};
            }
          }
          Result<Placement> il = Candidate("I", std::move(blocks), {}, {});
          if (il.ok()) {
            report.push_back(PlacementCandidate{"I", true, ResidentBytes(*il), ""});
            chosen = std::move(*il);
          } else {
            report.push_back(PlacementCandidate{"I", false, 0, il.error().message});
          }
        }
      }
    }
    // S: striped over several GPUs, chosen when the bytes that bound its copies (its busiest link's) are more than
    // 5% below the best other candidate's (all its GPUs' streamed bytes: their links take turns), or when no other
    // fits. An offloaded forward is bound by its copies.
    if (n_gpus >= 2 && model_.config.num_experts == 0) {
      if (!enabled("S")) {
        report.push_back(PlacementCandidate{"S", false, 0, "not considered"});
      } else if (chosen && CopyBoundBytes(*chosen, model_, req_.exec_dtype, false) == 0) {
        report.push_back(PlacementCandidate{"S", false, 0, "nothing streams"});
      } else {
        // Equal shares, and with two GPUs shares shifted by up to 3 layers (at most a tenth of them) either way (the
        // GPU holding the head has less room): the one whose busiest link copies least.
        // With the embedding on a GPU, and (when that streams and a cpu budget is given) on the host.
        Result<Placement> st = StripedCandidate(gpus, budgets, std::vector<double>(n_gpus, 1.0 / n_gpus), false);
        auto consider_striped = [&](const std::vector<double>& shares, bool host_embedding) {
          Result<Placement> other = StripedCandidate(gpus, budgets, shares, host_embedding);
          if (!other.ok()) return;
          if (!st.ok() || CopyBoundBytes(*other, model_, req_.exec_dtype, true) <
                              CopyBoundBytes(*st, model_, req_.exec_dtype, true)) {
            st = std::move(other);
          }
        };
        const bool streams = !st.ok() || CopyBoundBytes(*st, model_, req_.exec_dtype, true) > 0;
        for (bool host_embedding : {false, true}) {
          if (host_embedding && (!streams || !req_.budget.cpu)) continue;
          if (host_embedding) consider_striped(std::vector<double>(n_gpus, 1.0 / n_gpus), true);
          if (n_gpus != 2 || model_.config.num_layers == 0) continue;
          const double step = 1.0 / model_.config.num_layers;
          const int most = static_cast<int>(std::min<uint32_t>(3, model_.config.num_layers / 10));  // <= 10% of them
          for (int k = -most; k <= most; ++k) {
            if (k != 0) consider_striped({0.5 + k * step, 0.5 - k * step}, host_embedding);
          }
        }
        if (st.ok()) {
          PlacementCandidate c{"S", true, ResidentBytes(*st), ""};
          report.push_back(c);
          const uint64_t mine = CopyBoundBytes(*st, model_, req_.exec_dtype, true);
          const uint64_t best = chosen ? CopyBoundBytes(*chosen, model_, req_.exec_dtype, false) : UINT64_MAX;
          if (!chosen || mine < best - best / 20) chosen = std::move(*st);
        } else {
          report.push_back(PlacementCandidate{"S", false, 0, st.error().message});
        }
      }
    }
    if (!chosen) {
      Error e = !split_found || !first_error ? Infeasible(gpus) : *first_error;
      // A mixture-of-experts model: why its own placement did not fit either.
      for (const PlacementCandidate& c : report) {
        if (c.name == "E" && !c.feasible && c.why != "not considered") e.message += "; placement E: " + c.why;
      }
      return e;
    }
    chosen->candidates = std::move(report);
    return std::move(*chosen);
  }

 private:
  static uint64_t ResidentBytes(const Placement& p) {
    uint64_t r = 0;
    for (const DeviceAccount& a : p.usage) {
      if (a.device.rfind("cuda:", 0) == 0) r += a.resident_weights;
    }
    return r;
  }

  // A candidate: host tiers for its streamed weights, the accounting (always enforced: candidates are compared
  // only when they fit), and each streaming device's units built in its ring (which runs the stream checker).
  Result<Placement> Candidate(const std::string& name, std::vector<BlockPlacement> blocks,
                              std::map<int32_t, uint64_t> rings, std::map<int32_t, uint64_t> chunks) const {
    AssignHostTiers(blocks);
    PlacementRequest req = req_;
    req.options.enforce_budget = true;
    BIGPLAN_ASSIGN_OR_RETURN(Placement p, FinishPlacement(req, "auto", std::move(blocks), rings, chunks));
    for (const auto& [device, ring] : p.ring_bytes) {
      const std::vector<StreamWeight> weights = StreamWeightsFor(model_, p.blocks, req_.exec_dtype, device);
      if (weights.empty()) continue;
      StreamOptions so;
      so.ring_bytes = ring;
      auto c = p.chunk_bytes.find(device);
      if (c != p.chunk_bytes.end()) so.chunk_bytes = c->second;
      Result<DeviceStreamPlan> stream = BuildDeviceStream(device, weights, so);
      if (!stream.ok()) return WithContext(stream.take_error(), "candidate " + name);
    }
    p.chosen = name;
    return p;
  }

  // Candidate E: contiguous ranges of blocks, one per GPU in order (one GPU: every block). On each GPU its blocks'
  // weights other than the routed experts and, unless all its experts fit too, an expert ring (ExpertRingSlots of
  // the model's largest expert) are resident, then its layers' experts spread while they fit what is left
  // (SpreadResidentExperts); the rest are routed. Over several GPUs the split keeps the most expert bytes resident
  // (each GPU's layers' non-resident experts cross that GPU's own link); among equals, the one whose GPU with the
  // most non-resident expert bytes has the fewest, then the one whose GPU with the most weights has the fewest.
  Result<Placement> ExpertCandidate(const std::vector<int>& gpus, const std::vector<uint64_t>& budgets) const {
    const size_t n = model_.blocks.size(), n_gpus = gpus.size();
    std::vector<uint64_t> fixed(n, 0), experts(n, 0);
    uint64_t largest_expert = 0;
    std::string quantized_expert;  // a quantized routed-expert matrix (--weights), if any
    for (size_t i = 0; i < n; ++i) {
      std::map<int32_t, uint64_t> per_expert;
      for (size_t w = 0; w < sizes_[i].size(); ++w) {
        const int32_t e = ExpertOfWeight(model_, i, w);
        if (e < 0) {
          fixed[i] += sizes_[i][w];
        } else {
          per_expert[e] += sizes_[i][w];
          experts[i] += sizes_[i][w];
          if (quantized_expert.empty() && w < model_.blocks[i].params.size() &&
              model_.blocks[i].params[w].format != quant::Format::kNone) {
            quantized_expert = model_.blocks[i].params[w].name;
          }
        }
      }
      for (const auto& [e, b] : per_expert) largest_expert = std::max(largest_expert, b);
    }
    const uint64_t ring_bytes = uint64_t{ExpertRingSlots(model_.config)} * largest_expert;
    // One GPU's range [begin, end): what it leaves for resident experts, and its ring; an error when its other
    // weights and ring do not fit.
    struct Range {
      uint64_t avail = 0, fixed = 0, experts = 0, ring = 0;
      uint64_t resident() const { return std::min(experts, avail - fixed - ring); }
      uint64_t routed() const { return experts - resident(); }
      uint64_t weights() const { return fixed + experts; }
    };
    auto range = [&](size_t begin, size_t end, size_t g) -> Result<Range> {
      Range r;
      BIGPLAN_ASSIGN_OR_RETURN(r.avail, Available(std::make_pair(begin, end), gpus[g], budgets[g]));
      for (size_t i = begin; i < end; ++i) {
        r.fixed += fixed[i];
        r.experts += experts[i];
      }
      r.ring = r.fixed + r.experts <= r.avail ? 0 : ring_bytes;
      if (r.fixed + r.ring > r.avail) {
        // The budget that would leave them room (the rest of the budget's use stays as it is), in tenths of a GiB.
        const uint64_t tenth = (uint64_t{1} << 30) / 10;
        const uint64_t needed = (budgets[g] + (r.fixed + r.ring - r.avail) + tenth - 1) / tenth;
        return MakeError(ErrorCode::kInfeasible,
                         "cuda:" + std::to_string(gpus[g]) + ": the weights other than the routed experts (" +
                             FormatBytes(r.fixed) + ") and an expert ring of " + FormatBytes(r.ring) + " exceed the " +
                             FormatBytes(r.avail) + " left for weights (routing experts from this GPU needs cuda:" +
                             std::to_string(gpus[g]) + "=" + std::to_string(needed / 10) + "." +
                             std::to_string(needed % 10) + "GiB" +
                             (quantized_expert.empty() ? ", or smaller weights: --weights int8 or int4" : "") + ")");
      }
      return r;
    };
    std::vector<size_t> ends(n_gpus, n);  // GPU g's range ends at ends[g] (and begins where g - 1's ends)
    if (n_gpus > 1) {
      // best[g][i]: the most resident expert bytes GPUs g.. reach covering blocks i.. (and their largest routed
      // bytes and weights on one GPU); end_of[g][i]: GPU g's range end.
      struct Best {
        bool feasible = false;
        uint64_t resident = 0, max_routed = 0, max_weights = 0;
        bool Beats(const Best& o) const {
          if (!o.feasible) return feasible;
          if (resident != o.resident) return resident > o.resident;
          if (max_routed != o.max_routed) return max_routed < o.max_routed;
          return max_weights < o.max_weights;
        }
      };
      std::vector<std::vector<Best>> best(n_gpus + 1, std::vector<Best>(n + 1));
      std::vector<std::vector<size_t>> end_of(n_gpus + 1, std::vector<size_t>(n + 1, n));
      best[n_gpus][n] = Best{true, 0, 0, 0};
      std::optional<Error> why;
      for (size_t g = n_gpus; g-- > 0;) {
        for (size_t i = 0; i <= n; ++i) {
          if (g == 0 && i > 0) break;
          Best b;
          for (size_t end = i; end <= n; ++end) {
            const Best& rest = best[g + 1][end];
            if (!rest.feasible) continue;
            Result<Range> r = range(i, end, g);
            if (!r.ok()) {
              if (!why) why = r.error();
              continue;
            }
            const Best cand{true, r->resident() + rest.resident, std::max(r->routed(), rest.max_routed),
                            std::max(r->weights(), rest.max_weights)};
            if (cand.Beats(b)) {
              b = cand;
              end_of[g][i] = end;
            }
          }
          best[g][i] = b;
        }
      }
      if (!best[0][0].feasible) {
        uint64_t all_fixed = 0;
        for (uint64_t f : fixed) all_fixed += f;
        return MakeError(ErrorCode::kInfeasible,
                         "no split of the blocks over the GPUs fits each one's weights other than the routed experts (" +
                             FormatBytes(all_fixed) + " in all) and an expert ring of " + FormatBytes(ring_bytes) +
                             (why ? " (e.g. " + why->message + ")" : std::string()));
      }
      for (size_t g = 0, begin = 0; g < n_gpus; ++g) begin = ends[g] = end_of[g][begin];
    }
    std::vector<BlockPlacement> blocks(n);
    for (size_t g = 0, begin = 0; g < n_gpus; begin = ends[g++]) {
      BIGPLAN_ASSIGN_OR_RETURN(const Range r, range(begin, ends[g], g));
      for (size_t i = begin; i < ends[g]; ++i) blocks[i] = BlockPlacement{gpus[g], Tier::kGpu};
      SpreadResidentExperts(model_, req_.exec_dtype, r.avail - r.fixed - r.ring, &blocks, gpus[g]);
    }
    BIGPLAN_ASSIGN_OR_RETURN(Placement p, Candidate("E", std::move(blocks), {}, {}));
    // Quantized experts (--weights, or a pre-quantized checkpoint) move from pinned memory only: a disk read would
    // have to convert the checkpoint's values on the way (executor/expert_engine.h).
    if (!quantized_expert.empty()) {
      uint64_t on_disk = 0, routed = 0;
      for (size_t i = 0; i < n; ++i) {
        if (!p.blocks[i].routed_experts) continue;
        const std::vector<Tier> tiers = WeightTiersOf(p.blocks[i], sizes_[i].size());
        for (size_t w = 0; w < tiers.size(); ++w) {
          if (tiers[w] == Tier::kGpu || ExpertOfWeight(model_, i, w) < 0) continue;
          routed += sizes_[i][w];
          if (tiers[w] == Tier::kDisk) on_disk += sizes_[i][w];
        }
      }
      if (on_disk > 0) {
        return MakeError(ErrorCode::kInfeasible,
                         FormatBytes(on_disk) + " of the " + FormatBytes(routed) + " of routed experts would rest on "
                         "disk beyond the CPU budget, and quantized experts (e.g. " + quantized_expert +
                         ") move to the GPU from pinned memory only");
      }
    }
    return p;
  }

  // What a GPU's range leaves for weights and its ring: budget - reserve - activations - KV; kInfeasible if none.
  Result<uint64_t> Available(std::pair<size_t, size_t> range, int gpu, uint64_t budget) const {
    return Available(Members(range), gpu, budget);
  }
  Result<uint64_t> Available(const std::vector<size_t>& members, int gpu, uint64_t budget) const {
    const uint64_t overhead = Overhead(members, false);
    if (overhead > budget) {
      return MakeError(ErrorCode::kInfeasible, "cuda:" + std::to_string(gpu) + ": the reserve, activations and KV "
                                                   "cache (" + FormatBytes(overhead) + ") exceed its budget");
    }
    return budget - overhead;
  }

  // The subset sums of one block signature (its weights' aligned sizes): exact for <= kMaxExact weights (each
  // distinct sum with one subset), else the prefix sums of the largest-first order (greedy).
  static constexpr size_t kMaxExact = 16;
  struct SubsetTable {
    std::vector<uint64_t> sizes;
    std::vector<uint64_t> sums;    // sorted, distinct (exact), or the candidates (greedy)
    std::vector<uint32_t> masks;   // parallel to sums (exact)
    bool exact = true;
  };
  const SubsetTable& TableFor(const std::vector<uint64_t>& sizes) const {
    auto it = tables_.find(sizes);
    if (it != tables_.end()) return it->second;
    SubsetTable t;
    t.sizes = sizes;
    const size_t n = sizes.size();
    if (n <= kMaxExact) {
      std::vector<uint64_t> sum(size_t{1} << n, 0);
      std::map<uint64_t, uint32_t> first;
      for (uint32_t mask = 0; mask < (1u << n); ++mask) {
        if (mask) {
          const uint32_t low = mask & (~mask + 1);
          sum[mask] = sum[mask ^ low] + sizes[__builtin_ctz(low)];
        }
        first.emplace(sum[mask], mask);
      }
      for (const auto& [v, mask] : first) {
        t.sums.push_back(v);
        t.masks.push_back(mask);
      }
    } else {
      t.exact = false;
      std::vector<uint64_t> desc = sizes;
      std::sort(desc.begin(), desc.end(), std::greater<>());
      uint64_t acc = 0;
      t.sums.push_back(0);
      for (uint64_t v : desc) {
        acc += v;
        t.sums.push_back(acc);
        t.sums.push_back(v);
      }
      std::sort(t.sums.begin(), t.sums.end());
      t.sums.erase(std::unique(t.sums.begin(), t.sums.end()), t.sums.end());
    }
    return tables_.emplace(sizes, std::move(t)).first->second;
  }
  // The streamed subset of largest sum <= x: its sum and which weights (a bit per weight).
  static std::pair<uint64_t, std::vector<bool>> BestSubset(const SubsetTable& t, uint64_t x) {
    std::vector<bool> in(t.sizes.size(), false);
    if (t.exact) {
      auto it = std::upper_bound(t.sums.begin(), t.sums.end(), x);
      const size_t k = static_cast<size_t>(it - t.sums.begin()) - 1;  // sums[0] == 0 <= x
      for (size_t w = 0; w < t.sizes.size(); ++w) in[w] = (t.masks[k] >> w) & 1u;
      return {t.sums[k], in};
    }
    std::vector<size_t> order(t.sizes.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return t.sizes[a] > t.sizes[b]; });
    uint64_t sum = 0;
    for (size_t w : order) {
      if (sum + t.sizes[w] <= x) {
        sum += t.sizes[w];
        in[w] = true;
      }
    }
    return {sum, in};
  }

  // Candidate P on one GPU's range: everything resident if it fits; else the smallest per-block stream cap X such
  // that each block streams its subset of largest sum <= X, and the rest plus a ring of min(#streaming blocks,
  // depth + 1) slots of the largest stream X' fit.
  Status PartialRange(std::pair<size_t, size_t> range, int gpu, uint64_t budget, std::vector<BlockPlacement>* blocks,
                      std::map<int32_t, uint64_t>* rings) const {
    return PartialSet(Members(range), gpu, budget, blocks, rings);
  }
  // The same for any set of blocks (execution order).
  Status PartialSet(const std::vector<size_t>& members, int gpu, uint64_t budget, std::vector<BlockPlacement>* blocks,
                    std::map<int32_t, uint64_t>* rings) const {
    if (members.empty()) return Status::Ok();
    BIGPLAN_ASSIGN_OR_RETURN(const uint64_t avail, Available(members, gpu, budget));
    uint64_t total = 0;
    for (size_t i : members)
      for (uint64_t v : sizes_[i]) total += v;
    for (size_t i : members) (*blocks)[i] = BlockPlacement{gpu, Tier::kGpu};
    if (total <= avail) return Status::Ok();
    std::vector<uint64_t> xs;
    for (size_t i : members) {
      const SubsetTable& t = TableFor(sizes_[i]);
      xs.insert(xs.end(), t.sums.begin(), t.sums.end());
    }
    std::sort(xs.begin(), xs.end());
    xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
    const size_t n = members.size();
    for (uint64_t x : xs) {
      if (x == 0) continue;
      uint64_t streamed = 0, largest = 0, n_streaming = 0;
      for (size_t i : members) {
        const uint64_t s = BestSubset(TableFor(sizes_[i]), x).first;
        streamed += s;
        largest = std::max(largest, s);
        n_streaming += s > 0;
      }
      const uint64_t ring = StagingBufferCount(n_streaming, depth_) * largest;
      if (total - streamed + ring > avail) continue;
      std::vector<std::vector<bool>> in(n);
      std::vector<uint64_t> stream(n, 0);
      for (size_t k = 0; k < n; ++k) std::tie(stream[k], in[k]) = BestSubset(TableFor(sizes_[members[k]]), x);
      // What the cap leaves unused: streamed weights (largest first, then in execution order) become resident while
      // the resident bytes and the ring (which shrinks with the largest stream) still fit.
      auto ring_of = [&](const std::vector<uint64_t>& st) {
        uint64_t c = 0, m = 0;
        for (uint64_t v : st) {
          c += v > 0;
          m = std::max(m, v);
        }
        return StagingBufferCount(c, depth_) * m;
      };
      uint64_t resident = total - streamed;
      std::vector<std::pair<size_t, size_t>> movable;  // (member, weight)
      for (size_t k = 0; k < in.size(); ++k)
        for (size_t w = 0; w < in[k].size(); ++w)
          if (in[k][w]) movable.emplace_back(k, w);
      std::stable_sort(movable.begin(), movable.end(), [&](const auto& a, const auto& b) {
        return sizes_[members[a.first]][a.second] > sizes_[members[b.first]][b.second];
      });
      for (const auto& [k, w] : movable) {
        const uint64_t v = sizes_[members[k]][w];
        stream[k] -= v;
        if (resident + v + ring_of(stream) <= avail) {
          resident += v;
          in[k][w] = false;
        } else {
          stream[k] += v;
        }
      }
      for (size_t k = 0; k < n; ++k) {
        std::vector<Tier> tiers(in[k].size(), Tier::kGpu);
        for (size_t w = 0; w < tiers.size(); ++w) tiers[w] = in[k][w] ? Tier::kCpu : Tier::kGpu;
        (*blocks)[members[k]].weight_tiers = tiers;
      }
      (*rings)[gpu] = ring_of(stream);
      return Status::Ok();
    }
    return MakeError(ErrorCode::kInfeasible, "cuda:" + std::to_string(gpu) + ": no per-block stream cap fits " +
                                                 FormatBytes(avail) + " (weights " + FormatBytes(total) + ")");
  }

  static std::vector<size_t> Members(std::pair<size_t, size_t> range) {
    std::vector<size_t> m;
    for (size_t i = range.first; i < range.second; ++i) m.push_back(i);
    return m;
  }

  // Candidate C on one GPU's range: a ring R = clamp(avail / 4, 256 MiB, 2 GiB) with chunks of R / 8; whole weights
  // resident in execution order (largest first within a block) while they fit avail - R; the rest streamed.
  Status ChunkedRange(std::pair<size_t, size_t> range, int gpu, uint64_t budget, std::vector<BlockPlacement>* blocks,
                      std::map<int32_t, uint64_t>* rings, std::map<int32_t, uint64_t>* chunks) const {
    const size_t begin = range.first, end = range.second;
    if (begin == end) return Status::Ok();
    BIGPLAN_ASSIGN_OR_RETURN(const uint64_t avail, Available(range, gpu, budget));
    const uint64_t ring = std::clamp<uint64_t>(avail / 4, kMinChunkRing, kMaxChunkRing) / kWeightAlignment * kWeightAlignment;
    if (ring >= avail) {
      return MakeError(ErrorCode::kInfeasible, "cuda:" + std::to_string(gpu) + ": a chunk ring of " +
                                                   FormatBytes(ring) + " does not fit " + FormatBytes(avail));
    }
    uint64_t used = 0;
    bool streams = false;
    for (size_t i = begin; i < end; ++i) {
      const std::vector<uint64_t>& sz = sizes_[i];
      std::vector<size_t> order(sz.size());
      for (size_t w = 0; w < order.size(); ++w) order[w] = w;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sz[a] > sz[b]; });
      std::vector<Tier> tiers(sz.size(), Tier::kCpu);
      for (size_t w : order) {
        if (used + sz[w] <= avail - ring) {
          used += sz[w];
          tiers[w] = Tier::kGpu;
        } else {
          streams = true;
        }
      }
      (*blocks)[i] = BlockPlacement{gpu, Tier::kGpu, tiers};
    }
    if (streams) {
      (*rings)[gpu] = ring;
      (*chunks)[gpu] = std::max(kWeightAlignment, ring / 8 / kWeightAlignment * kWeightAlignment);
    }
    return Status::Ok();
  }

  // Streamed weights (every weight not in the Gpu tier) rest in the CPU tier while the cpu budget holds them and the
  // disk rings of the rest, in execution order; the others on disk. The disk rings are bounded, at each decision,
  // by the largest disk slot of the weights already on disk or not yet decided, per device. Then each block's
  // weight_tiers is dropped when all its weights share one tier, and `tier` is the slowest of them.
  void AssignHostTiers(std::vector<BlockPlacement>& blocks) const {
    // An item: one streamed weight, or a routed expert's matrices (they rest together, planner/experts.h). `ring`
    // 0: the stream's disk ring (StreamOptions::disk_slots slots); 1: the expert disk ring (kExpertDiskSlots).
    struct Item {
      size_t block;
      std::vector<size_t> weights;
      int32_t device;
      uint64_t bytes, slot;
      int ring;
    };
    std::vector<std::vector<Tier>> tiers(blocks.size());
    std::vector<Item> items;
    uint64_t total = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      tiers[i] = WeightTiersOf(blocks[i], layouts_[i].weights.size());
      std::map<int32_t, size_t> expert_item;
      for (size_t w = 0; w < tiers[i].size(); ++w) {
        if (tiers[i][w] == Tier::kGpu) continue;
        tiers[i][w] = Tier::kCpu;
        const WeightSlot& ws = layouts_[i].weights[w];
        const uint64_t a = kDiskSlotAlignment;
        const int32_t expert = blocks[i].routed_experts ? ExpertOfWeight(model_, i, w) : -1;
        if (expert >= 0) {
          auto [it, fresh] = expert_item.try_emplace(expert, items.size());
          if (fresh) items.push_back({i, {}, blocks[i].device, 0, 0, 1});
          Item& item = items[it->second];
          item.weights.push_back(w);
          item.bytes += AlignUp(ws.size_bytes);
          item.slot = (item.bytes + a - 1) / a * a + a;
          total += AlignUp(ws.size_bytes);
          continue;
        }
        int64_t numel = 1;
        for (int64_t d : ws.shape) numel *= d;
        const uint64_t file = static_cast<uint64_t>(numel) * DTypeBytes(ws.src_dtype);
        const uint64_t slot = ws.src_dtype != ws.dtype ? (std::max(ws.size_bytes, file) + a - 1) / a * a
                                                       : (file + a - 1) / a * a + a;
        items.push_back({i, {w}, blocks[i].device, AlignUp(ws.size_bytes), ws.size_bytes == 0 ? 0 : slot, 0});
        total += items.back().bytes;
      }
    }
    const uint64_t cap = req_.budget.cpu.value_or(0);
    if (total > cap) {
      const uint64_t ring_slots[2] = {StreamOptions{}.disk_slots, kExpertDiskSlots};
      using Key = std::pair<int32_t, int>;  // (device, ring)
      std::map<Key, std::vector<uint64_t>> suffix;  // max slot of items k.. of that device and ring
      for (const Item& it : items) suffix[{it.device, it.ring}];
      for (auto& [key, v] : suffix) {
        v.assign(items.size() + 1, 0);
        for (size_t k = items.size(); k-- > 0;) {
          v[k] = std::max(v[k + 1], Key{items[k].device, items[k].ring} == key ? items[k].slot : 0);
        }
      }
      std::map<Key, uint64_t> on_disk;
      uint64_t used = 0;
      for (size_t k = 0; k < items.size(); ++k) {
        const Item& it = items[k];
        uint64_t bound = 0;
        for (const auto& [key, v] : suffix) {
          if (key.first < 0) continue;  // no disk ring on the CPU
          bound += ring_slots[key.second] * std::max(on_disk[key], v[k + 1]);
        }
        if (used + it.bytes + bound <= cap) {
          used += it.bytes;
        } else {
          for (size_t w : it.weights) tiers[it.block][w] = Tier::kDisk;
          on_disk[{it.device, it.ring}] = std::max(on_disk[{it.device, it.ring}], it.slot);
        }
      }
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      const std::vector<Tier>& t = tiers[i];
      const bool uniform = std::all_of(t.begin(), t.end(), [&](Tier x) { return x == t.front(); });
      if (t.empty() || (uniform && !blocks[i].routed_experts)) {
        if (!t.empty()) blocks[i].tier = t.front();
        blocks[i].weight_tiers.clear();
      } else {
        blocks[i].weight_tiers = t;
        blocks[i].tier = SlowestTier(t);
      }
    }
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
  std::vector<BlockWeightLayout> layouts_;
  std::vector<std::vector<uint64_t>> sizes_;  // per block: each weight's aligned bytes
  mutable std::map<std::vector<uint64_t>, SubsetTable> tables_;
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
