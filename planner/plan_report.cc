#include "planner/plan_report.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "planner/budget.h"
#include "planner/cost_model.h"
#include "planner/experts.h"
#include "planner/weight_format.h"
#include "planner/memory_plan.h"
#include "planner/placement.h"
#include "schema/plan_io.h"
#include "support/units.h"

namespace bigplan {
namespace {

std::string Ms(double us) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3f ms", us / 1000.0);
  return buf;
}

std::string Share(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", v);
  return buf;
}

std::string DeviceName(int32_t device) { return device < 0 ? "cpu" : "cuda:" + std::to_string(device); }

const char* RestsIn(Tier tier) {
  switch (tier) {
    case Tier::kGpu: return "resident";
    case Tier::kCpu: return "cpu (pinned, streamed)";
    case Tier::kDisk: return "disk (streamed)";
  }
  return "?";
}

std::string Pad(const std::string& s, size_t width) { return s.size() >= width ? s + " " : s + std::string(width - s.size(), ' '); }
std::string PadLeft(const std::string& s, size_t width) { return s.size() >= width ? s : std::string(width - s.size(), ' ') + s; }

// The placement table, grouped into runs of consecutive decoder layers with the same device and tier.
void PrintPlacement(std::ostream& out, const PlanResult& r) {
  const ModelDescription& m = r.model;
  struct Row {
    std::string name;
    int32_t device;
    std::string rests;
    size_t blocks;
    uint64_t bytes;
  };
  std::vector<Row> rows;
  // Blocks in plan order; a tensor-parallel plan's shards by shard (shard 0's blocks, then shard 1's, ...).
  std::vector<size_t> order;
  const uint32_t shards = std::max<uint32_t>(1, r.tensor_parallel);
  for (uint32_t s = 0; s < shards; ++s)
    for (size_t i = s; i < m.blocks.size(); i += shards) order.push_back(i);
  for (size_t k = 0; k < order.size();) {
    const size_t i = order[k];
    const BlockDesc& b = m.blocks[i];
    const BlockPlacement& p = r.placement.blocks[i];
    size_t kj = k + 1;
    uint64_t bytes = r.placement.block_weight_bytes[i];
    const std::string layer_suffix = std::to_string(b.layer);
    const bool numbered = b.kind == BlockKind::kDecoderLayer && b.name.size() > layer_suffix.size() &&
                          b.name.compare(b.name.size() - layer_suffix.size(), layer_suffix.size(), layer_suffix) == 0;
    const std::string stem = numbered ? b.name.substr(0, b.name.size() - layer_suffix.size()) : "";
    if (numbered) {
      while (kj < order.size()) {
        const size_t j = order[kj], prev = order[kj - 1];
        if (m.blocks[j].kind != BlockKind::kDecoderLayer || m.blocks[j].layer != m.blocks[prev].layer + 1 ||
            m.blocks[j].name != stem + std::to_string(m.blocks[j].layer) || !(r.placement.blocks[j] == p)) {
          break;
        }
        bytes += r.placement.block_weight_bytes[j];
        ++kj;
      }
    }
    std::string name = b.name;
    if (kj - k > 1) name = stem + std::to_string(b.layer) + "-" + std::to_string(m.blocks[order[kj - 1]].layer);
    if (r.tensor_parallel > 0) name += " [shard " + std::to_string(i % shards) + "]";
    std::string rests = RestsIn(p.tier);
    if (!p.weight_tiers.empty()) {
      size_t resident = 0;
      for (Tier t : p.weight_tiers) resident += t == Tier::kGpu;
      if (resident > 0 && resident < p.weight_tiers.size())
        rests = std::string("partly resident + ") + TierName(p.tier);
    }
    rows.push_back({name, p.device, rests, kj - k, bytes});
    k = kj;
  }
  size_t width = 10;
  for (const Row& row : rows) width = std::max(width, row.name.size() + 2);
  out << "placement (" << r.placement.strategy << "):\n";
  if (!r.placement.candidates.empty()) {
    out << "  candidates (resident bytes):";
    for (size_t k = 0; k < r.placement.candidates.size(); ++k) {
      const PlacementCandidate& c = r.placement.candidates[k];
      // A candidate that does not apply (S when nothing streams) is "not needed", not infeasible.
      out << (k ? ", " : " ") << c.name << " "
          << (c.feasible                   ? FormatBytes(c.resident_bytes)
              : c.why == "not considered"  ? "not considered"
              : c.why == "nothing streams" ? "not needed"
                                           : "infeasible");
    }
    out << "; chosen " << r.placement.chosen << "\n";
    // A mixture-of-experts model placed otherwise: why its experts could not be placement units.
    for (const PlacementCandidate& c : r.placement.candidates) {
      if (c.name == "E" && !c.feasible && m.config.num_experts > 0 && c.why != "not considered")
        out << "  E infeasible: " << c.why << "\n";
    }
  }
  if (r.tensor_parallel > 0)
    out << "  tensor parallel: every block split over " << r.tensor_parallel
        << " GPUs (heads, MLP rows and vocabulary; partial sums added after each attention, MLP and embedding)\n";
  out << "  " << Pad("block", width) << Pad("compute", 9) << Pad("weights", 24) << PadLeft("blocks", 6)
      << PadLeft("bytes", 14) << "\n";
  for (const Row& row : rows)
    out << "  " << Pad(row.name, width) << Pad(DeviceName(row.device), 9) << Pad(row.rests, 24)
        << PadLeft(std::to_string(row.blocks), 6) << PadLeft(FormatBytes(row.bytes), 14) << "\n";
  // Weight bytes by where they rest.
  std::map<std::string, uint64_t> by_place;
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const BlockPlacement& p = r.placement.blocks[i];
    const BlockWeightLayout layout = LayoutBlockWeights(m, i, r.exec_dtype);
    const std::vector<Tier> tiers = WeightTiersOf(p, layout.weights.size());
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const std::string key = tiers[w] == Tier::kGpu ? DeviceName(p.device) : TierName(tiers[w]);
      by_place[key] += AlignUp(layout.weights[w].size_bytes);
    }
  }
  out << "  weights by location:";
  bool first = true;
  for (const auto& [where, bytes] : by_place) {
    out << (first ? " " : ", ") << where << " " << FormatBytes(bytes);
    first = false;
  }
  out << "\n";
}

