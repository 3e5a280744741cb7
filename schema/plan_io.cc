#include "schema/plan_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "support/file_read.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

Error Corrupt(const std::string& source, const std::string& what) {
  return MakeError(ErrorCode::kCorrupt, source + ": " + what);
}

template <typename Vec>
uint32_t Len(const Vec* v) {
  return v ? v->size() : 0;
}

// Every stream unit names a streamed weight of a block its device computes, a row range inside the weight, its exact
// byte count, a ring range inside the ring buffer, and waits in range; rings and disk rings are buffers of the
// right pool. (Whether the waits order every overlap is the planner's stream checker's proof, planner/streaming.h.)
Status CheckStreams(const schema::Plan& plan, const std::string& src) {
  const uint32_t n_blocks = Len(plan.blocks());
  const uint32_t n_buffers = Len(plan.buffers());
  for (uint32_t s = 0; s < Len(plan.streams()); ++s) {
    const auto* st = plan.streams()->Get(s);
    const std::string f = "streams[" + std::to_string(s) + "]";
    for (uint32_t t = 0; t < s; ++t)
      if (plan.streams()->Get(t)->device() == st->device()) return Corrupt(src, f + " repeats device " + std::to_string(st->device()));
    const uint32_t n_units = Len(st->units());
    if (n_units == 0) continue;
    if (st->ring_buffer() < 0 || st->ring_buffer() >= static_cast<int32_t>(n_buffers))
      return Corrupt(src, f + ".ring_buffer " + std::to_string(st->ring_buffer()) + " out of range");
    const auto* ring = plan.buffers()->Get(st->ring_buffer());
    if (ring->pool() != schema::Pool::DeviceArena || ring->device() != st->device())
      return Corrupt(src, f + ".ring_buffer is not in the arena of device " + std::to_string(st->device()));
    const schema::Buffer* disk_ring = nullptr;
    if (st->disk_ring_buffer() >= 0) {
      if (st->disk_ring_buffer() >= static_cast<int32_t>(n_buffers))
        return Corrupt(src, f + ".disk_ring_buffer out of range");
      disk_ring = plan.buffers()->Get(st->disk_ring_buffer());
      if (disk_ring->pool() != schema::Pool::PinnedHost) return Corrupt(src, f + ".disk_ring_buffer is not pinned");
    } else if (st->disk_ring_buffer() < -1) {
      return Corrupt(src, f + ".disk_ring_buffer out of range");
    }
    std::map<uint64_t, int64_t> host_rows;  // (block, weight) -> the next row its host units must cover, or -1
    std::set<uint64_t> host_done;
    for (uint32_t u = 0; u < n_units; ++u) {
      const auto* un = st->units()->Get(u);
      const std::string fu = f + ".units[" + std::to_string(u) + "]";
      if (un->block() >= n_blocks) return Corrupt(src, fu + ".block out of range");
      const auto* b = plan.blocks()->Get(un->block());
      if (b->device() != st->device()) return Corrupt(src, fu + " streams a block another device computes");
      if (un->weight() >= Len(b->weights())) return Corrupt(src, fu + ".weight out of range");
      const auto* w = b->weights()->Get(un->weight());
      if (w->tier() == schema::Tier::Gpu || w->tier() != un->source())
        return Corrupt(src, fu + ".source does not match its weight's tier");
      if (w->routed()) return Corrupt(src, fu + " streams a routed expert's weight (routed weights move on demand)");
      const auto* t = plan.tensors()->Get(w->tensor());
      int64_t rows = (t->shape() && t->shape()->size() > 0) ? t->shape()->Get(0) : 1;
      uint64_t row_bytes = WeightRowBytes(*w, *t);
      if (w->slice_dim() >= 0) {  // a tensor-parallel shard's (plain) slice: its own rows
        if (w->slice_dim() == 0) rows = SliceExtent(*w);
        row_bytes = rows > 0 ? w->size_bytes() / static_cast<uint64_t>(rows) : 0;
      }
      if (un->row_begin() < 0 || un->row_begin() >= un->row_end() || un->row_end() > std::max<int64_t>(rows, 1))
        return Corrupt(src, fu + " rows [" + std::to_string(un->row_begin()) + ", " + std::to_string(un->row_end()) +
                                ") outside the weight's " + std::to_string(rows) + " rows");
      const uint64_t expect = rows > 0 ? uint64_t(un->row_end() - un->row_begin()) * row_bytes : w->size_bytes();
      if (un->bytes() != expect)
        return Corrupt(src, fu + ".bytes " + std::to_string(un->bytes()) + ", expected " + std::to_string(expect));
      if (un->ring_offset() + un->bytes() > ring->size_bytes() || un->ring_offset() + un->bytes() < un->ring_offset())
        return Corrupt(src, fu + " lies outside its ring");
      if (un->wait_unit() < -1 || un->wait_unit() >= static_cast<int32_t>(n_units) || un->disk_wait_unit() < -1 ||
          un->disk_wait_unit() >= static_cast<int32_t>(n_units))
        return Corrupt(src, fu + " waits on a unit out of range");
      if (un->host()) {
        if (un->source() != schema::Tier::Cpu || un->whole() || st->device() < 0 || !t->shape() ||
            t->shape()->size() != 2)
          return Corrupt(src, fu + " is computed by the host but is not a row chunk of a matrix in pinned CPU memory "
                                   "streamed to a GPU");
        if (plan.exec_dtype() != schema::DType::BF16 &&
            (w->format() == schema::WeightFormat::Plain || plan.exec_dtype() != schema::DType::F16))
          return Corrupt(src, fu + " is computed by the host, which multiplies bf16 weights, or row-quantized ones "
                                   "for bf16 or fp16 activations");
        if (plan.host_max_tokens() == 0 || plan.host_max_tokens() > kMaxHostTokens)
          return Corrupt(src, fu + " is computed by the host but host_max_tokens is " +
                                  std::to_string(plan.host_max_tokens()) + " (1.." + std::to_string(kMaxHostTokens) +
                                  ")");
      }
      // A weight's host units are its last ones and cover its rows up to the end, contiguously.
      const uint64_t key = (uint64_t{un->block()} << 32) | un->weight();
      auto [it, fresh] = host_rows.try_emplace(key, un->host() ? un->row_begin() : -1);
      if (!fresh) {
        if (it->second >= 0 && (!un->host() || un->row_begin() != it->second))
          return Corrupt(src, fu + " follows its weight's host-computed rows but is not the next host row chunk");
        if (un->host() && it->second < 0) it->second = un->row_begin();
      }
      if (un->host()) it->second = un->row_end();
      if (un->host() && un->row_end() == rows) host_done.insert(key);
      if (un->source() == schema::Tier::Disk) {
        if (disk_ring == nullptr) return Corrupt(src, fu + " is read from disk but the stream has no disk ring");
        if (un->disk_slot_offset() + un->disk_slot_bytes() > disk_ring->size_bytes() ||
            un->disk_slot_offset() + un->disk_slot_bytes() < un->disk_slot_offset() || un->disk_slot_bytes() < un->bytes())
          return Corrupt(src, fu + " disk slot lies outside its disk ring or is too small");
      }
    }
    for (const auto& [key, next] : host_rows) {
      if (next >= 0 && !host_done.count(key))
        return Corrupt(src, f + ": the host-computed rows of blocks[" + std::to_string(key >> 32) + "].weights[" +
                                std::to_string(key & 0xffffffffu) + "] do not reach its last row");
    }
  }
  return Status::Ok();
}

