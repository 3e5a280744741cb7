#include "planner/streaming.h"

#include <algorithm>
#include <map>

#include "planner/accounting.h"
#include "support/units.h"

namespace bigplan {
namespace {

uint64_t Align(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

bool Overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1) { return a0 < b1 && b0 < a1; }

std::string DeviceLabel(int32_t device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

// Host-event positions of one forward pass (see streaming.h): acquire and release positions per unit.
struct Positions {
  std::vector<int64_t> acquire, release;
  int64_t per_forward = 0;
};

Positions HostPositions(const std::vector<StreamUnitPlan>& units) {
  Positions p;
  p.acquire.resize(units.size());
  p.release.resize(units.size());
  int64_t pos = 0;
  size_t i = 0;
  while (i < units.size()) {
    const uint32_t block = units[i].block;
    size_t end = i;
    while (end < units.size() && units[end].block == block) ++end;
    const int64_t begin_pos = pos++;
    for (size_t u = i; u < end; ++u) {
      if (units[u].whole) {
        p.acquire[u] = begin_pos;
      } else {
        p.acquire[u] = pos++;
        p.release[u] = pos++;
      }
    }
    const int64_t end_pos = pos++;
    for (size_t u = i; u < end; ++u) {
      if (units[u].whole) p.release[u] = end_pos;
    }
    i = end;
  }
  p.per_forward = pos;
  return p;
}

// Subtracts [b0, b1) from a set of disjoint intervals; true if anything was removed.
bool Cut(std::vector<std::pair<uint64_t, uint64_t>>* open, uint64_t b0, uint64_t b1) {
  bool cut = false;
  std::vector<std::pair<uint64_t, uint64_t>> next;
  for (auto [a0, a1] : *open) {
    if (!Overlap(a0, a1, b0, b1)) {
      next.emplace_back(a0, a1);
      continue;
    }
    cut = true;
    if (a0 < b0) next.emplace_back(a0, b0);
    if (b1 < a1) next.emplace_back(b1, a1);
  }
  *open = std::move(next);
  return cut;
}

// For each unit, the most recent earlier occupants (cyclically, over the previous forward pass too) of its
// [offset, offset + size) range, as signed indices (negative: index - n, the previous pass).
template <typename Range>
std::vector<std::vector<int64_t>> RecentOccupants(size_t n, const std::vector<size_t>& members, Range range) {
  std::vector<std::vector<int64_t>> out(n);
  const size_t m = members.size();
  for (size_t k = 0; k < m; ++k) {
    const size_t u = members[k];
    auto [u0, u1] = range(u);
    std::vector<std::pair<uint64_t, uint64_t>> open{{u0, u1}};
    for (size_t back = 1; back <= m && !open.empty(); ++back) {
      const int64_t kk = static_cast<int64_t>(k) - static_cast<int64_t>(back);
      const size_t p = members[(kk % static_cast<int64_t>(m) + m) % m];
      auto [p0, p1] = range(p);
      if (Cut(&open, p0, p1)) out[u].push_back(kk < 0 ? static_cast<int64_t>(p) - static_cast<int64_t>(n) : p);
    }
  }
  return out;
}

}  // namespace

uint64_t DeviceStreamPlan::streamed_bytes() const {
  uint64_t b = 0;
  for (const StreamUnitPlan& u : units) b += u.bytes;
  return b;
}

uint64_t LargestBlockStream(const std::vector<StreamWeight>& weights) {
  std::map<uint32_t, uint64_t> per_block;
  for (const StreamWeight& w : weights) {
    // A weight with host rows lies in the ring as two chunks, each aligned.
    per_block[w.block] += w.host_rows > 0 ? AlignUp(static_cast<uint64_t>(w.rows - w.host_rows) * w.row_bytes) +
                                                AlignUp(static_cast<uint64_t>(w.host_rows) * w.row_bytes)
                                          : AlignUp(w.bytes);
  }
  uint64_t m = 0;
  for (const auto& [b, bytes] : per_block) m = std::max(m, bytes);
  return m;
}

Result<DeviceStreamPlan> BuildDeviceStream(int32_t device, const std::vector<StreamWeight>& weights,
                                           const StreamOptions& options) {
  DeviceStreamPlan s;
  s.device = device;
  s.ring_bytes = AlignUp(options.ring_bytes);
  if (weights.empty()) {
    s.layout = "slots";
    s.ring_bytes = 0;
    return s;
  }
  const uint64_t ring = s.ring_bytes;
  const std::string where = "streaming to " + DeviceLabel(device) + ": ";
  if (ring == 0) return MakeError(ErrorCode::kInfeasible, where + "weights are streamed but the ring is empty");
  // Blocks in order, with their weights.
  std::vector<std::pair<size_t, size_t>> blocks;  // [begin, end) into weights
  for (size_t i = 0; i < weights.size();) {
    size_t e = i;
    while (e < weights.size() && weights[e].block == weights[i].block) ++e;
    for (size_t j = 0; j < i; ++j) {
      if (weights[j].block == weights[i].block)
        return MakeError(ErrorCode::kInternal, where + "a block's streamed weights are not contiguous");
    }
    blocks.emplace_back(i, e);
    i = e;
  }
  for (const StreamWeight& w : weights) {
    if (w.host_rows < 0 || w.host_rows >= w.rows || (w.host_rows > 0 && (w.source != Tier::kCpu || !w.chunkable)))
      return MakeError(ErrorCode::kInternal, where + "block " + std::to_string(w.block) + " weight " +
                                                 std::to_string(w.weight) + ": bad host rows " +
                                                 std::to_string(w.host_rows) + " of " + std::to_string(w.rows));
  }
  const uint64_t largest = LargestBlockStream(weights);
  auto unit_of = [](const StreamWeight& w, int64_t r0, int64_t r1, bool whole) {
    StreamUnitPlan u;
    u.block = w.block;
    u.weight = w.weight;
    u.row_begin = r0;
    u.row_end = r1;
    u.source = w.source;
    u.format = w.format;
    u.whole = whole;
    const bool all = r0 == 0 && r1 == w.rows;
    u.bytes = all ? w.bytes : static_cast<uint64_t>(r1 - r0) * w.row_bytes;
    u.file_bytes = all ? w.file_bytes : static_cast<uint64_t>(r1 - r0) * w.file_row_bytes;
    return u;
  };
  if (2 * largest <= ring && options.chunk_bytes == 0) {
    s.layout = "slots";
    s.slots = static_cast<uint32_t>(std::min<uint64_t>(ring / largest, blocks.size()));
    uint32_t k = 0;
    for (auto [b, e] : blocks) {
      uint64_t off = (k % s.slots) * largest;
      ++k;
      std::vector<size_t> split;
      for (size_t i = b; i < e; ++i) {
        if (weights[i].host_rows > 0) {
          split.push_back(i);
          continue;
        }
        StreamUnitPlan u = unit_of(weights[i], 0, weights[i].rows, true);
        u.ring_offset = off;
        off += AlignUp(u.bytes);
        s.units.push_back(u);
      }
      // Weights with host rows: two chunks each (the GPU's rows, then the host's), in consumption order.
      std::stable_sort(split.begin(), split.end(),
                       [&](size_t x, size_t y) { return weights[x].order < weights[y].order; });
      for (size_t i : split) {
        const StreamWeight& w = weights[i];
        const int64_t g = w.rows - w.host_rows;
        for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, g}, std::pair<int64_t, int64_t>{g, w.rows}}) {
          StreamUnitPlan u = unit_of(w, r0, r1, false);
          u.host = r0 == g;
          u.ring_offset = off;
          off += AlignUp(u.bytes);
          s.chunk_bytes = std::max(s.chunk_bytes, u.bytes);
          s.units.push_back(u);
        }
      }
    }
    s.ring_bytes = AlignUp(uint64_t{s.slots} * largest);
  } else {
    // Two FIFOs: whole units in [0, whole_region), chunks in [whole_region, ring). A block's whole units are
    // held while its chunks stream, so chunks must never wrap onto them. The chunk size halves until two blocks'
    // whole units and two chunks fit.
    s.layout = "chunks";
    uint64_t c = options.chunk_bytes ? options.chunk_bytes : ring / 4;
    c = std::max<uint64_t>(kWeightAlignment, c / kWeightAlignment * kWeightAlignment);
    uint64_t whole_region = 0;
    for (;;) {
      uint64_t max_whole = 0, max_chunk = 0;
      for (auto [b, e] : blocks) {
        uint64_t whole = 0;
        for (size_t i = b; i < e; ++i) {
          const StreamWeight& w = weights[i];
          if ((w.chunkable && w.bytes > c) || w.host_rows > 0) {
            const uint64_t rows_per = std::max<uint64_t>(1, c / std::max<uint64_t>(1, w.row_bytes));
            max_chunk = std::max(max_chunk, AlignUp(std::min<uint64_t>(rows_per, w.rows) * w.row_bytes));
          } else {
            whole += AlignUp(w.bytes);
          }
        }
        max_whole = std::max(max_whole, whole);
      }
      whole_region = 2 * max_whole;
      if (whole_region + 2 * max_chunk <= ring) break;
      if (c <= kWeightAlignment || options.chunk_bytes) {
        return MakeError(ErrorCode::kInfeasible,
                         where + "a ring of " + FormatBytes(ring) + " cannot hold two blocks' whole weights (" +
                             FormatBytes(whole_region) + ") and two chunks (" + FormatBytes(2 * max_chunk) + ")");
      }
      c = std::max<uint64_t>(kWeightAlignment, c / 2 / kWeightAlignment * kWeightAlignment);
    }
    uint64_t whole_cursor = 0, chunk_cursor = whole_region;
    auto place = [&](StreamUnitPlan u) {
      const uint64_t size = AlignUp(u.bytes);
      uint64_t& cursor = u.whole ? whole_cursor : chunk_cursor;
      const uint64_t begin = u.whole ? 0 : whole_region, end = u.whole ? whole_region : ring;
      if (cursor + size > end) cursor = begin;
      u.ring_offset = cursor;
      cursor += size;
      s.units.push_back(u);
    };
    for (auto [b, e] : blocks) {
      std::vector<size_t> chunked;
      for (size_t i = b; i < e; ++i) {
        const StreamWeight& w = weights[i];
        if ((w.chunkable && w.bytes > c) || w.host_rows > 0) {
          chunked.push_back(i);
        } else {
          place(unit_of(w, 0, w.rows, true));
        }
      }
      std::stable_sort(chunked.begin(), chunked.end(),
                       [&](size_t x, size_t y) { return weights[x].order < weights[y].order; });
      for (size_t i : chunked) {
        const StreamWeight& w = weights[i];
        const int64_t rows_per = std::max<int64_t>(1, static_cast<int64_t>(c / std::max<uint64_t>(1, w.row_bytes)));
        // The GPU's rows, then the host's (if any), each cut into chunks of rows_per rows.
        const int64_t g = w.rows - w.host_rows;
        for (auto [p0, p1] : {std::pair<int64_t, int64_t>{0, g}, std::pair<int64_t, int64_t>{g, w.rows}}) {
          for (int64_t r = p0; r < p1; r += rows_per) {
            StreamUnitPlan u = unit_of(w, r, std::min(p1, r + rows_per), false);
            u.host = p0 == g && w.host_rows > 0;
            s.chunk_bytes = std::max(s.chunk_bytes, u.bytes);
            place(u);
          }
        }
      }
    }
  }

  // Waits: the latest-released of the most recent occupants of each unit's ring bytes.
  const size_t n = s.units.size();
  const Positions pos = HostPositions(s.units);
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  const auto occupants = RecentOccupants(n, all, [&](size_t u) {
    return std::make_pair(s.units[u].ring_offset, s.units[u].ring_offset + AlignUp(s.units[u].bytes));
  });
  for (size_t u = 0; u < n; ++u) {
    int64_t best = 0;
    int64_t best_rp = INT64_MIN;
    for (int64_t p : occupants[u]) {
      const size_t idx = p < 0 ? static_cast<size_t>(p + static_cast<int64_t>(n)) : static_cast<size_t>(p);
      const int64_t rp = pos.release[idx] - (p < 0 ? pos.per_forward : 0);
      if (rp > best_rp) {
        best_rp = rp;
        best = p;
      }
    }
    if (best_rp != INT64_MIN) s.units[u].wait_unit = static_cast<int32_t>(best < 0 ? best + static_cast<int64_t>(n) : best);
  }

  // The disk ring.
  std::vector<size_t> disk;
  for (size_t u = 0; u < n; ++u)
    if (s.units[u].source == Tier::kDisk) disk.push_back(u);
  if (!disk.empty()) {
    // A unit's weight by (block, weight): the last such entry, looked up once a unit (a scan of every weight for
    // every disk unit took 30 s for a Qwen3-235B-A22B-shaped plan).
    std::map<std::pair<uint32_t, uint32_t>, const StreamWeight*> weight_of;
    for (const StreamWeight& cand : weights) weight_of[{cand.block, cand.weight}] = &cand;
    uint64_t max_slot = 0;
    for (size_t u : disk) {
      StreamUnitPlan& un = s.units[u];
      const auto found = weight_of.find({un.block, un.weight});
      const bool cast = found != weight_of.end() && found->second->cast;
      un.disk_slot_bytes = cast ? Align(std::max(un.bytes, un.file_bytes), kDiskSlotAlignment)
                                : Align(un.file_bytes, kDiskSlotAlignment) + kDiskSlotAlignment;
      max_slot = std::max(max_slot, un.disk_slot_bytes);
    }
    s.disk_ring_bytes = std::max<uint64_t>(2, options.disk_slots) * max_slot;
    uint64_t cursor = 0;
    for (size_t u : disk) {
      StreamUnitPlan& un = s.units[u];
      if (cursor + un.disk_slot_bytes > s.disk_ring_bytes) cursor = 0;
      un.disk_slot_offset = cursor;
      cursor += un.disk_slot_bytes;
    }
    const auto disk_occupants = RecentOccupants(n, disk, [&](size_t u) {
      return std::make_pair(s.units[u].disk_slot_offset, s.units[u].disk_slot_offset + s.units[u].disk_slot_bytes);
    });
    for (size_t u : disk) {
      // H2D copies finish in unit order: the latest occupant's copy implies the others'.
      int64_t best = INT64_MIN;
      for (int64_t p : disk_occupants[u]) best = std::max(best, p);
      if (best != INT64_MIN) {
        s.units[u].disk_wait_unit = static_cast<int32_t>(best < 0 ? best + static_cast<int64_t>(n) : best);
      }
    }
  }
  Status check = CheckDeviceStream(s);
  if (!check.ok()) {
    return MakeError(ErrorCode::kInfeasible, where + "a ring of " + FormatBytes(ring) + " cannot hold what must be "
                                                 "held at once (" + check.error().message + ")");
  }
  return s;
}