void PrintMemory(std::ostream& out, const PlanResult& r) {
  out << "memory plan (" << r.schedule.memory.algorithm << "):\n";
  for (const ArenaSize& a : r.schedule.memory.arenas) {
    size_t count = 0;
    for (const ScheduledBuffer& b : r.schedule.buffers)
      if (b.request.pool == a.pool) ++count;
    out << "  arena " << Pad(PoolName(a.pool), 8) << PadLeft(FormatBytes(a.size), 12) << "  (" << count
        << " buffers)\n";
  }
  out << "  usage vs budget:\n";
  for (const DeviceAccount& a : r.usage) {
    out << "    " << Pad(a.device, 8) << PadLeft(FormatBytes(a.total), 12) << " of "
        << (a.unlimited ? std::string("unlimited") : FormatBytes(a.budget));
    std::vector<std::string> parts;
    auto part = [&](const char* what, uint64_t v) {
      if (v) parts.push_back(std::string(what) + " " + FormatBytes(v));
    };
    part(a.device == "cpu" ? "weights" : a.device == "disk" ? "disk-tier weights" : "resident", a.resident_weights);
    part("staging", a.staging);
    part("KV", a.kv_cache);
    part("activations", a.activations);
    part("reserve", a.workspace_reserve);
    if (!parts.empty()) {
      out << "  (";
      for (size_t k = 0; k < parts.size(); ++k) out << (k ? " + " : "") << parts[k];
      out << ")";
    }
    out << "\n";
  }
}