// Routed experts (v6): each ring names buffers of the right pool and device whose slots fit them; every routed
// weight rests in the CPU tier or on disk (a disk ring then exists) in a sparse layer computed by a GPU with a ring.
// Tensor parallelism (v7): see Plan.tensor_parallel. Without it, every block is shard 0 and every weight whole.
Status CheckTensorParallel(const schema::Plan& plan, const std::string& src) {
  const uint32_t n = plan.tensor_parallel();
  const uint32_t n_blocks = Len(plan.blocks());
  if (n == 1 || n > 8) return Corrupt(src, "tensor_parallel " + std::to_string(n) + " is not 0 or 2 to 8");
  if (n == 0) {
    for (uint32_t i = 0; i < n_blocks; ++i) {
      const auto* b = plan.blocks()->Get(i);
      if (b->shard() != 0) return Corrupt(src, "blocks[" + std::to_string(i) + "] is a shard of a plan without tensor_parallel");
      for (uint32_t w = 0; w < Len(b->weights()); ++w)
        if (b->weights()->Get(w)->slice_dim() != -1)
          return Corrupt(src, "blocks[" + std::to_string(i) + "].weights[" + std::to_string(w) +
                                  "] is a slice in a plan without tensor_parallel");
    }
    return Status::Ok();
  }
  if (Len(plan.experts()) > 0 || plan.host_max_tokens() > 0)
    return Corrupt(src, "a tensor-parallel plan routes experts or computes on the host");
  if (n_blocks % n != 0) return Corrupt(src, std::to_string(n_blocks) + " blocks are not whole groups of " + std::to_string(n) + " shards");
  std::vector<int32_t> shard_device(n, -2);
  for (uint32_t i = 0; i < n_blocks; ++i) {
    const auto* b = plan.blocks()->Get(i);
    const auto* first = plan.blocks()->Get(i - i % n);
    const std::string f = "blocks[" + std::to_string(i) + "]";
    if (b->shard() != i % n) return Corrupt(src, f + ".shard " + std::to_string(b->shard()) + ", expected " + std::to_string(i % n));
    if (b->device() < 0) return Corrupt(src, f + " is a shard not computed on a GPU");
    if (shard_device[b->shard()] == -2) shard_device[b->shard()] = b->device();
    if (b->device() != shard_device[b->shard()])
      return Corrupt(src, f + ": shard " + std::to_string(b->shard()) + " runs on cuda:" + std::to_string(b->device()) +
                              " here but on cuda:" + std::to_string(shard_device[b->shard()]) + " elsewhere");
    if (b != first && (b->layer() != first->layer() || b->block_kind() != first->block_kind() || !b->name() ||
                       !first->name() || b->name()->str() != first->name()->str()))
      return Corrupt(src, f + " is not a shard of the same block as blocks[" + std::to_string(i - i % n) + "]");
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      const std::string fw = f + ".weights[" + std::to_string(w) + "]";
      if (wt->slice_dim() == -1) continue;
      const auto* t = plan.tensors()->Get(wt->tensor());
      const uint32_t rank = t->shape() ? t->shape()->size() : 0;
      if (wt->slice_dim() < 0 || wt->slice_dim() > 1 || static_cast<uint32_t>(wt->slice_dim()) >= rank)
        return Corrupt(src, fw + ".slice_dim " + std::to_string(wt->slice_dim()) + " is not a dimension of its tensor");
      const int64_t extent = t->shape()->Get(wt->slice_dim());
      if (wt->slice_begin() < 0 || wt->slice_begin() >= wt->slice_end() || wt->slice_end() > extent)
        return Corrupt(src, fw + " slices [" + std::to_string(wt->slice_begin()) + ", " + std::to_string(wt->slice_end()) +
                                ") of a dimension of " + std::to_string(extent));
      if (const auto* more = wt->slice_rows(); more != nullptr && more->size() > 0) {
        // Further ranges of the sliced dimension: pairs, each nonempty, after the one before it, inside the tensor.
        const std::string unit = wt->slice_dim() == 0 ? "rows" : "columns";
        if (more->size() % 2 != 0) return Corrupt(src, fw + ".slice_rows is not pairs of bounds");
        int64_t after = wt->slice_end();
        for (uint32_t r = 0; r < more->size(); r += 2) {
          if (more->Get(r) < after || more->Get(r) >= more->Get(r + 1) || more->Get(r + 1) > extent)
            return Corrupt(src, fw + ".slice_rows [" + std::to_string(more->Get(r)) + ", " +
                                    std::to_string(more->Get(r + 1)) + ") is not after the range before it inside " +
                                    std::to_string(extent) + " " + unit);
          after = more->Get(r + 1);
        }
      }
      if (wt->slice_dim() == 1 && wt->tier() == schema::Tier::Disk)
        return Corrupt(src, fw + " is a column slice resting on disk (disk is read in rows)");
      if (wt->format() != schema::WeightFormat::Plain) continue;  // (its size was checked with its format above)
      uint64_t numel = 1;
      for (uint32_t d = 0; d < rank; ++d)
        numel *= static_cast<uint64_t>(d == static_cast<uint32_t>(wt->slice_dim()) ? SliceExtent(*wt)
                                                                                  : t->shape()->Get(d));
      if (wt->size_bytes() != numel * DTypeSize(wt->dtype()))
        return Corrupt(src, fw + ".size_bytes " + std::to_string(wt->size_bytes()) + ", expected " +
                                std::to_string(numel * DTypeSize(wt->dtype())) + " for its slice");
    }
  }
  std::set<int32_t> distinct(shard_device.begin(), shard_device.end());
  if (distinct.size() != n) return Corrupt(src, "two shards of a tensor-parallel plan share a GPU");
  return Status::Ok();
}