Status CheckDeviceStream(const DeviceStreamPlan& s) {
  const size_t n = s.units.size();
  if (n == 0) return Status::Ok();
  const std::string where = DeviceLabel(s.device) + " stream: ";
  auto name = [&](size_t u) {
    return "unit " + std::to_string(u) + " (block " + std::to_string(s.units[u].block) + " weight " +
           std::to_string(s.units[u].weight) + " rows " + std::to_string(s.units[u].row_begin) + "-" +
           std::to_string(s.units[u].row_end) + ")";
  };
  for (size_t u = 0; u < n; ++u) {
    const StreamUnitPlan& un = s.units[u];
    if (un.bytes == 0 || un.ring_offset % kWeightAlignment != 0 || un.ring_offset + un.bytes > s.ring_bytes)
      return MakeError(ErrorCode::kInternal, where + name(u) + " lies outside the ring or is misaligned");
    if (un.wait_unit < -1 || un.wait_unit >= static_cast<int32_t>(n) || un.disk_wait_unit < -1 ||
        un.disk_wait_unit >= static_cast<int32_t>(n))
      return MakeError(ErrorCode::kInternal, where + name(u) + " waits on a unit out of range");
    if (un.source == Tier::kDisk &&
        (un.disk_slot_offset % kDiskSlotAlignment != 0 || un.disk_slot_offset + un.disk_slot_bytes > s.disk_ring_bytes))
      return MakeError(ErrorCode::kInternal, where + name(u) + " lies outside the disk ring or is misaligned");
    if (u > 0 && s.units[u - 1].block == un.block && !s.units[u - 1].whole && un.whole)
      return MakeError(ErrorCode::kInternal, where + name(u) + ": a whole unit after its block's chunks");
  }
  // Disk slots: every unit whose slot bytes overlap u's since u's previous read must have been copied (H2D, in unit
  // order) before u's read starts, i.e. lie at or before disk_wait_unit in the cyclic order.
  for (size_t u = 0; u < n; ++u) {
    const StreamUnitPlan& un = s.units[u];
    if (un.source != Tier::kDisk) continue;
    for (size_t back = 1; back < n; ++back) {
      const size_t p = (u + n - back) % n;
      const StreamUnitPlan& pn = s.units[p];
      if (pn.source != Tier::kDisk) continue;
      if (!Overlap(un.disk_slot_offset, un.disk_slot_offset + un.disk_slot_bytes, pn.disk_slot_offset,
                   pn.disk_slot_offset + pn.disk_slot_bytes))
        continue;
      // p must be at or before the wait, counting back from u.
      if (un.disk_wait_unit < 0)
        return MakeError(ErrorCode::kInternal, where + name(u) + " overwrites the disk slot of " + name(p) + " unordered");
      const size_t wait_back = (u + n - static_cast<size_t>(un.disk_wait_unit)) % n;
      if (back < (wait_back == 0 ? n : wait_back))
        return MakeError(ErrorCode::kInternal, where + name(u) + " may overwrite the disk slot of " + name(p) +
                                                   " before its copy");
      break;  // earlier occupants were overwritten by p, which waited for them
    }
  }
  // Replay two forward passes of host events with a greedy copy thread.
  const Positions pos = HostPositions(s.units);
  struct Event {
    bool acquire;
    size_t unit;
  };
  std::vector<std::vector<Event>> at(static_cast<size_t>(pos.per_forward));
  for (size_t u = 0; u < n; ++u) {
    at[pos.acquire[u]].push_back({true, u});
    at[pos.release[u]].push_back({false, u});
  }
  const int forwards = 2;
  std::vector<int> issued(n, -1), released(n, -1);  // forward pass of the latest issue / release
  std::vector<std::pair<uint64_t, uint64_t>> occupied(n, {0, 0});
  std::vector<bool> live(n, false);
  // The live units' ring ranges by start: start -> (end, unit). They are disjoint (each is checked as it is added), so
  // a new range overlaps one iff it overlaps the live range with the greatest start below its end: one lookup, where
  // a scan of every unit made the check quadratic (52335 units of a Qwen3-235B-shaped plan took 90 s).
  std::map<uint64_t, std::pair<uint64_t, size_t>> live_at;
  size_t next = 0;  // next occurrence to issue: forward next / n, unit next % n
  auto released_in = [&](size_t unit, int forward) { return forward < 0 || released[unit] >= forward; };
  auto run_issuer = [&]() -> Status {
    while (next < static_cast<size_t>(forwards) * n) {
      const size_t u = next % n;
      const int f = static_cast<int>(next / n);
      const int32_t w = s.units[u].wait_unit;
      if (w >= 0) {
        const int wf = static_cast<size_t>(w) < u ? f : f - 1;
        if (!released_in(static_cast<size_t>(w), wf)) break;
      }
      const uint64_t a0 = s.units[u].ring_offset, a1 = a0 + AlignUp(s.units[u].bytes);
      if (auto below = live_at.lower_bound(a1); below != live_at.begin()) {
        const auto& [start, range] = *std::prev(below);
        if (Overlap(a0, a1, start, range.first)) {
          return MakeError(ErrorCode::kInternal,
                           where + name(u) + " would be copied over " + name(range.second) + ", which is still in use");
        }
      }
      live[u] = true;
      occupied[u] = {a0, a1};
      live_at[a0] = {a1, u};
      issued[u] = f;
      ++next;
    }
    return Status::Ok();
  };
  for (int f = 0; f < forwards; ++f) {
    for (const auto& events : at) {
      for (const Event& e : events) {
        if (e.acquire) {
          BIGPLAN_RETURN_IF_ERROR(run_issuer());
          if (issued[e.unit] != f) {
            return MakeError(ErrorCode::kInternal, where + name(e.unit) + " is needed before its copy can start "
                                                                           "(the ring is too small for what its block "
                                                                           "holds at once)");
          }
        } else {
          if (live[e.unit]) live_at.erase(occupied[e.unit].first);
          live[e.unit] = false;
          released[e.unit] = f;
        }
      }
      BIGPLAN_RETURN_IF_ERROR(run_issuer());
    }
  }
  return Status::Ok();
}

}  // namespace bigplan