void PrintPrediction(std::ostream& out, const PlanResult& r, const RunShape& run) {
  for (const DeviceStreamPlan& st : r.schedule.streams) {
    if (st.units.empty()) continue;
    size_t chunks = 0;
    for (const StreamUnitPlan& u : st.units) chunks += u.whole ? 0 : 1;
    out << "stream " << DeviceName(st.device) << ": " << st.units.size() << " units (" << chunks << " row chunks), ring "
        << FormatBytes(st.ring_bytes);
    if (st.layout == "slots") out << " (" << st.slots << " slots)";
    else out << " (chunks up to " << FormatBytes(st.chunk_bytes) << ")";
    if (st.disk_ring_bytes) out << ", disk ring " << FormatBytes(st.disk_ring_bytes);
    out << "\n";
  }
  out << "predicted per forward (profile " << r.profile.name << "):\n";
  out << "  decode  (" << run.max_batch << " x 1 token, KV at " << run.max_seq_len << "): " << Ms(r.decode.total_us)
      << "  (compute " << Ms(r.decode.compute_us) << ", waiting for copies " << Ms(r.decode.compute_stall_us) << ")\n";
  out << "  prefill (" << run.max_batch << " x " << run.max_seq_len << " tokens): " << Ms(r.prefill.total_us)
      << "  (compute " << Ms(r.prefill.compute_us) << ", waiting for copies " << Ms(r.prefill.compute_stall_us)
      << ")\n";
  // The decode step as ranks, one process per GPU.
  if (const RanksDecodePrediction ranks = PredictRanksDecode(r); ranks.ranks >= 2) {
    out << "  decode as ranks (--world-size " << ranks.ranks << ", one process per GPU): " << Ms(ranks.total_us) << "  (";
    if (r.tensor_parallel > 0) {
      out << ranks.all_reduces << " all-reduces between processes a step)\n";
    } else {
      out << ranks.crossings << " crossing" << (ranks.crossings == 1 ? "" : "s") << " between processes a step)\n";
    }
  }
  // A pipelinable plan's batched prefill (PredictBatchedPrefill, with the executor's automatic micro-batches): all
  // the rows, each with half the run's positions.
  if (run.max_batch >= 2 && (PipelinablePlan(r) || r.tensor_parallel > 0)) {
    const uint32_t tokens = std::max<uint32_t>(1, run.max_seq_len / 2);
    Result<BatchedPrefillPrediction> b = PredictBatchedPrefill(r, run.max_batch, tokens);
    if (b.ok()) {
      out << "  batched prefill (" << run.max_batch << " rows x " << tokens << (tokens == 1 ? " token" : " tokens")
          << "): predicted " << Ms(b->total_us);
      if (r.tensor_parallel > 0) {
        out << " (every shard at once)";
      } else if (b->micro_batches > 0) {
        out << " in " << b->micro_batches << " micro-batches of " << b->rows_per_micro_batch
            << (b->rows_per_micro_batch == 1 ? " row" : " rows") << ", " << Ms(b->unpipelined_us) << " unpipelined";
      } else {
        out << ", not pipelined (micro-batches of " << (kMicroBatchTokens + tokens - 1) / tokens
            << " rows would make fewer than two)";
      }
      out << "\n";
    }
  }
  out << "  floor: streamed " << FormatBytes(r.streamed_bytes) << " per forward at " << r.profile.h2d_gbps
      << " GB/s H2D";
  bool disk = false;
  for (const DeviceStreamPlan& st : r.schedule.streams)
    for (const StreamUnitPlan& u : st.units) disk = disk || u.source == Tier::kDisk;
  if (disk) out << " (disk weights read at " << r.profile.disk_gbps << " GB/s)";
  out << ": " << Ms(r.copy_floor_us) << "\n";
  for (const auto& [device, ring] : r.expert_rings) {
    // The host multiplies the experts in their row format (quantized ones at that format's rate).
    quant::Format format = quant::Format::kNone;
    for (size_t i = 0; i < r.placement.blocks.size() && i < r.model.blocks.size(); ++i) {
      if (r.placement.blocks[i].device == device && r.placement.blocks[i].routed_experts) {
        format = ExpertFormat(r.model, i);
        break;
      }
    }
    out << "  routed experts (cuda:" << device << "): per decode token "
        << FormatBytes(static_cast<uint64_t>(ring.expected_resident_bytes)) << " read where resident, "
        << FormatBytes(static_cast<uint64_t>(ring.expected_copied_bytes)) << " copied at "
        << H2dGbps(r.profile, ring.expected_host_bytes > 0)
        << " GB/s"
        << (ring.expected_disk_bytes > 0 ? " (" + FormatBytes(static_cast<uint64_t>(ring.expected_disk_bytes)) +
                                               " of it read from disk first at " + Share(r.profile.disk_gbps) + " GB/s)"
                                         : std::string())
        << ", " << FormatBytes(static_cast<uint64_t>(ring.expected_host_bytes)) << " computed by the host at "
        << HostGemvGbps(r.profile, format) << " GB/s"
        << (format != quant::Format::kNone ? std::string(" of ") + quant::FormatName(format) + " rows" : "")
        << " (share " << Share(ring.cpu_share) << ", forwards of at most "
        << ring.decode_max_tokens << " tokens)"
        << (r.expert_rings.size() == 1 ? "; floor of this mix " + Ms(r.expert_floor_us) : std::string()) << "; ring "
        << ring.slots << " x " << FormatBytes(ring.slot_bytes) << (ring.disk_slots ? ", disk ring " : "")
        << (ring.disk_slots ? FormatBytes(ring.disk_ring_bytes()) : "");
    if (ring.prefetch > 0) {
      out << "; prefetch " << ring.prefetch << " next-layer expert" << (ring.prefetch > 1 ? "s" : "")
          << " per layer (predicted chosen " << static_cast<int>(kExpertPrefetchHitRate * 100 + 0.5) << "%)";
    }
    out << "\n";
  }
  if (r.expert_rings.size() > 1) {
    out << "  routed experts on " << r.expert_rings.size() << " GPUs (each GPU's layers' experts cross its own link): "
        << "floor of the mix " << Ms(r.expert_floor_us) << "\n";
  }
  if (r.cpu_share > 0) {
    out << "  host compute: " << r.host_rows.size() << " streamed matrices keep "
        << static_cast<int>(r.cpu_share * 100 + 0.5) << "% of their rows (" << FormatBytes(r.host_bytes)
        << ") for the CPU in decode forwards (at most " << run.max_batch << (run.max_batch == 1 ? " token" : " tokens")
        << ", host rate " << r.profile.cpu_gemv_gbps << " GB/s); streaming everything would take "
        << Ms(r.decode_streamed_us) << ", and what still streams has a floor of " << Ms(r.decode_copy_floor_us)
        << "\n";
  }
}

}  // namespace