Status CheckExperts(const schema::Plan& plan, const std::string& src) {
  const uint32_t n_buffers = Len(plan.buffers());
  std::map<int32_t, const schema::ExpertRing*> rings;
  for (uint32_t i = 0; i < Len(plan.experts()); ++i) {
    const auto* r = plan.experts()->Get(i);
    const std::string f = "experts[" + std::to_string(i) + "]";
    if (r->device() < 0) return Corrupt(src, f + ".device must be a GPU");
    if (!rings.emplace(r->device(), r).second) return Corrupt(src, f + " repeats device " + std::to_string(r->device()));
    if (r->ring_buffer() < 0 || r->ring_buffer() >= static_cast<int32_t>(n_buffers))
      return Corrupt(src, f + ".ring_buffer out of range");
    const auto* ring = plan.buffers()->Get(r->ring_buffer());
    if (ring->pool() != schema::Pool::DeviceArena || ring->device() != r->device())
      return Corrupt(src, f + ".ring_buffer is not in the arena of device " + std::to_string(r->device()));
    if (r->slots() == 0 || r->slot_bytes() == 0 || r->slot_bytes() > ring->size_bytes() / r->slots())
      return Corrupt(src, f + ": " + std::to_string(r->slots()) + " slots of " + std::to_string(r->slot_bytes()) +
                              " bytes do not fit its ring");
    if (r->disk_ring_buffer() >= 0) {
      if (r->disk_ring_buffer() >= static_cast<int32_t>(n_buffers)) return Corrupt(src, f + ".disk_ring_buffer out of range");
      const auto* disk = plan.buffers()->Get(r->disk_ring_buffer());
      if (disk->pool() != schema::Pool::PinnedHost) return Corrupt(src, f + ".disk_ring_buffer is not pinned");
      if (r->disk_slots() == 0 || r->slot_bytes() > disk->size_bytes() / r->disk_slots())
        return Corrupt(src, f + ": its disk slots do not fit its disk ring");
    } else if (r->disk_ring_buffer() < -1) {
      return Corrupt(src, f + ".disk_ring_buffer out of range");
    }
    if (!(r->cpu_share() >= 0 && r->cpu_share() <= 1)) return Corrupt(src, f + ".cpu_share outside [0, 1]");
    if (r->decode_max_tokens() > kMaxHostTokens)
      return Corrupt(src, f + ".decode_max_tokens above " + std::to_string(kMaxHostTokens));
  }
  const auto* config = plan.config();
  for (uint32_t b = 0; b < Len(plan.blocks()); ++b) {
    const auto* block = plan.blocks()->Get(b);
    for (uint32_t w = 0; w < Len(block->weights()); ++w) {
      const auto* weight = block->weights()->Get(w);
      if (!weight->routed()) continue;
      const std::string f = "blocks[" + std::to_string(b) + "].weights[" + std::to_string(w) + "]";
      auto it = rings.find(block->device());
      if (it == rings.end()) return Corrupt(src, f + " is routed but its device has no expert ring");
      const int32_t layer = block->layer();
      if (config == nullptr || config->num_experts() == 0 || layer < 0 || !config->sparse_layers() ||
          static_cast<uint32_t>(layer) >= config->sparse_layers()->size() || !config->sparse_layers()->Get(layer))
        return Corrupt(src, f + " is routed but its block is not a sparse layer");
      if (weight->tier() == schema::Tier::Gpu) return Corrupt(src, f + " is routed but resident");
      if (weight->tier() == schema::Tier::Disk && it->second->disk_ring_buffer() < 0)
        return Corrupt(src, f + " is routed from disk but its device's expert ring has no disk ring");
      if (weight->size_bytes() > it->second->slot_bytes()) return Corrupt(src, f + " is larger than an expert slot");
    }
  }
  return Status::Ok();
}

