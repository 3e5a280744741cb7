#include "schema/plan_dump.h"

#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/units.h"

namespace bigplan {
namespace {

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

template <typename T>
std::string List(const flatbuffers::Vector<T>* v) {
  std::string out = "[";
  if (v)
    for (uint32_t i = 0; i < v->size(); ++i) out += (i ? "," : "") + std::to_string(v->Get(i));
  return out + "]";
}

std::string Fixed(double v, int digits = 3) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string DeviceName(int32_t d) { return d < 0 ? "cpu" : "cuda:" + std::to_string(d); }

// "pinned" for the pinned host pool, else the device's arena ("cuda:0").
std::string PoolName(schema::Pool pool, int32_t device) {
  return pool == schema::Pool::PinnedHost ? "pinned" : DeviceName(device);
}

template <typename T>
uint32_t Len(const flatbuffers::Vector<T>* v) {
  return v ? v->size() : 0;
}

template <typename T>
nlohmann::ordered_json JList(const flatbuffers::Vector<T>* v) {
  nlohmann::ordered_json a = nlohmann::ordered_json::array();
  if (v)
    for (uint32_t i = 0; i < v->size(); ++i) a.push_back(v->Get(i));
  return a;
}

// Weight bytes per "where they rest": "cuda:N" (resident), "cpu", "disk".
std::map<std::string, uint64_t> BytesByTier(const schema::Plan& p) {
  std::map<std::string, uint64_t> out;
  for (uint32_t i = 0; i < Len(p.blocks()); ++i) {
    const auto* b = p.blocks()->Get(i);
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      out[wt->tier() == schema::Tier::Gpu ? DeviceName(b->device()) : TierName(wt->tier())] += wt->size_bytes();
    }
  }
  return out;
}

// "" when every weight of the block rests in one tier, else " (partly resident: 5 gpu, 4 cpu weights)".
std::string PartialNote(const schema::Block& b) {
  uint32_t n[3] = {0, 0, 0};
  for (uint32_t w = 0; w < Len(b.weights()); ++w) {
    const uint8_t t = static_cast<uint8_t>(b.weights()->Get(w)->tier());
    if (t < 3) ++n[t];
  }
  if ((n[0] > 0) + (n[1] > 0) + (n[2] > 0) < 2) return "";
  std::string out = " (partly resident:";
  const char* names[3] = {"gpu", "cpu", "disk"};
  bool first = true;
  for (int t = 0; t < 3; ++t) {
    if (!n[t]) continue;
    out += std::string(first ? " " : ", ") + std::to_string(n[t]) + " " + names[t];
    first = false;
  }
  return out + " weights)";
}

std::string Placement(const schema::Block& b) {
  return DeviceName(b.device()) + " " + TierName(b.tier()) + PartialNote(b);
}

// A stream's layout as its units show it: "chunks" when any unit is a row chunk, else "slots".
std::string StreamLayout(const schema::Stream& st) {
  for (uint32_t u = 0; u < Len(st.units()); ++u)
    if (!st.units()->Get(u)->whole()) return "chunks";
  return "slots";
}

struct StreamSummary {
  uint32_t units = 0, chunks = 0, disk = 0, host = 0;
  uint64_t bytes = 0, host_bytes = 0;
};
StreamSummary Summarize(const schema::Stream& st) {
  StreamSummary s;
  for (uint32_t u = 0; u < Len(st.units()); ++u) {
    const auto* un = st.units()->Get(u);
    ++s.units;
    s.chunks += !un->whole();
    s.disk += un->source() == schema::Tier::Disk;
    s.bytes += un->bytes();
    s.host += un->host();
    s.host_bytes += un->host() ? un->bytes() : 0;
  }
  return s;
}

uint64_t BufferSize(const schema::Plan& p, int32_t index) {
  return index >= 0 && static_cast<uint32_t>(index) < Len(p.buffers()) ? p.buffers()->Get(index)->size_bytes() : 0;
}

// "cuda:0: layout chunks, ring 1.00 GiB (buffer 12), chunks up to 128.00 MiB, disk ring 0 B (buffer -1), 130 units
// (120 row chunks, 0 from disk), 5.00 GiB per forward"

// Routed experts (plan version 6): per sparse layer, how many experts are resident, in pinned memory, on disk.
struct ExpertCounts {
  int32_t layer = -1;
  std::string block;
  uint32_t resident = 0, cpu = 0, disk = 0;
};
std::vector<ExpertCounts> CountExperts(const schema::Plan& p) {
  std::vector<ExpertCounts> out;
  const auto* c = p.config();
  if (c == nullptr || c->num_experts() == 0) return out;
  for (uint32_t b = 0; b < Len(p.blocks()); ++b) {
    const auto* block = p.blocks()->Get(b);
    const int32_t layer = block->layer();
    if (layer < 0 || !c->sparse_layers() || static_cast<uint32_t>(layer) >= c->sparse_layers()->size() ||
        !c->sparse_layers()->Get(layer))
      continue;
    ExpertCounts n;
    n.layer = layer;
    n.block = Str(block->name());
    uint32_t cpu = 0, disk = 0;
    for (uint32_t w = 0; w < Len(block->weights()); ++w) {
      const auto* weight = block->weights()->Get(w);
      if (!weight->routed()) continue;
      (weight->tier() == schema::Tier::Disk ? disk : cpu) += 1;
    }
    n.cpu = cpu / 3;
    n.disk = disk / 3;
    n.resident = c->num_experts() - n.cpu - n.disk;
    out.push_back(n);
  }
  return out;
}

std::string ExpertText(const schema::Plan& p) {
  std::ostringstream o;
  o << "experts: " << p.config()->num_experts() << " per sparse layer, " << p.config()->num_experts_per_tok()
    << " routed per token\n";
  for (uint32_t i = 0; i < Len(p.experts()); ++i) {
    const auto* r = p.experts()->Get(i);
    o << "  cuda:" << r->device() << ": ring " << r->slots() << " slots of " << r->slot_bytes() << " bytes (buffer "
      << r->ring_buffer() << ")";
    if (r->disk_ring_buffer() >= 0) o << ", disk ring " << r->disk_slots() << " slots (buffer " << r->disk_ring_buffer() << ")";
    o << ", host share " << Fixed(r->cpu_share()) << " in forwards of at most " << r->decode_max_tokens()
      << " tokens, copy-all from " << r->copy_all_tokens() << " tokens";
    if (r->prefetch() > 0) o << ", prefetch " << r->prefetch() << " next-layer expert(s) per layer";
    o << "\n";
    o << "    expected bytes per decode token: resident " << Fixed(r->expected_resident_bytes()) << ", copied "
      << Fixed(r->expected_copied_bytes()) << ", host " << Fixed(r->expected_host_bytes()) << "\n";
  }
  for (const ExpertCounts& n : CountExperts(p)) {
    o << "  " << n.block << ": " << n.resident << " resident, " << n.cpu << " in pinned memory, " << n.disk
      << " on disk\n";
  }
  return o.str();
}

nlohmann::ordered_json ExpertJson(const schema::Plan& p) {
  using J = nlohmann::ordered_json;
  J rings = J::array();
  for (uint32_t i = 0; i < Len(p.experts()); ++i) {
    const auto* r = p.experts()->Get(i);
    rings.push_back({{"device", r->device()}, {"ring_buffer", r->ring_buffer()}, {"slots", r->slots()},
                     {"slot_bytes", r->slot_bytes()}, {"disk_ring_buffer", r->disk_ring_buffer()},
                     {"disk_slots", r->disk_slots()}, {"cpu_share", r->cpu_share()},
                     {"decode_max_tokens", r->decode_max_tokens()}, {"copy_all_tokens", r->copy_all_tokens()},
                     {"prefetch", r->prefetch()},
                     {"expected_resident_bytes", r->expected_resident_bytes()},
                     {"expected_copied_bytes", r->expected_copied_bytes()},
                     {"expected_host_bytes", r->expected_host_bytes()}});
  }
  J layers = J::array();
  for (const ExpertCounts& n : CountExperts(p)) {
    layers.push_back({{"layer", n.layer}, {"block", n.block}, {"resident", n.resident}, {"cpu", n.cpu}, {"disk", n.disk}});
  }
  return J{{"rings", rings}, {"layers", layers}};
}

std::string StreamLine(const schema::Plan& p, const schema::Stream& st) {
  const StreamSummary s = Summarize(st);
  std::string out = DeviceName(st.device()) + ": layout " + StreamLayout(st) + ", ring " +
                    FormatBytes(BufferSize(p, st.ring_buffer())) + " (buffer " + std::to_string(st.ring_buffer()) +
                    "), chunks up to " + FormatBytes(st.chunk_bytes());
  if (st.disk_ring_buffer() >= 0)
    out += ", disk ring " + FormatBytes(BufferSize(p, st.disk_ring_buffer())) + " (buffer " +
           std::to_string(st.disk_ring_buffer()) + ")";
  out += ", " + std::to_string(s.units) + " units (" + std::to_string(s.chunks) + " row chunks, " +
         std::to_string(s.disk) + " from disk), " + FormatBytes(s.bytes) + " per forward";
  if (s.host > 0)
    out += "; " + std::to_string(s.host) + " units (" + FormatBytes(s.host_bytes) +
           ") computed by the host in decode forwards";
  return out;
}

}  // namespace