void WritePlanReport(std::ostream& out, const PlanResult& r, const PlanRequest& req) {
  const ModelDescription& m = r.model;
  uint64_t weight_bytes = 0;
  for (uint64_t b : r.placement.block_weight_bytes) weight_bytes += b;
  const double count = static_cast<double>(m.TotalParams());
  char params[32];
  if (count >= 1e9) std::snprintf(params, sizeof(params), "%.2fB", count / 1e9);
  else if (count >= 1e6) std::snprintf(params, sizeof(params), "%.2fM", count / 1e6);
  else std::snprintf(params, sizeof(params), "%.0f", count);
  out << "== " << m.name << " (" << m.architecture << ", " << m.blocks.size() << " blocks, " << params
      << " params, " << FormatBytes(weight_bytes) << " at " << DTypeString(r.exec_dtype) << ") ==\n";
  out << "budget: " << req.budget.ToString() << "\n";
  out << "run: batch " << req.run.max_batch << ", seq " << req.run.max_seq_len << ", dtype "
      << DTypeString(r.exec_dtype) << "\n";
  const QuantizedSummary q = SummarizeQuantized(m, r.exec_dtype);
  const TensorSpec* prequant = nullptr;
  int prequant_count = 0;
  for (const BlockDesc& b : m.blocks) {
    for (const TensorSpec& t : b.params) {
      if (t.prequant.kind == PreQuant::Kind::kNone) continue;
      if (prequant == nullptr) prequant = &t;
      ++prequant_count;
    }
  }
  if (prequant != nullptr) {
    out << "weights: " << q.tensors << " linear-layer matrices stored " << quant::FormatName(prequant->format)
        << " (pre-quantized in the checkpoint: " << PreQuantKindName(prequant->prequant.kind);
    if (prequant->prequant.block_rows > 0)
      out << " blocks " << prequant->prequant.block_rows << "x" << prequant->prequant.block_cols;
    else if (prequant->shape.size() == 2 && prequant->group == prequant->shape[1])
      out << ", per row";
    else
      out << ", groups of " << prequant->group;
    out << ", " << prequant_count << " converted at load): " << FormatBytes(q.bytes) << " instead of "
        << FormatBytes(q.plain_bytes) << " at " << DTypeString(r.exec_dtype) << "\n";
  } else if (q.tensors > 0) {
    out << "weights: " << q.tensors << " linear-layer matrices stored " << quant::FormatName(req.weights)
        << " (quantized at load): " << FormatBytes(q.bytes) << " instead of " << FormatBytes(q.plain_bytes) << " at "
        << DTypeString(r.exec_dtype) << "\n";
  }
  const auto& fp = *r.plan().checkpoint();
  if (r.synthetic_checkpoint)
    out << "checkpoint: none (synthetic fingerprint; the executor will refuse this plan)\n";
  else
    out << "checkpoint: " << fp.shards()->size() << " shard(s), digest " << fp.digest()->str().substr(0, 16) << "\n";
  PrintPlacement(out, r);
  PrintMemory(out, r);
  PrintPrediction(out, r, req.run);
}

}  // namespace bigplan