// config.rope: present (every version-3 plan has it), a known type, values the kernels can compute.
Status CheckRope(const schema::ModelConfig& config, const std::string& src) {
  const schema::RopeParams* rope = config.rope();
  if (rope == nullptr) return Corrupt(src, "plan lacks config.rope (the model's RoPE parameters)");
  if (static_cast<uint8_t>(rope->type()) > static_cast<uint8_t>(schema::RopeType::MAX))
    return Corrupt(src, "config.rope.type " + std::to_string(static_cast<int>(rope->type())) + " is unknown");
  Status st = arch::CheckRopeParams(RopeParamsOf(*rope), config.head_dim());
  if (!st.ok()) return Corrupt(src, "config." + st.error().message);
  if (config.rotary_dim() > 0 && rope->rotary_dim() != config.rotary_dim())
    return Corrupt(src, "config.rope.rotary_dim " + std::to_string(rope->rotary_dim()) +
                            " disagrees with config.rotary_dim " + std::to_string(config.rotary_dim()));
  return Status::Ok();
}

// (v5) A pre-quantized tensor: its kind is known, it is a 2-D [n, k] weight, its sources are in range and of the
// kind's dtypes, and its own location is that of sources[0]. Plain tensors have no sources.
Status CheckPreQuant(const schema::Tensor& t, uint32_t n_shards, const std::string& f, const std::string& src) {
  const uint32_t n_sources = Len(t.sources());
  if (static_cast<uint8_t>(t.prequant()) > static_cast<uint8_t>(schema::PreQuantKind::MAX))
    return Corrupt(src, f + ".prequant is unknown");
  if (t.prequant() == schema::PreQuantKind::None) {
    if (n_sources != 0) return Corrupt(src, f + " has source tensors but is not pre-quantized");
    return Status::Ok();
  }
  const bool fp8 = t.prequant() == schema::PreQuantKind::Fp8;
  if (t.shape() == nullptr || t.shape()->size() != 2 || t.shape()->Get(0) <= 0 || t.shape()->Get(1) <= 0)
    return Corrupt(src, f + " is pre-quantized but not a 2-D matrix");
  if (fp8 ? n_sources != 2 : (n_sources != 3 && n_sources != 4))
    return Corrupt(src, f + " has " + std::to_string(n_sources) + " source tensors, expected " + (fp8 ? "2" : "3 or 4"));
  if (fp8 && (t.block_rows() == 0) != (t.block_cols() == 0))
    return Corrupt(src, f + " has block_rows " + std::to_string(t.block_rows()) + " and block_cols " +
                            std::to_string(t.block_cols()) + " (both or neither)");
  for (uint32_t i = 0; i < n_sources; ++i) {
    const schema::SourceTensor* s = t.sources()->Get(i);
    const std::string fs = f + ".sources[" + std::to_string(i) + "]";
    if (s->name() == nullptr) return Corrupt(src, fs + " has no name");
    if (s->shard() >= n_shards) return Corrupt(src, fs + ".shard out of range");
    const schema::DType d = s->src_dtype();
    bool ok = true;
    if (fp8) ok = i == 0 ? d == schema::DType::F8_E4M3 : d == schema::DType::F32;
    else if (i == 2) ok = d == schema::DType::F16 || d == schema::DType::BF16 || d == schema::DType::F32;
    else ok = d == schema::DType::I32;
    if (!ok) return Corrupt(src, fs + " (" + s->name()->str() + ") has dtype " + DTypeName(d));
  }
  const schema::SourceTensor* s0 = t.sources()->Get(0);
  if (t.shard() != s0->shard() || t.offset() != s0->offset() || t.size_bytes() != s0->size_bytes() ||
      t.src_dtype() != s0->src_dtype())
    return Corrupt(src, f + ": its location is not that of its first source tensor");
  return Status::Ok();
}