void WritePlanText(std::ostream& o, const schema::Plan& p) {
  o << "bigplan plan, version " << p.version() << ", written by " << Str(p.generator()) << "\n";
  o << "model: " << Str(p.model_name()) << " (" << Str(p.config()->architecture()) << "), digest "
    << Str(p.model_digest()) << "\n";
  o << "strategy: " << Str(p.strategy()) << "\n";
  o << "exec dtype: " << DTypeName(p.exec_dtype()) << "\n";
  o << "run shape: batch " << p.run_shape()->max_batch() << ", seq " << p.run_shape()->max_seq_len() << "\n";
  if (p.host_max_tokens() > 0)
    o << "host compute: forwards of at most " << p.host_max_tokens() << " tokens compute the host units on the CPU\n";
  if (p.tensor_parallel() > 0)
    o << "tensor parallel: every block split over " << p.tensor_parallel() << " GPUs (its shards are consecutive blocks)\n";
  const schema::ModelConfig& c = *p.config();
  o << "config: hidden " << c.hidden_size() << ", layers " << c.num_layers() << ", heads " << c.num_heads() << "/"
    << c.num_kv_heads() << " kv, head_dim " << c.head_dim() << ", intermediate " << c.intermediate_size()
    << ", vocab " << c.vocab_size() << ", max_pos " << c.max_position_embeddings() << ", rotary_dim "
    << c.rotary_dim() << ", rope_theta " << Fixed(c.rope_theta(), 1) << ", eps " << c.norm_eps() << ", act "
    << Str(c.activation()) << ", tied " << (c.tie_word_embeddings() ? "yes" : "no") << ", bias attn/mlp "
    << (c.attention_bias() ? "yes" : "no") << "/" << (c.mlp_bias() ? "yes" : "no") << ", bos " << c.bos_token_id()
    << ", eos " << List(c.eos_token_ids()) << "\n";
  if (c.rope_scaling_json() && c.rope_scaling_json()->size()) o << "rope_scaling: " << Str(c.rope_scaling_json()) << "\n";
  if (c.rope()) o << "rope: " << arch::DescribeRope(RopeParamsOf(*c.rope())) << "\n";
  const schema::Fingerprint& fp = *p.checkpoint();
  o << "checkpoint: digest " << Str(fp.digest()) << "\n";
  for (uint32_t i = 0; i < Len(fp.shards()); ++i) {
    const auto* s = fp.shards()->Get(i);
    o << "  shard " << i << ": " << Str(s->file_name()) << ", " << s->size_bytes() << " bytes, header "
      << (s->header_digest() && s->header_digest()->size() ? Str(s->header_digest()) : "-") << "\n";
  }
  o << "budgets:";
  for (uint32_t i = 0; i < Len(p.budgets()); ++i)
    o << " " << Str(p.budgets()->Get(i)->device()) << "=" << FormatBytes(p.budgets()->Get(i)->bytes());
  o << "\n";
  if (const auto* pr = p.profile())
    o << "profile: " << Str(pr->name()) << ": h2d " << pr->h2d_gbps() << " GB/s, d2h " << pr->d2h_gbps()
      << " GB/s, disk " << pr->disk_gbps() << " GB/s, device memory " << pr->device_mem_gbps() << " GB/s, matmul "
      << pr->matmul_tflops() << " TFLOP/s, cpu memory " << pr->cpu_mem_gbps() << " GB/s, cpu " << pr->cpu_gflops()
      << " GFLOP/s"
      << (pr->cpu_gemv_gbps() > 0 ? ", cpu gemv " + Fixed(pr->cpu_gemv_gbps(), 1) + " GB/s (fp8 " +
                                        Fixed(pr->cpu_gemv_fp8_gbps(), 1) + ", int8 " + Fixed(pr->cpu_gemv_int8_gbps(), 1) +
                                        ", int4 " + Fixed(pr->cpu_gemv_int4_gbps(), 1) + ")"
                                  : "")
      << (pr->h2d_busy_gbps() > 0 ? ", h2d while the host computes " + Fixed(pr->h2d_busy_gbps(), 1) + " GB/s" : "")
      << "\n";

  uint64_t tensor_bytes = 0;
  for (uint32_t i = 0; i < Len(p.tensors()); ++i) tensor_bytes += p.tensors()->Get(i)->size_bytes();
  o << "tensors: " << Len(p.tensors()) << " (" << FormatBytes(tensor_bytes) << " in the checkpoint)\n";
  for (uint32_t i = 0; i < Len(p.tensors()); ++i) {
    const auto* t = p.tensors()->Get(i);
    o << "  [" << i << "] " << Str(t->name()) << " " << DTypeName(t->src_dtype()) << List(t->shape()) << " shard "
      << t->shard() << " @" << t->offset() << " +" << t->size_bytes() << "\n";
  }
  o << "blocks: " << Len(p.blocks()) << "\n";
  for (uint32_t i = 0; i < Len(p.blocks()); ++i) {
    const auto* b = p.blocks()->Get(i);
    o << "  [" << i << "] " << Str(b->name()) << " " << arch::BlockKindName(BlockKindOf(*b));
    if (b->layer() >= 0) o << " layer " << b->layer();
    if (p.tensor_parallel() > 0) o << " shard " << b->shard() << "/" << p.tensor_parallel();
    o << ", " << Placement(*b) << ", " << b->weight_bytes() << " bytes, buffers home " << b->home_buffer()
      << " host " << b->host_buffer() << " kv " << b->kv_buffer() << "\n";
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      o << "      weight tensor " << wt->tensor() << " " << DTypeName(wt->dtype()) << " " << TierName(wt->tier())
        << " @" << wt->offset_in_block() << " +" << wt->size_bytes();
      if (wt->slice_dim() >= 0) {
        o << " " << (wt->slice_dim() == 0 ? "rows" : "columns") << " [" << wt->slice_begin() << ", " << wt->slice_end() << ")";
        if (wt->slice_rows() != nullptr)
          for (uint32_t r = 0; r + 1 < wt->slice_rows()->size(); r += 2)
            o << " [" << wt->slice_rows()->Get(r) << ", " << wt->slice_rows()->Get(r + 1) << ")";
      }
      o << "\n";
    }
  }
  o << "arenas:\n";
  for (uint32_t i = 0; i < Len(p.arenas()); ++i) {
    const auto* a = p.arenas()->Get(i);
    o << "  " << PoolName(a->pool(), a->device()) << ": " << a->size_bytes() << " bytes (" << FormatBytes(a->size_bytes()) << ")\n";
  }
  o << "buffers: " << Len(p.buffers()) << "\n";
  for (uint32_t i = 0; i < Len(p.buffers()); ++i) {
    const auto* b = p.buffers()->Get(i);
    o << "  [" << i << "] " << Str(b->name()) << " " << schema::EnumNameBufferKind(b->kind()) << " "
      << PoolName(b->pool(), b->device()) << " @" << b->offset() << " +" << b->size_bytes() << " steps " << b->first_step() << ".." << b->last_step()
      << "\n";
  }
  o << "steps: " << Len(p.steps()) << "\n";
  for (uint32_t i = 0; i < Len(p.steps()); ++i) {
    const auto* s = p.steps()->Get(i);
    o << "  [" << i << "] block " << s->block() << " (" << Str(p.blocks()->Get(s->block())->name())
      << "): decode " << Fixed(s->predicted_decode_us()) << " us, prefill " << Fixed(s->predicted_prefill_us())
      << " us, copies " << Fixed(s->predicted_copy_us()) << " us\n";
    for (uint32_t k = 0; k < Len(s->copies()); ++k) {
      const auto* c = s->copies()->Get(k);
      o << "      copy block " << c->block() << " from " << TierName(c->source()) << " on stream " << int{c->stream()}
        << ", waits for steps " << List(c->wait_compute_steps()) << " and copies of blocks "
        << List(c->wait_copy_blocks()) << "\n";
    }
    if (Len(s->frees())) o << "      frees " << List(s->frees()) << "\n";
  }
  o << "streams: " << Len(p.streams()) << "\n";
  for (uint32_t i = 0; i < Len(p.streams()); ++i) {
    const auto* st = p.streams()->Get(i);
    o << "  " << StreamLine(p, *st) << "\n";
    for (uint32_t u = 0; u < Len(st->units()); ++u) {
      const auto* un = st->units()->Get(u);
      o << "    [" << u << "] block " << un->block() << " weight " << un->weight() << " rows " << un->row_begin()
        << "-" << un->row_end() << (un->whole() ? " whole" : un->host() ? " host chunk" : " chunk") << " from " << TierName(un->source())
        << " +" << un->bytes() << " @" << un->ring_offset() << " waits " << un->wait_unit();
      if (un->source() == schema::Tier::Disk)
        o << ", disk slot @" << un->disk_slot_offset() << " +" << un->disk_slot_bytes() << " waits "
          << un->disk_wait_unit();
      o << ", " << Fixed(un->predicted_copy_us()) << " us\n";
    }
  }
  if (Len(p.experts()) > 0) o << ExpertText(p);
  o << "usage:\n";
  for (uint32_t i = 0; i < Len(p.usage()); ++i) {
    const auto* u = p.usage()->Get(i);
    o << "  " << Str(u->device()) << ": total " << u->total() << " of "
      << (u->budget() ? std::to_string(u->budget()) : std::string("no budget")) << " (resident "
      << u->resident_weights() << ", staging " << u->staging() << ", kv " << u->kv_cache() << ", activations "
      << u->activations() << ", reserve " << u->workspace_reserve() << ")\n";
  }
  o << "predicted: decode " << Fixed(p.predicted_decode_us()) << " us, prefill " << Fixed(p.predicted_prefill_us())
    << " us per forward\n";
}