Status CheckIndices(const schema::Plan& plan, const std::string& src) {
  if (!plan.checkpoint() || !plan.config() || !plan.run_shape())
    return Corrupt(src, "plan lacks its checkpoint, config or run_shape section");
  BIGPLAN_RETURN_IF_ERROR(CheckRope(*plan.config(), src));
  const uint32_t n_shards = Len(plan.checkpoint()->shards());
  const uint32_t n_tensors = Len(plan.tensors());
  const uint32_t n_blocks = Len(plan.blocks());
  const uint32_t n_buffers = Len(plan.buffers());
  const uint32_t n_steps = Len(plan.steps());
  for (uint32_t i = 0; i < n_tensors; ++i) {
    const auto* t = plan.tensors()->Get(i);
    if (t->shard() >= n_shards)
      return Corrupt(src, "tensors[" + std::to_string(i) + "].shard " + std::to_string(t->shard()) + " out of range");
    if (!t->name()) return Corrupt(src, "tensors[" + std::to_string(i) + "] has no name");
    BIGPLAN_RETURN_IF_ERROR(CheckPreQuant(*t, n_shards, "tensors[" + std::to_string(i) + "] (" + t->name()->str() + ")", src));
  }
  auto check_buffer = [&](int32_t b, const std::string& field) -> Status {
    if (b < -1 || b >= static_cast<int32_t>(n_buffers))
      return Corrupt(src, field + " " + std::to_string(b) + " out of range");
    return Status::Ok();
  };
  for (uint32_t i = 0; i < n_blocks; ++i) {
    const auto* b = plan.blocks()->Get(i);
    const std::string f = "blocks[" + std::to_string(i) + "]";
    if (!b->name()) return Corrupt(src, f + " has no name");
    BIGPLAN_RETURN_IF_ERROR(check_buffer(b->home_buffer(), f + ".home_buffer"));
    BIGPLAN_RETURN_IF_ERROR(check_buffer(b->host_buffer(), f + ".host_buffer"));
    BIGPLAN_RETURN_IF_ERROR(check_buffer(b->staging_buffer(), f + ".staging_buffer"));
    BIGPLAN_RETURN_IF_ERROR(check_buffer(b->disk_staging_buffer(), f + ".disk_staging_buffer"));
    BIGPLAN_RETURN_IF_ERROR(check_buffer(b->kv_buffer(), f + ".kv_buffer"));
    if (static_cast<uint8_t>(b->tier()) > static_cast<uint8_t>(schema::Tier::MAX))
      return Corrupt(src, f + ".tier " + std::to_string(static_cast<int>(b->tier())) + " is unknown");
    if (static_cast<uint8_t>(b->block_kind()) > static_cast<uint8_t>(schema::BlockKind::MAX))
      return Corrupt(src, f + ".block_kind " + std::to_string(static_cast<int>(b->block_kind())) + " is unknown");
    if (b->kind() && b->kind()->size() > 0 && b->kind()->str() != arch::BlockKindName(BlockKindOf(*b)))
      return Corrupt(src, f + ".kind \"" + b->kind()->str() + "\" disagrees with its block_kind " +
                              arch::BlockKindName(BlockKindOf(*b)));
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      const std::string fw = f + ".weights[" + std::to_string(w) + "]";
      if (wt->tensor() >= n_tensors) return Corrupt(src, fw + ".tensor out of range");
      if (static_cast<uint8_t>(wt->tier()) > static_cast<uint8_t>(schema::Tier::MAX))
        return Corrupt(src, fw + ".tier is unknown");
      if (static_cast<uint8_t>(wt->dtype()) > static_cast<uint8_t>(schema::DType::MAX))
        return Corrupt(src, fw + ".dtype is unknown");
      if (static_cast<uint8_t>(wt->format()) > static_cast<uint8_t>(schema::WeightFormat::MAX))
        return Corrupt(src, fw + ".format is unknown");
      if (wt->format() != schema::WeightFormat::Plain) {
        // A quantized weight is a 2-D matrix of whole groups whose size is rows x RowBytes.
        const auto* t = plan.tensors()->Get(wt->tensor());
        const uint64_t row_bytes = WeightRowBytes(*wt, *t);
        if (row_bytes == 0)
          return Corrupt(src, fw + ": a " + quant::FormatName(FormatOf(wt->format())) + " weight with group size " +
                                  std::to_string(wt->group_size()) + " does not fit its tensor's shape");
        // (A tensor-parallel shard's rows of it: its slice's rows; its columns: RowBytes of its slice's columns.)
        const int64_t rows = wt->slice_dim() == 0 ? SliceExtent(*wt) : t->shape()->Get(0);
        if (rows <= 0 || wt->size_bytes() != row_bytes * uint64_t(rows))
          return Corrupt(src, fw + ".size_bytes " + std::to_string(wt->size_bytes()) + ", expected " +
                                  std::to_string(row_bytes * uint64_t(std::max<int64_t>(rows, 0))) + " for its format");
        // The executor quantizes it at load from a floating-point tensor (or converts a pre-quantized one) into GPU
        // or pinned CPU memory: a quantized weight is never read from disk while streaming.
        const schema::DType s = t->src_dtype();
        if (t->prequant() == schema::PreQuantKind::Fp8 && wt->format() != schema::WeightFormat::Fp8E4M3)
          return Corrupt(src, fw + ": an fp8 pre-quantized tensor stored as " + quant::FormatName(FormatOf(wt->format())));
        if (t->prequant() == schema::PreQuantKind::Gptq && wt->format() != schema::WeightFormat::Int4)
          return Corrupt(src, fw + ": a GPTQ pre-quantized tensor stored as " + quant::FormatName(FormatOf(wt->format())));
        if (t->prequant() == schema::PreQuantKind::None && s != schema::DType::F32 && s != schema::DType::F16 &&
            s != schema::DType::BF16 && s != schema::DType::F64)
          return Corrupt(src, fw + " is quantized from a " + DTypeName(s) + " tensor; only floating-point tensors are");
        if (wt->tier() == schema::Tier::Disk)
          return MakeError(ErrorCode::kUnsupported,
                           src + ": " + fw + " is quantized but rests on disk; quantized weights rest on the GPU or "
                                             "in CPU memory: plan again with a larger cpu budget");
      } else if (plan.tensors()->Get(wt->tensor())->prequant() != schema::PreQuantKind::None) {
        return Corrupt(src, fw + ": a pre-quantized tensor used as a plain weight");
      }
      const uint64_t end = wt->offset_in_block() + wt->size_bytes();
      if (end < wt->offset_in_block()) return Corrupt(src, fw + " overflows");
      // Each resting weight lies inside the buffer of its tier.
      int32_t home = -1;
      if (wt->tier() == schema::Tier::Gpu) home = b->home_buffer();
      if (wt->tier() == schema::Tier::Cpu) home = b->host_buffer();
      if (wt->tier() != schema::Tier::Disk) {
        if (home < 0) return Corrupt(src, fw + " rests in the " + TierName(wt->tier()) + " tier, but the block has no buffer there");
        if (end > plan.buffers()->Get(home)->size_bytes())
          return Corrupt(src, fw + " [" + std::to_string(wt->offset_in_block()) + ", " + std::to_string(end) +
                                  ") exceeds its buffer " + std::to_string(home));
      }
    }
  }
  for (uint32_t i = 0; i < n_buffers; ++i) {
    const auto* b = plan.buffers()->Get(i);
    const std::string f = "buffers[" + std::to_string(i) + "]";
    bool found = false;
    for (uint32_t a = 0; a < Len(plan.arenas()); ++a) {
      const auto* ar = plan.arenas()->Get(a);
      if (ar->pool() != b->pool() || (b->pool() == schema::Pool::DeviceArena && ar->device() != b->device())) continue;
      found = true;
      if (b->offset() + b->size_bytes() > ar->size_bytes() || b->offset() + b->size_bytes() < b->offset())
        return Corrupt(src, f + " [" + std::to_string(b->offset()) + ", +" + std::to_string(b->size_bytes()) +
                                ") exceeds its arena of " + std::to_string(ar->size_bytes()) + " bytes");
    }
    if (!found) return Corrupt(src, f + " has no arena for its pool and device");
    if (b->first_step() > b->last_step() || (n_steps > 0 && b->last_step() >= n_steps))
      return Corrupt(src, f + " has an invalid step range");
  }
  for (uint32_t i = 0; i < n_steps; ++i) {
    const auto* s = plan.steps()->Get(i);
    const std::string f = "steps[" + std::to_string(i) + "]";
    if (s->block() >= n_blocks) return Corrupt(src, f + ".block out of range");
    for (uint32_t c = 0; c < Len(s->copies()); ++c) {
      const auto* cp = s->copies()->Get(c);
      if (cp->block() >= n_blocks) return Corrupt(src, f + ".copies[" + std::to_string(c) + "].block out of range");
      for (uint32_t k = 0; k < Len(cp->wait_compute_steps()); ++k)
        if (cp->wait_compute_steps()->Get(k) >= n_steps) return Corrupt(src, f + " waits on a step out of range");
      for (uint32_t k = 0; k < Len(cp->wait_copy_blocks()); ++k)
        if (cp->wait_copy_blocks()->Get(k) >= n_blocks) return Corrupt(src, f + " waits on a block out of range");
    }
    for (uint32_t k = 0; k < Len(s->frees()); ++k)
      if (s->frees()->Get(k) >= n_buffers) return Corrupt(src, f + ".frees out of range");
  }
  BIGPLAN_RETURN_IF_ERROR(CheckStreams(plan, src));
  BIGPLAN_RETURN_IF_ERROR(CheckTensorParallel(plan, src));
  return CheckExperts(plan, src);
}

constexpr size_t kChecksumChars = sizeof(kPlanChecksumPlaceholder) - 1;

// SHA-256 of the buffer with the checksum's characters [at, at + 64) read as the placeholder.
std::string ContentChecksum(const uint8_t* data, size_t size, size_t at) {
  Sha256 h;
  h.Update(data, at);
  h.Update(kPlanChecksumPlaceholder, kChecksumChars);
  h.Update(data + at + kChecksumChars, size - at - kChecksumChars);
  return h.HexDigest();
}

}  // namespace

Status SealPlan(std::vector<uint8_t>* bytes) {
  if (bytes->size() < 8 || !schema::PlanBufferHasIdentifier(bytes->data()))
    return MakeError(ErrorCode::kInternal, "SealPlan: not a plan buffer");
  const flatbuffers::String* sum = schema::GetPlan(bytes->data())->content_sha256();
  if (sum == nullptr || sum->str() != kPlanChecksumPlaceholder)
    return MakeError(ErrorCode::kInternal, "SealPlan: the plan has no checksum placeholder");
  const size_t at = reinterpret_cast<const uint8_t*>(sum->data()) - bytes->data();
  const std::string hex = ContentChecksum(bytes->data(), bytes->size(), at);
  std::memcpy(bytes->data() + at, hex.data(), kChecksumChars);
  return Status::Ok();
}