nlohmann::ordered_json PlanToJson(const schema::Plan& p) {
  using J = nlohmann::ordered_json;
  J j;
  j["version"] = p.version();
  j["generator"] = Str(p.generator());
  j["strategy"] = Str(p.strategy());
  j["model_name"] = Str(p.model_name());
  j["model_digest"] = Str(p.model_digest());
  const schema::ModelConfig& c = *p.config();
  j["config"] = {{"architecture", Str(c.architecture())}, {"hidden_size", c.hidden_size()},
                 {"num_layers", c.num_layers()}, {"num_heads", c.num_heads()}, {"num_kv_heads", c.num_kv_heads()},
                 {"head_dim", c.head_dim()}, {"intermediate_size", c.intermediate_size()},
                 {"vocab_size", c.vocab_size()}, {"max_position_embeddings", c.max_position_embeddings()},
                 {"norm_eps", c.norm_eps()}, {"rope_theta", c.rope_theta()}, {"rotary_dim", c.rotary_dim()},
                 {"attention_bias", c.attention_bias()}, {"mlp_bias", c.mlp_bias()},
                 {"tie_word_embeddings", c.tie_word_embeddings()}, {"activation", Str(c.activation())},
                 {"rope_scaling_json", Str(c.rope_scaling_json())}, {"config_json", Str(c.config_json())},
                 {"bos_token_id", c.bos_token_id()}, {"eos_token_ids", JList(c.eos_token_ids())}};
  if (const schema::RopeParams* r = c.rope()) {
    j["config"]["rope"] = {{"type", arch::RopeTypeName(static_cast<arch::RopeType>(r->type()))},
                           {"theta", r->theta()}, {"rotary_dim", r->rotary_dim()}, {"factor", r->factor()},
                           {"low_freq_factor", r->low_freq_factor()}, {"high_freq_factor", r->high_freq_factor()},
                           {"original_max_position_embeddings", r->original_max_position_embeddings()},
                           {"beta_fast", r->beta_fast()}, {"beta_slow", r->beta_slow()}, {"ramp_low", r->ramp_low()},
                           {"ramp_high", r->ramp_high()}, {"attention_factor", r->attention_factor()},
                           {"short_factor", JList(r->short_factor())}, {"long_factor", JList(r->long_factor())}};
  }
  J shards = J::array();
  for (uint32_t i = 0; i < Len(p.checkpoint()->shards()); ++i) {
    const auto* s = p.checkpoint()->shards()->Get(i);
    shards.push_back({{"file_name", Str(s->file_name())}, {"size_bytes", s->size_bytes()},
                      {"header_digest", Str(s->header_digest())}});
  }
  j["checkpoint"] = {{"shards", shards}, {"digest", Str(p.checkpoint()->digest())}};
  j["exec_dtype"] = DTypeName(p.exec_dtype());
  j["run_shape"] = {{"max_batch", p.run_shape()->max_batch()}, {"max_seq_len", p.run_shape()->max_seq_len()}};
  J budgets = J::array();
  for (uint32_t i = 0; i < Len(p.budgets()); ++i)
    budgets.push_back({{"device", Str(p.budgets()->Get(i)->device())}, {"bytes", p.budgets()->Get(i)->bytes()}});
  j["budgets"] = budgets;
  if (const auto* pr = p.profile())
    j["profile"] = {{"name", Str(pr->name())}, {"h2d_gbps", pr->h2d_gbps()}, {"d2h_gbps", pr->d2h_gbps()},
                    {"disk_gbps", pr->disk_gbps()}, {"device_mem_gbps", pr->device_mem_gbps()},
                    {"matmul_tflops", pr->matmul_tflops()}, {"cpu_mem_gbps", pr->cpu_mem_gbps()},
                    {"cpu_gflops", pr->cpu_gflops()}};
  if (p.profile() && p.profile()->cpu_gemv_gbps() > 0) j["profile"]["cpu_gemv_gbps"] = p.profile()->cpu_gemv_gbps();
  if (const auto* pr = p.profile()) {
    for (auto [key, v] : {std::pair<const char*, double>{"h2d_busy_gbps", pr->h2d_busy_gbps()},
                          {"cpu_gemv_fp8_gbps", pr->cpu_gemv_fp8_gbps()},
                          {"cpu_gemv_int8_gbps", pr->cpu_gemv_int8_gbps()},
                          {"cpu_gemv_int4_gbps", pr->cpu_gemv_int4_gbps()}})
      if (v > 0) j["profile"][key] = v;
  }
  if (p.host_max_tokens() > 0) j["host_max_tokens"] = p.host_max_tokens();
  if (p.tensor_parallel() > 0) j["tensor_parallel"] = p.tensor_parallel();
  J tensors = J::array();
  for (uint32_t i = 0; i < Len(p.tensors()); ++i) {
    const auto* t = p.tensors()->Get(i);
    tensors.push_back({{"name", Str(t->name())}, {"shard", t->shard()}, {"offset", t->offset()},
                       {"size_bytes", t->size_bytes()}, {"src_dtype", DTypeName(t->src_dtype())},
                       {"shape", JList(t->shape())}});
  }
  j["tensors"] = tensors;
  J blocks = J::array();
  for (uint32_t i = 0; i < Len(p.blocks()); ++i) {
    const auto* b = p.blocks()->Get(i);
    J weights = J::array();
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      weights.push_back({{"tensor", wt->tensor()}, {"dtype", DTypeName(wt->dtype())}, {"size_bytes", wt->size_bytes()},
                         {"offset_in_block", wt->offset_in_block()}, {"tier", TierName(wt->tier())}});
      if (wt->slice_dim() >= 0) {
        weights.back()["slice"] = {{"dim", wt->slice_dim()}, {"begin", wt->slice_begin()}, {"end", wt->slice_end()}};
        if (wt->slice_rows() != nullptr && wt->slice_rows()->size() > 0)
          weights.back()["slice"]["rows"] = std::vector<int64_t>(wt->slice_rows()->begin(), wt->slice_rows()->end());
      }
    }
    blocks.push_back({{"name", Str(b->name())}, {"kind", Str(b->kind())}, {"layer", b->layer()},
                      {"prefix", Str(b->prefix())}, {"device", b->device()}, {"tier", TierName(b->tier())},
                      {"weights", weights}, {"weight_bytes", b->weight_bytes()}, {"home_buffer", b->home_buffer()},
                      {"staging_buffer", b->staging_buffer()}, {"disk_staging_buffer", b->disk_staging_buffer()},
                      {"kv_buffer", b->kv_buffer()}, {"host_buffer", b->host_buffer()},
                      {"block_kind", arch::BlockKindName(BlockKindOf(*b))}});
    if (p.tensor_parallel() > 0) blocks.back()["shard"] = b->shard();
  }
  j["blocks"] = blocks;
  J buffers = J::array();
  for (uint32_t i = 0; i < Len(p.buffers()); ++i) {
    const auto* b = p.buffers()->Get(i);
    buffers.push_back({{"name", Str(b->name())}, {"kind", schema::EnumNameBufferKind(b->kind())},
                       {"pool", schema::EnumNamePool(b->pool())}, {"device", b->device()}, {"offset", b->offset()},
                       {"size_bytes", b->size_bytes()}, {"first_step", b->first_step()},
                       {"last_step", b->last_step()}});
  }
  j["buffers"] = buffers;
  J arenas = J::array();
  for (uint32_t i = 0; i < Len(p.arenas()); ++i) {
    const auto* a = p.arenas()->Get(i);
    arenas.push_back({{"pool", schema::EnumNamePool(a->pool())}, {"device", a->device()}, {"size_bytes", a->size_bytes()}});
  }
  j["arenas"] = arenas;
  J steps = J::array();
  for (uint32_t i = 0; i < Len(p.steps()); ++i) {
    const auto* s = p.steps()->Get(i);
    J copies = J::array();
    for (uint32_t k = 0; k < Len(s->copies()); ++k) {
      const auto* c = s->copies()->Get(k);
      copies.push_back({{"block", c->block()}, {"source", TierName(c->source())},
                        {"wait_compute_steps", JList(c->wait_compute_steps())},
                        {"wait_copy_blocks", JList(c->wait_copy_blocks())}, {"stream", c->stream()}});
    }
    steps.push_back({{"block", s->block()}, {"copies", copies}, {"frees", JList(s->frees())},
                     {"predicted_copy_us", s->predicted_copy_us()}, {"predicted_decode_us", s->predicted_decode_us()},
                     {"predicted_prefill_us", s->predicted_prefill_us()}});
  }
  j["steps"] = steps;
  J usage = J::array();
  for (uint32_t i = 0; i < Len(p.usage()); ++i) {
    const auto* u = p.usage()->Get(i);
    usage.push_back({{"device", Str(u->device())}, {"resident_weights", u->resident_weights()},
                     {"staging", u->staging()}, {"kv_cache", u->kv_cache()}, {"activations", u->activations()},
                     {"workspace_reserve", u->workspace_reserve()}, {"total", u->total()}, {"budget", u->budget()}});
  }
  j["usage"] = usage;
  j["predicted_decode_us"] = p.predicted_decode_us();
  j["predicted_prefill_us"] = p.predicted_prefill_us();
  J streams = J::array();
  for (uint32_t i = 0; i < Len(p.streams()); ++i) {
    const auto* st = p.streams()->Get(i);
    J units = J::array();
    for (uint32_t u = 0; u < Len(st->units()); ++u) {
      const auto* un = st->units()->Get(u);
      units.push_back({{"block", un->block()}, {"weight", un->weight()}, {"row_begin", un->row_begin()},
                       {"row_end", un->row_end()}, {"source", TierName(un->source())}, {"bytes", un->bytes()},
                       {"whole", un->whole()}, {"ring_offset", un->ring_offset()}, {"wait_unit", un->wait_unit()},
                       {"disk_slot_offset", un->disk_slot_offset()}, {"disk_slot_bytes", un->disk_slot_bytes()},
                       {"disk_wait_unit", un->disk_wait_unit()}, {"predicted_copy_us", un->predicted_copy_us()}});
      if (un->host()) units.back()["host"] = true;
    }
    const StreamSummary sum = Summarize(*st);
    streams.push_back({{"device", st->device()}, {"ring_buffer", st->ring_buffer()},
                       {"disk_ring_buffer", st->disk_ring_buffer()}, {"chunk_bytes", st->chunk_bytes()},
                       {"layout", StreamLayout(*st)}, {"ring_bytes", BufferSize(p, st->ring_buffer())},
                       {"disk_ring_bytes", BufferSize(p, st->disk_ring_buffer())}, {"unit_count", sum.units},
                       {"row_chunks", sum.chunks}, {"disk_units", sum.disk}, {"streamed_bytes", sum.bytes},
                       {"units", units}});
  }
  j["streams"] = streams;
  if (Len(p.experts()) > 0) j["experts"] = ExpertJson(p);
  return j;
}