Result<const schema::Plan*> VerifyPlan(const uint8_t* data, size_t size, const std::string& source) {
  if (data == nullptr || size < 8 || !schema::PlanBufferHasIdentifier(data))
    return Corrupt(source, "not a bigplan plan (missing the \"BGPL\" file identifier)");
  flatbuffers::Verifier verifier(data, size, /*max_depth=*/64, /*max_tables=*/10'000'000);
  if (!schema::VerifyPlanBuffer(verifier))
    return Corrupt(source, "plan file fails flatbuffer verification (truncated or damaged)");
  const schema::Plan* plan = schema::GetPlan(data);
  // The checksum first: a damaged version field must read as damage, not as another version.
  if (const flatbuffers::String* sum = plan->content_sha256()) {
    const size_t at = reinterpret_cast<const uint8_t*>(sum->data()) - data;
    if (sum->size() != kChecksumChars || at + kChecksumChars > size)
      return Corrupt(source, "plan checksum (content_sha256) is malformed: the file is damaged; re-run the planner");
    if (ContentChecksum(data, size, at) != sum->str())
      return Corrupt(source, "plan file is damaged: its bytes do not match its checksum (content_sha256); "
                             "re-run the planner");
  }
  if (plan->version() < kPlanVersion)
    return MakeError(ErrorCode::kIncompatible,
                     source + ": made by an older planner (plan version " + std::to_string(plan->version()) +
                         "; this build reads version " + std::to_string(kPlanVersion) + "): plan again");
  if (plan->version() != kPlanVersion)
    return MakeError(ErrorCode::kIncompatible,
                     source + ": plan version " + std::to_string(plan->version()) + " is not supported by this build " +
                         "(reads version " + std::to_string(kPlanVersion) + "); re-run the planner");
  BIGPLAN_RETURN_IF_ERROR(CheckIndices(*plan, source));
  return plan;
}

Result<std::vector<uint8_t>> ReadFileBytes(const std::string& path) {
  return ReadBoundedFileBytes(path, kPlanFile);
}

namespace {

// Writes all of `data` to an open stream and closes it; the error names `path` and the system's reason.
Status WriteAndClose(FILE* f, const std::string& path, const uint8_t* data, size_t size) {
  const bool wrote = std::fwrite(data, 1, size, f) == size && std::fflush(f) == 0;
  int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (wrote && !closed) err = errno;
  if (!wrote || !closed) return MakeError(ErrorCode::kIo, path + ": write failed: " + std::strerror(err));
  return Status::Ok();
}

}  // namespace

Status WriteFileBytes(const std::string& path, const uint8_t* data, size_t size) {
  // A symbolic link keeps pointing where it did: write to its target.
  std::string target = path;
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    if (char* real = ::realpath(path.c_str(), nullptr)) {
      target = real;
      std::free(real);
    }
  }
  if (::stat(target.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return MakeError(ErrorCode::kIo, path + ": is a directory, not a file");
    if (!S_ISREG(st.st_mode)) {
      // A device or a pipe (/dev/stdout, a FIFO): write into it; renaming a file over it would replace it.
      FILE* f = std::fopen(target.c_str(), "wb");
      if (!f) return MakeError(ErrorCode::kIo, path + ": cannot open for writing: " + std::strerror(errno));
      return WriteAndClose(f, path, data, size);
    }
  }
  // A regular file is replaced atomically: readers see the old or the new file, never a partial one.
  const std::string tmp = target + ".tmp" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return MakeError(ErrorCode::kIo, path + ": cannot create: " + std::strerror(errno));
  Status written = WriteAndClose(f, path, data, size);
  if (written.ok() && std::rename(tmp.c_str(), target.c_str()) != 0) {
    written = MakeError(ErrorCode::kIo, path + ": cannot replace: " + std::strerror(errno));
  }
  if (!written.ok()) std::remove(tmp.c_str());
  return written;
}

Result<PlanFile> PlanFile::Load(const std::string& path) {
  PlanFile pf;
  pf.path_ = path;
  BIGPLAN_ASSIGN_OR_RETURN(pf.bytes_, ReadFileBytes(path));
  BIGPLAN_ASSIGN_OR_RETURN(pf.plan_, VerifyPlan(pf.bytes_.data(), pf.bytes_.size(), path));
  return pf;
}

arch::BlockKind BlockKindOf(const schema::Block& block) { return static_cast<arch::BlockKind>(block.block_kind()); }

arch::RopeParams RopeParamsOf(const schema::RopeParams& r) {
  arch::RopeParams p;
  p.type = static_cast<arch::RopeType>(r.type());
  p.theta = r.theta();
  p.rotary_dim = r.rotary_dim();
  p.factor = r.factor();
  p.low_freq_factor = r.low_freq_factor();
  p.high_freq_factor = r.high_freq_factor();
  p.original_max_position_embeddings = r.original_max_position_embeddings();
  p.beta_fast = r.beta_fast();
  p.beta_slow = r.beta_slow();
  p.ramp_low = r.ramp_low();
  p.ramp_high = r.ramp_high();
  p.attention_factor = r.attention_factor();
  if (r.short_factor()) p.short_factor.assign(r.short_factor()->begin(), r.short_factor()->end());
  if (r.long_factor()) p.long_factor.assign(r.long_factor()->begin(), r.long_factor()->end());
  return p;
}

flatbuffers::Offset<schema::RopeParams> CreateRopeParams(flatbuffers::FlatBufferBuilder& fb, const arch::RopeParams& r) {
  return schema::CreateRopeParamsDirect(fb, ToSchemaRopeType(r.type), r.theta, r.rotary_dim, r.factor,
                                        r.low_freq_factor, r.high_freq_factor, r.original_max_position_embeddings,
                                        r.beta_fast, r.beta_slow, r.ramp_low, r.ramp_high, r.attention_factor,
                                        r.short_factor.empty() ? nullptr : &r.short_factor,
                                        r.long_factor.empty() ? nullptr : &r.long_factor);
}

const char* DTypeName(schema::DType d) {
  const char* n = schema::EnumNameDType(d);
  return (n && *n) ? n : "?";
}

size_t DTypeSize(schema::DType d) {
  switch (d) {
    case schema::DType::F64: case schema::DType::I64: return 8;
    case schema::DType::F32: case schema::DType::I32: return 4;
    case schema::DType::F16: case schema::DType::BF16: case schema::DType::I16: return 2;
    default: return 1;
  }
}

int64_t SliceExtent(const schema::Weight& w) {
  if (w.slice_dim() < 0) return 0;
  // (A damaged plan's reversed range or overflowing sum: -1, which no check accepts.)
  int64_t n = 0;
  auto add = [&n](int64_t b, int64_t e) {
    int64_t d = 0;
    if (n < 0 || __builtin_sub_overflow(e, b, &d) || d < 0 || __builtin_add_overflow(n, d, &n)) n = -1;
  };
  add(w.slice_begin(), w.slice_end());
  if (w.slice_rows() != nullptr) {
    for (uint32_t i = 0; i + 1 < w.slice_rows()->size(); i += 2) add(w.slice_rows()->Get(i), w.slice_rows()->Get(i + 1));
  }
  return n;
}

uint64_t WeightRowBytes(const schema::Weight& w, const schema::Tensor& t) {
  const auto* shape = t.shape();
  const int64_t rows = (shape && shape->size() > 0) ? shape->Get(0) : 1;
  if (w.format() != schema::WeightFormat::Plain && w.slice_dim() == 1) {
    // A tensor-parallel shard's columns of a quantized weight: its rows hold only those columns' groups.
    const int64_t cols = SliceExtent(w);
    if (shape == nullptr || shape->size() != 2 || cols <= 0) return 0;
    Result<uint64_t> r = quant::RowBytes(FormatOf(w.format()), cols, w.group_size());
    return r.ok() ? *r : 0;
  }
  if (w.format() == schema::WeightFormat::Plain) {
    // The product of the other dimensions (a damaged shape's negative dimension or overflowing product: no row).
    if (rows <= 0) return 0;
    uint64_t row = DTypeSize(w.dtype());
    for (uint32_t d = 1; shape && d < shape->size(); ++d) {
      const int64_t dim = shape->Get(d);
      if (dim < 0 || __builtin_mul_overflow(row, static_cast<uint64_t>(dim), &row)) return 0;
    }
    return row;
  }
  if (shape == nullptr || shape->size() != 2) return 0;
  Result<uint64_t> r = quant::RowBytes(FormatOf(w.format()), shape->Get(1), w.group_size());
  return r.ok() ? *r : 0;
}

const char* TierName(schema::Tier t) {
  switch (t) {
    case schema::Tier::Gpu: return "gpu";
    case schema::Tier::Cpu: return "cpu";
    case schema::Tier::Disk: return "disk";
  }
  return "?";
}

}  // namespace bigplan