void WritePlanDiff(std::ostream& o, const schema::Plan& a, const schema::Plan& b, const std::string& an,
                   const std::string& bn) {
  o << "A: " << an << "\nB: " << bn << "\n";
  auto field = [&](const char* name, const std::string& x, const std::string& y) {
    if (x != y) o << name << ": " << x << " -> " << y << "\n";
  };
  field("model", Str(a.model_name()), Str(b.model_name()));
  field("model digest", Str(a.model_digest()), Str(b.model_digest()));
  field("checkpoint digest", Str(a.checkpoint()->digest()), Str(b.checkpoint()->digest()));
  field("strategy", Str(a.strategy()), Str(b.strategy()));
  field("exec dtype", DTypeName(a.exec_dtype()), DTypeName(b.exec_dtype()));
  field("run shape", std::to_string(a.run_shape()->max_batch()) + "x" + std::to_string(a.run_shape()->max_seq_len()),
        std::to_string(b.run_shape()->max_batch()) + "x" + std::to_string(b.run_shape()->max_seq_len()));
  auto pct = [](double x, double y) { return x > 0 ? " (" + Fixed((y - x) / x * 100.0, 1) + "%)" : std::string(); };
  o << "predicted decode:  " << Fixed(a.predicted_decode_us() / 1000) << " ms -> " << Fixed(b.predicted_decode_us() / 1000)
    << " ms" << pct(a.predicted_decode_us(), b.predicted_decode_us()) << "\n";
  o << "predicted prefill: " << Fixed(a.predicted_prefill_us() / 1000) << " ms -> "
    << Fixed(b.predicted_prefill_us() / 1000) << " ms" << pct(a.predicted_prefill_us(), b.predicted_prefill_us())
    << "\n";
  o << "weight bytes by location:\n";
  auto ta = BytesByTier(a), tb = BytesByTier(b);
  std::set<std::string> keys;
  for (const auto& [k, v] : ta) keys.insert(k);
  for (const auto& [k, v] : tb) keys.insert(k);
  for (const std::string& k : keys)
    o << "  " << k << ": " << FormatBytes(ta[k]) << " -> " << FormatBytes(tb[k]) << (ta[k] == tb[k] ? "" : "  *")
      << "\n";
  o << "arenas:\n";
  std::map<std::string, std::pair<uint64_t, uint64_t>> arenas;
  for (uint32_t i = 0; i < Len(a.arenas()); ++i) {
    const auto* x = a.arenas()->Get(i);
    arenas[PoolName(x->pool(), x->device())].first = x->size_bytes();
  }
  for (uint32_t i = 0; i < Len(b.arenas()); ++i) {
    const auto* x = b.arenas()->Get(i);
    arenas[PoolName(x->pool(), x->device())].second = x->size_bytes();
  }
  for (const auto& [k, v] : arenas)
    o << "  " << k << ": " << FormatBytes(v.first) << " -> " << FormatBytes(v.second) << (v.first == v.second ? "" : "  *")
      << "\n";
  std::map<int32_t, std::pair<std::string, std::string>> st_lines;
  for (uint32_t i = 0; i < Len(a.streams()); ++i) st_lines[a.streams()->Get(i)->device()].first = StreamLine(a, *a.streams()->Get(i));
  for (uint32_t i = 0; i < Len(b.streams()); ++i) st_lines[b.streams()->Get(i)->device()].second = StreamLine(b, *b.streams()->Get(i));
  if (!st_lines.empty()) o << "streams:\n";
  for (const auto& [d, v] : st_lines) {
    o << "  A " << (v.first.empty() ? DeviceName(d) + ": none" : v.first) << "\n";
    o << "  B " << (v.second.empty() ? DeviceName(d) + ": none" : v.second) << (v.first == v.second ? "" : "  *") << "\n";
  }
  // Placement differences by block name.
  std::map<std::string, const schema::Block*> bb;
  for (uint32_t i = 0; i < Len(b.blocks()); ++i) bb[Str(b.blocks()->Get(i)->name())] = b.blocks()->Get(i);
  std::vector<std::string> lines;
  std::set<std::string> seen;
  for (uint32_t i = 0; i < Len(a.blocks()); ++i) {
    const auto* x = a.blocks()->Get(i);
    const std::string name = Str(x->name());
    seen.insert(name);
    auto it = bb.find(name);
    if (it == bb.end()) lines.push_back("  " + name + ": " + Placement(*x) + " -> (absent)");
    else if (Placement(*x) != Placement(*it->second))
      lines.push_back("  " + name + ": " + Placement(*x) + " -> " + Placement(*it->second));
  }
  for (uint32_t i = 0; i < Len(b.blocks()); ++i)
    if (!seen.count(Str(b.blocks()->Get(i)->name())))
      lines.push_back("  " + Str(b.blocks()->Get(i)->name()) + ": (absent) -> " + Placement(*b.blocks()->Get(i)));
  o << "placement differences: " << lines.size() << "\n";
  for (const std::string& l : lines) o << l << "\n";
}

}  // namespace bigplan
