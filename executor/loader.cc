#include "executor/loader.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <span>
#include <map>
#include <set>

#include "schema/plan_io.h"
#include "support/file_read.h"
#include "support/sha256.h"
#include "support/units.h"

namespace bigplan::executor_internal {
namespace {

using Clock = std::chrono::steady_clock;

std::string Str(const flatbuffers::String* s) { return s == nullptr ? std::string() : s->str(); }

// Key/value heads in one block's KV cache: a tensor-parallel shard caches its own (num_kv_heads / shards).
int64_t BlockKvHeads(const schema::Plan& plan) {
  return plan.config()->num_kv_heads() / std::max<uint32_t>(1, plan.tensor_parallel());
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::vector<int64_t> ShapeOf(const flatbuffers::Vector<int64_t>* shape) {
  std::vector<int64_t> out;
  if (shape != nullptr) out.assign(shape->begin(), shape->end());
  return out;
}

// Prints "loading weights: X / Y" to stderr about once a second, once loading has taken more than a second.
class LoadProgress {
 public:
  LoadProgress(uint64_t total, bool enabled) : total_(total), enabled_(enabled), start_(Clock::now()), last_(start_) {}
  void Add(uint64_t bytes) {
    done_ += bytes;
    if (!enabled_) return;
    const auto now = Clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    printed_ = true;
    Print();
  }
  void Finish() {
    if (enabled_ && printed_) Print();
  }

 private:
  void Print() const {
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "bigplan: loading weights: %s / %s (%.0f%%, %.1f s)\n", FormatBytes(done_).c_str(),
                 FormatBytes(total_).c_str(), total_ ? 100.0 * double(done_) / double(total_) : 100.0, secs);
  }
  uint64_t total_;
  uint64_t done_ = 0;
  bool enabled_;
  bool printed_ = false;
  Clock::time_point start_;
  Clock::time_point last_;
};

constexpr uint64_t kLoadChunkBytes = 64ull << 20;

struct Loader {
  const LoadOptions& options;
  ModelState& state;
  const schema::Plan& plan;
  std::string plan_name;
  std::vector<arch::BlockKind> block_kinds;  // per block, from BindSlots
  std::vector<arch::SlotTable> slot_tables;  // per block, from BindSlots
  // A tensor-parallel shard's rows from several ranges of its tensor (Weight.slice_rows), gathered for the load
  // (such a weight never rests on disk, so nothing reads its source afterwards).
  std::vector<std::vector<uint8_t>> gathered_rows;

  Result<uint8_t*> BufferPtr(int32_t index, schema::Pool pool, int32_t device, const std::string& what,
                             const std::string& block, uint64_t min_size) {
    const auto* buffers = plan.buffers();
    if (index < 0 || buffers == nullptr || static_cast<uint32_t>(index) >= buffers->size()) {
      return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + block + ": " + what + " buffer " +
                                                std::to_string(index) + " missing or out of range");
    }
    const schema::Buffer* b = buffers->Get(index);
    if (b->pool() != pool || (pool == schema::Pool::DeviceArena && b->device() != device)) {
      return MakeError(ErrorCode::kCorrupt,
                       plan_name + ": block " + block + ": " + what + " buffer '" + Str(b->name()) +
                           "' is in the wrong pool (" + (b->pool() == schema::Pool::PinnedHost ? "pinned" : "device") +
                           " " + std::to_string(b->device()) + ")");
    }
    if (b->size_bytes() < min_size) {
      return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + block + ": " + what + " buffer '" +
                                                Str(b->name()) + "' holds " + std::to_string(b->size_bytes()) +
                                                " bytes, needs " + std::to_string(min_size));
    }
    for (ArenaRuntime& a : state.arenas) {
      if (a.pool != pool) continue;
      if (pool == schema::Pool::DeviceArena && a.device != device) continue;
      if (b->offset() + b->size_bytes() > a.memory.size()) break;
      return a.memory.data() + b->offset();
    }
    return MakeError(ErrorCode::kCorrupt,
                     plan_name + ": buffer '" + Str(b->name()) + "' lies outside its arena (or has no arena)");
  }

  Status AllocateArenas(int cuda_count) {
    const auto* arenas = plan.arenas();
    std::set<std::pair<int, int>> seen;
    if (arenas == nullptr) return Status::Ok();
    for (const schema::Arena* a : *arenas) {
      const int device = a->pool() == schema::Pool::PinnedHost ? -1 : a->device();
      if (!seen.insert({static_cast<int>(a->pool()), device}).second) {
        return MakeError(ErrorCode::kCorrupt, plan_name + ": two arenas for one pool");
      }
      if (options.rank_device >= 0 && a->pool() == schema::Pool::DeviceArena && device != options.rank_device) {
        continue;  // another rank's
      }
      ArenaRuntime rt;
      rt.pool = a->pool();
      rt.device = device;
      const uint64_t size = a->size_bytes();
      if (a->pool() == schema::Pool::PinnedHost) {
        if (state.cpu_mode) {
          BIGPLAN_ASSIGN_OR_RETURN(rt.memory, Allocation::Host(size, "host pool"));
        } else {
          BIGPLAN_ASSIGN_OR_RETURN(rt.memory, Allocation::Pinned(size, "pinned host pool"));
        }
      } else if (device < 0 || state.cpu_mode) {
        const std::string name = device < 0 ? "cpu arena" : "cuda:" + std::to_string(device) + " arena (on the host)";
        BIGPLAN_ASSIGN_OR_RETURN(rt.memory, Allocation::Host(size, name));
      } else {
        const int cuda = options.rank_device >= 0 ? options.local_device : device;  // a rank computes on its own
        if (cuda >= cuda_count) {
          if (cuda != device) {
            return MakeError(ErrorCode::kDevice, plan_name + ": this rank computes the plan's cuda:" +
                                                     std::to_string(device) + " on cuda:" + std::to_string(cuda) +
                                                     " but " + std::to_string(cuda_count) + " CUDA device(s) are visible");
          }
          return MakeError(ErrorCode::kDevice, plan_name + ": the plan has an arena on cuda:" +
                                                   std::to_string(device) + " but " + std::to_string(cuda_count) +
                                                   " CUDA device(s) are visible (run on the CPU with force_cpu)");
        }
        BIGPLAN_ASSIGN_OR_RETURN(rt.memory, Allocation::Device(cuda, size, "cuda:" + std::to_string(cuda) + " arena"));
      }
      state.arenas.push_back(std::move(rt));
    }
    return Status::Ok();
  }

  Status MapShards(const Checkpoint& checkpoint) {
    const auto* shards = plan.checkpoint()->shards();
    const auto& fp = checkpoint.fingerprint();
    for (uint32_t i = 0; i < shards->size(); ++i) {
      const std::string name = Str(shards->Get(i)->file_name());
      std::string path;
      for (size_t j = 0; j < fp.shards.size() && j < checkpoint.shard_paths().size(); ++j) {
        if (fp.shards[j].file_name == name) path = checkpoint.shard_paths()[j];
      }
      if (path.empty()) return MakeError(ErrorCode::kInternal, "shard " + name + " has no path");
      BIGPLAN_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
      mapped.ProtectFromTruncation();  // a shard that shrinks while running: an error naming it, not SIGBUS
      state.shards.push_back(std::make_unique<MappedFile>(std::move(mapped)));
    }
    return Status::Ok();
  }

  // Binds every block's tensors to its kernel's slots (arch/binding.h), from the plan alone, before any memory is
  // allocated: a block whose tensors the kernels cannot read (unknown, mis-shaped or missing) fails the load here,
  // never a forward pass.
  Status BindSlots() {
    const auto* blocks = plan.blocks();
    const auto* tensors = plan.tensors();
    const schema::ModelConfig* c = plan.config();
    if (blocks == nullptr || blocks->size() == 0) return MakeError(ErrorCode::kCorrupt, plan_name + ": no blocks");
    if (c == nullptr) return MakeError(ErrorCode::kCorrupt, plan_name + ": no model config");
    Result<const arch::FamilyInfo*> family = arch::LookupFamily(Str(c->architecture()));
    if (!family.ok()) return WithContext(family.take_error(), plan_name);
    const arch::ModelConfig config = ShapeConfigOf(SpecFromPlan(plan));
    std::vector<std::string> prefixes(blocks->size());
    std::vector<arch::BlockRef> refs;
    for (uint32_t i = 0; i < blocks->size(); ++i) {
      const schema::Block* b = blocks->Get(i);
      block_kinds.push_back(BlockKindOf(*b));  // the typed kind, checked by VerifyPlan
      prefixes[i] = Str(b->prefix());
    }
    for (uint32_t i = 0; i < blocks->size(); ++i) {
      refs.push_back(arch::BlockRef{block_kinds[i], prefixes[i], blocks->Get(i)->layer()});
    }
    for (uint32_t i = 0; i < blocks->size(); ++i) {
      const schema::Block* b = blocks->Get(i);
      std::vector<std::string> names;
      std::vector<std::vector<int64_t>> shapes;
      if (b->weights() != nullptr) {
        for (const schema::Weight* w : *b->weights()) {
          const schema::Tensor* t = tensors->Get(w->tensor());
          names.push_back(Str(t->name()));
          shapes.push_back(ShapeOf(t->shape()));
        }
      }
      std::vector<arch::BlockTensor> bound;
      for (size_t k = 0; k < names.size(); ++k) bound.push_back(arch::BlockTensor{names[k], shapes[k]});
      Result<arch::SlotTable> table = arch::BindBlock(**family, config, refs, i, bound, Str(b->name()));
      if (!table.ok()) return WithContext(table.take_error(), plan_name);
      slot_tables.push_back(*table);
    }
    return Status::Ok();
  }

  Status BuildBlocks(int cuda_count) {
    const auto* blocks = plan.blocks();
    const auto* tensors = plan.tensors();
    const schema::ModelConfig* config = plan.config();
    const schema::RunShape* run = plan.run_shape();
    if (blocks == nullptr || blocks->size() == 0) return MakeError(ErrorCode::kCorrupt, plan_name + ": no blocks");
    if (config == nullptr || run == nullptr) {
      return MakeError(ErrorCode::kCorrupt, plan_name + ": no model config or run shape");
    }
    const uint64_t kv_bytes_needed = 2ull * run->max_batch() * BlockKvHeads(plan) * run->max_seq_len() *
                                     config->head_dim() * DTypeSize(plan.exec_dtype());
    std::set<int> devices;
    for (uint32_t i = 0; i < blocks->size(); ++i) {
      const schema::Block* b = blocks->Get(i);
      BlockRuntime br;
      br.index = i;
      br.shard = b->shard();
      br.name = Str(b->name());
      br.kind = block_kinds[i];
      br.slots = slot_tables[i];
      br.prefix = Str(b->prefix());
      br.layer = b->layer();
      br.tier = b->tier();
      br.weight_bytes = b->weight_bytes();
      const int plan_device = b->device();
      if (plan_device < -1) {
        return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": device " +
                                                  std::to_string(plan_device));
      }
      br.plan_device = plan_device;
      br.device = state.cpu_mode ? -1 : plan_device;
      if (options.rank_device >= 0) {
        if (plan_device < 0 || b->tier() != schema::Tier::Gpu) {
          return MakeError(ErrorCode::kUnsupported,
                           plan_name + ": block " + br.name + " is not resident on a GPU; ranks (one process per GPU) "
                                       "run plans whose every block is resident on a GPU");
        }
        if (plan_device != options.rank_device) {
          // Another rank computes it: no memory, weights or cache here.
          br.remote = true;
          br.device = -1;
          state.blocks.push_back(std::move(br));
          continue;
        }
        br.device = state.cpu_mode ? -1 : options.local_device;
      }
      if (br.device >= cuda_count) {
        return MakeError(ErrorCode::kDevice, plan_name + ": block " + br.name + " runs on cuda:" +
                                                 std::to_string(br.device) + " but " + std::to_string(cuda_count) +
                                                 " CUDA device(s) are visible (run on the CPU with force_cpu)");
      }
      if (br.device >= 0) devices.insert(br.device);
      uint8_t* home = nullptr;
      uint8_t* host = nullptr;
      uint64_t home_size = 0, host_size = 0;
      if (b->home_buffer() >= 0) {
        BIGPLAN_ASSIGN_OR_RETURN(home, BufferPtr(b->home_buffer(), schema::Pool::DeviceArena, plan_device, "home",
                                                 br.name, 0));
        home_size = plan.buffers()->Get(b->home_buffer())->size_bytes();
      }
      if (b->host_buffer() >= 0) {
        BIGPLAN_ASSIGN_OR_RETURN(host, BufferPtr(b->host_buffer(), schema::Pool::PinnedHost, -1, "host", br.name, 0));
        host_size = plan.buffers()->Get(b->host_buffer())->size_bytes();
      }
      if (b->weights() != nullptr) {
        for (const schema::Weight* w : *b->weights()) {
          const schema::Tensor* t = tensors->Get(w->tensor());
          WeightRuntime wr;
          wr.name = Str(t->name());
          wr.shape = ShapeOf(t->shape());
          wr.numel = 1;
          for (int64_t d : wr.shape) wr.numel *= d;
          wr.rows = wr.shape.empty() ? 1 : std::max<int64_t>(1, wr.shape[0]);
          wr.source_dtype = t->src_dtype();
          wr.dtype = w->dtype();
          wr.bytes = w->size_bytes();
          wr.tier = w->tier();
          wr.source_bytes = t->size_bytes();
          wr.source_offset = t->offset();
          wr.shard = state.shards[t->shard()].get();
          wr.shard_index = t->shard();
          BIGPLAN_ASSIGN_OR_RETURN(wr.source, wr.shard->View(t->offset(), t->size_bytes()));
          if (w->slice_dim() >= 0) {
            // A tensor-parallel shard's slice (VerifyPlan checked it against the tensor's shape): rows are a range
            // of the tensor's bytes (or several, gathered here); columns are gathered from every row at load.
            const int64_t begin = w->slice_begin(), extent = SliceExtent(*w);
            const uint64_t row_bytes = wr.shape[0] > 0 ? wr.source_bytes / static_cast<uint64_t>(wr.shape[0]) : 0;
            if (t->prequant() != schema::PreQuantKind::None) {
              // Converted whole from its sources at load (ConvertWeight), then cut to the shard's rows or columns.
              wr.src_rows = wr.shape[0];
              if (w->slice_dim() == 0) {
                wr.row_ranges.emplace_back(begin, w->slice_end());
                for (uint32_t r = 0; w->slice_rows() != nullptr && r + 1 < w->slice_rows()->size(); r += 2)
                  wr.row_ranges.emplace_back(w->slice_rows()->Get(r), w->slice_rows()->Get(r + 1));
              } else {
                if (w->slice_rows() != nullptr && w->slice_rows()->size() > 0) {
                  return MakeError(ErrorCode::kUnsupported, plan_name + ": block " + br.name + ": weight " + wr.name +
                                                                " is pre-quantized and takes several column ranges");
                }
                wr.row_ranges.emplace_back(0, wr.shape[0]);
                wr.col_begin = begin;
                wr.src_cols = wr.shape[1];
              }
            } else if (w->slice_dim() == 0 && w->slice_rows() != nullptr && w->slice_rows()->size() > 0) {
              if (w->tier() == schema::Tier::Disk) {
                return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": weight " + wr.name +
                                                          " takes several row ranges but rests on disk");
              }
              std::vector<uint8_t> rows(static_cast<size_t>(extent) * row_bytes);
              uint64_t at = 0;
              auto take = [&](int64_t b, int64_t e) {
                std::memcpy(rows.data() + at, wr.source + b * row_bytes, (e - b) * row_bytes);
                at += (e - b) * row_bytes;
              };
              take(begin, w->slice_end());
              for (uint32_t r = 0; r + 1 < w->slice_rows()->size(); r += 2)
                take(w->slice_rows()->Get(r), w->slice_rows()->Get(r + 1));
              gathered_rows.push_back(std::move(rows));
              wr.source = gathered_rows.back().data();
              wr.source_offset += begin * row_bytes;
              wr.source_bytes = extent * row_bytes;
            } else if (w->slice_dim() == 0) {
              wr.source += begin * row_bytes;
              wr.source_offset += begin * row_bytes;
              wr.source_bytes = extent * row_bytes;
            } else {
              wr.col_begin = begin;
              wr.src_cols = wr.shape[1];
              if (w->slice_rows() != nullptr && w->slice_rows()->size() > 0) {
                wr.col_ranges.emplace_back(begin, w->slice_end());
                for (uint32_t r = 0; r + 1 < w->slice_rows()->size(); r += 2)
                  wr.col_ranges.emplace_back(w->slice_rows()->Get(r), w->slice_rows()->Get(r + 1));
              }
            }
            wr.shape[w->slice_dim()] = extent;
            wr.numel = 1;
            for (int64_t d : wr.shape) wr.numel *= d;
            wr.rows = wr.shape.empty() ? 1 : std::max<int64_t>(1, wr.shape[0]);
          }
          wr.format = FormatOf(w->format());
          wr.group = w->group_size();
          wr.prequant = t->prequant();
          wr.block_rows = t->block_rows();
          wr.block_cols = t->block_cols();
          wr.gptq_v1_zero_offset = t->gptq_v1_zero_offset();
          if (t->sources() != nullptr) {
            for (const schema::SourceTensor* s : *t->sources()) {
              WeightRuntime::Source src;
              src.name = Str(s->name());
              src.bytes = s->size_bytes();
              src.dtype = s->src_dtype();
              src.shape = ShapeOf(s->shape());
              BIGPLAN_ASSIGN_OR_RETURN(src.data, state.shards[s->shard()]->View(s->offset(), s->size_bytes()));
              wr.sources.push_back(std::move(src));
            }
          }
          // (VerifyPlan checked a quantized weight's size, source dtype and tier.)
          const uint64_t plain_bytes = uint64_t(wr.numel) * DTypeSize(wr.dtype);
          if (!wr.quantized() && wr.bytes != plain_bytes) {
            return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": weight " + wr.name +
                                                      " has size_bytes " + std::to_string(wr.bytes) + ", expected " +
                                                      std::to_string(plain_bytes));
          }
          wr.split = wr.format == quant::Format::kInt4 && wr.tier == schema::Tier::Gpu && br.device >= 0;
          wr.routed = w->routed();
          if (wr.tier == schema::Tier::Gpu) {
            if (home == nullptr || w->offset_in_block() + wr.bytes > home_size) {
              return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": resident weight " +
                                                        wr.name + " lies outside its home buffer");
            }
            wr.home = home + w->offset_in_block();
          } else if (wr.tier == schema::Tier::Cpu) {
            if (host == nullptr || w->offset_in_block() + wr.bytes > host_size) {
              return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": cpu-tier weight " +
                                                        wr.name + " lies outside its host buffer");
            }
            wr.home = host + w->offset_in_block();
          }
          br.weights.push_back(std::move(wr));
        }
      }
      if (b->kv_buffer() >= 0) {
        BIGPLAN_ASSIGN_OR_RETURN(
            br.kv, BufferPtr(b->kv_buffer(), schema::Pool::DeviceArena, plan_device, "kv", br.name, kv_bytes_needed));
        br.kv_bytes = kv_bytes_needed;
      } else if (br.kind == arch::BlockKind::kDecoderLayer) {
        return MakeError(ErrorCode::kCorrupt, plan_name + ": decoder layer " + br.name + " has no kv_buffer");
      }
      state.blocks.push_back(std::move(br));
    }
    state.cuda_devices.assign(devices.begin(), devices.end());
    return Status::Ok();
  }

  Status BuildSteps() {
    const auto* steps = plan.steps();
    const uint32_t nblocks = state.blocks.size();
    if (steps == nullptr || steps->size() != nblocks) {
      return MakeError(ErrorCode::kUnsupported, plan_name + ": the plan has " +
                                                    std::to_string(steps ? steps->size() : 0) + " steps for " +
                                                    std::to_string(nblocks) + " blocks; one step per block expected");
    }
    std::vector<int> computed(nblocks, -1);
    state.steps.resize(steps->size());
    for (uint32_t i = 0; i < steps->size(); ++i) {
      const schema::Step* s = steps->Get(i);
      StepRuntime& sr = state.steps[i];
      sr.block = s->block();
      if (sr.block >= nblocks || computed[sr.block] >= 0) {
        return MakeError(ErrorCode::kCorrupt, plan_name + ": step " + std::to_string(i) + " computes block " +
                                                  std::to_string(sr.block) + " (out of range or computed twice)");
      }
      if (s->copies() != nullptr && s->copies()->size() > 0) {
        return MakeError(ErrorCode::kUnsupported, plan_name + ": step " + std::to_string(i) +
                                                      " has per-step copies (a version 1 plan): plan again");
      }
      computed[sr.block] = static_cast<int>(i);
      state.blocks[sr.block].step = i;
    }
    return Status::Ok();
  }

  // Streams: every unit's source and ring pointers; each streamed weight's units; each block's whole units. The
  // verifier (schema/plan_io) checked indices, rows, byte counts and ring bounds.
  Status BuildStreams() {
    const auto* streams = plan.streams();
    if (streams == nullptr) {
      BIGPLAN_RETURN_IF_ERROR(BuildExpertRings());
      return CheckEveryStreamedWeightHasUnits();
    }
    for (uint32_t si = 0; si < streams->size(); ++si) {
      const schema::Stream* st = streams->Get(si);
      if (st->units() == nullptr || st->units()->size() == 0) continue;
      StreamRuntime sr;
      sr.plan_device = st->device();
      sr.device = state.cpu_mode ? -1 : st->device();
      BIGPLAN_ASSIGN_OR_RETURN(sr.ring, BufferPtr(st->ring_buffer(), schema::Pool::DeviceArena, st->device(), "ring",
                                                  "stream of device " + std::to_string(st->device()), 0));
      sr.ring_bytes = plan.buffers()->Get(st->ring_buffer())->size_bytes();
      if (st->disk_ring_buffer() >= 0) {
        BIGPLAN_ASSIGN_OR_RETURN(sr.disk_ring, BufferPtr(st->disk_ring_buffer(), schema::Pool::PinnedHost, -1,
                                                         "disk ring", "stream of device " +
                                                                          std::to_string(st->device()), 0));
        sr.disk_ring_bytes = plan.buffers()->Get(st->disk_ring_buffer())->size_bytes();
      }
      const int32_t stream_index = static_cast<int32_t>(state.streams.size());
      for (uint32_t u = 0; u < st->units()->size(); ++u) {
        const schema::Unit* un = st->units()->Get(u);
        BlockRuntime& br = state.blocks[un->block()];
        WeightRuntime& w = br.weights[un->weight()];
        if (br.stream >= 0 && br.stream != stream_index) {
          return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + " is streamed by two streams");
        }
        br.stream = stream_index;
        UnitRuntime ur;
        ur.block = un->block();
        ur.weight = un->weight();
        ur.row_begin = un->row_begin();
        ur.row_end = un->row_end();
        ur.source = un->source();
        ur.bytes = un->bytes();
        ur.whole = un->whole();
        ur.ring = sr.ring + un->ring_offset();
        ur.wait_unit = un->wait_unit();
        ur.disk_wait_unit = un->disk_wait_unit();
        const bool all_rows = ur.row_begin == 0 && ur.row_end == w.rows;
        if (ur.whole != all_rows && ur.whole) {
          return MakeError(ErrorCode::kCorrupt, plan_name + ": unit " + std::to_string(u) + " of " + w.name +
                                                    " is whole but covers rows " + std::to_string(ur.row_begin) +
                                                    "-" + std::to_string(ur.row_end));
        }
        if (ur.source == schema::Tier::Cpu) {
          ur.host = w.home + static_cast<uint64_t>(ur.row_begin) * w.row_bytes();
        } else {
          ur.shard_index = w.shard_index;
          ur.file_offset = w.source_offset + static_cast<uint64_t>(ur.row_begin) * w.source_row_bytes();
          ur.file_bytes = static_cast<uint64_t>(ur.row_end - ur.row_begin) * w.source_row_bytes();
          ur.cast = w.source_dtype != w.dtype;
          if (sr.disk_ring != nullptr) {
            ur.disk_slot = sr.disk_ring + un->disk_slot_offset();
            ur.disk_slot_bytes = un->disk_slot_bytes();
          }
        }
        if (!w.units.empty()) {
          const UnitRuntime& prev = sr.units[w.units.back()];
          if (prev.row_end != ur.row_begin) {
            return MakeError(ErrorCode::kCorrupt, plan_name + ": the units of " + w.name + " do not cover its rows in order");
          }
        } else if (ur.row_begin != 0) {
          return MakeError(ErrorCode::kCorrupt, plan_name + ": the units of " + w.name + " do not start at row 0");
        }
        ur.host_compute = un->host() && !state.cpu_mode;
        if (un->host()) {
          // VerifyPlan checked that host units are a suffix of their weight's chunks (Cpu source, a matrix).
          if (w.host_row_begin < 0) w.host_row_begin = ur.row_begin;
        }
        w.units.push_back(u);
        w.chunked = w.chunked || !ur.whole;
        if (ur.whole) br.whole_units.push_back(u);
        if (!ur.whole) br.chunk_units.push_back(u);
        sr.units.push_back(ur);
      }
      for (uint32_t u = 0; u < sr.units.size(); ++u) {
        const int32_t w = sr.units[u].wait_unit;
        if (w >= 0 && static_cast<uint32_t>(w) < u && sr.units[w].block == sr.units[u].block) sr.chunks_holdable = false;
      }
      state.streams.push_back(std::move(sr));
    }
    BIGPLAN_RETURN_IF_ERROR(BuildExpertRings());
    return CheckEveryStreamedWeightHasUnits();
  }

  // The routed experts' rings (GPU mode; VerifyPlan checked their buffers' pools and sizes). In CPU mode a routed
  // disk-resting expert is loaded into host memory instead (FillWeights).
  Status BuildExpertRings() {
    const auto* rings = plan.experts();
    if (rings == nullptr || state.cpu_mode) return Status::Ok();
    for (const schema::ExpertRing* r : *rings) {
      ExpertRingRuntime er;
      er.device = r->device();
      const std::string what = "expert ring of device " + std::to_string(r->device());
      BIGPLAN_ASSIGN_OR_RETURN(er.ring, BufferPtr(r->ring_buffer(), schema::Pool::DeviceArena, r->device(), "ring",
                                                  what, uint64_t{r->slots()} * r->slot_bytes()));
      er.slots = r->slots();
      er.slot_bytes = r->slot_bytes();
      if (r->disk_ring_buffer() >= 0) {
        BIGPLAN_ASSIGN_OR_RETURN(er.disk_ring, BufferPtr(r->disk_ring_buffer(), schema::Pool::PinnedHost, -1,
                                                         "disk ring", what, 0));
        er.disk_slots = r->disk_slots();
        er.disk_slot_bytes = plan.buffers()->Get(r->disk_ring_buffer())->size_bytes() / std::max(1u, r->disk_slots());
      }
      er.cpu_share = r->cpu_share();
      er.decode_max_tokens = r->decode_max_tokens();
      er.copy_all_tokens = r->copy_all_tokens();
      er.prefetch = r->prefetch();
      state.expert_rings.push_back(er);
    }
    return Status::Ok();
  }

  Status CheckEveryStreamedWeightHasUnits() {
    for (BlockRuntime& br : state.blocks) {
      for (const WeightRuntime& w : br.weights) {
        const bool needs_units =
            !w.routed && (w.tier == schema::Tier::Disk || (w.tier == schema::Tier::Cpu && br.plan_device >= 0));
        if (needs_units && w.units.empty()) {
          return MakeError(ErrorCode::kCorrupt, plan_name + ": block " + br.name + ": weight " + w.name +
                                                    " rests in the " + TierName(w.tier) + " tier but no stream carries it");
        }
        if (!w.units.empty()) {
          const UnitRuntime& last = state.streams[br.stream].units[w.units.back()];
          if (last.row_end != w.rows) {
            return MakeError(ErrorCode::kCorrupt, plan_name + ": the units of " + w.name + " do not cover its rows");
          }
        }
      }
    }
    return Status::Ok();
  }

  // Quantizes a floating-point checkpoint tensor into the row-quantized layout at w.home (pinned host memory, or
  // the device arena through `bounce`), a slice of rows at a time. A split weight (WeightQuant::split) puts each
  // slice's values in the values block and its records, transposed, in the records block.
  Status QuantizeWeight(const WeightRuntime& w, bool device_home, std::vector<uint8_t>* bounce,
                        LoadProgress* progress) {
    const int64_t cols = w.shape.size() == 2 ? w.shape[1] : 0;
    const uint64_t src_row = w.source_row_bytes();
    const int64_t step = std::max<int64_t>(1, static_cast<int64_t>(kLoadChunkBytes / std::max<uint64_t>(src_row, 1)));
    // A tensor-parallel shard's columns: each row's segment gathered first.
    const size_t src_elem = DTypeSize(w.source_dtype);
    std::vector<uint8_t> gather;
    return StoreQuantized(w, device_home, bounce, progress, step,
                          [&](int64_t r, int64_t n, std::span<uint8_t> out) -> Status {
                            std::span<const uint8_t> src(w.source + r * src_row, n * src_row);
                            if (w.col_begin >= 0) {
                              gather.resize(n * cols * src_elem);
                              for (int64_t i = 0; i < n; ++i)
                                w.GatherColumns(r + i, src_elem, gather.data() + i * cols * src_elem);
                              src = std::span<const uint8_t>(gather.data(), gather.size());
                            }
                            Status q = quant::Quantize(src, static_cast<DType>(w.source_dtype), n, cols, w.format,
                                                       w.group, out);
                            if (!q.ok()) return WithContext(q.take_error(), plan_name + ": quantizing " + w.name);
                            return Status::Ok();
                          });
  }

  // Keeps w's slice of the whole converted [n, k] tensor (groups of `group` columns) in *converted: the rows of
  // w.row_ranges and, for a column slice, each row's data for columns [col_begin, col_begin + cols) and the records
  // of their groups (a per-row record, group == k, is kept as the slice's one record).
  Status CutSlice(const WeightRuntime& w, int64_t n, int64_t k, int64_t group, std::vector<uint8_t>* converted,
                  const std::string& what) {
    const quant::Format f = w.format;
    BIGPLAN_ASSIGN_OR_RETURN(const uint64_t whole_row, quant::RowBytes(f, k, group));
    const int64_t cols = w.col_begin >= 0 ? w.shape[1] : k;
    const uint64_t row_bytes = w.row_bytes();
    const uint64_t data_bytes = f == quant::Format::kInt4 ? static_cast<uint64_t>(k / 2) : static_cast<uint64_t>(k);
    const uint64_t record_bytes = (whole_row - data_bytes) / static_cast<uint64_t>(k / group);
    const int64_t c0 = w.col_begin >= 0 ? w.col_begin : 0;
    const bool per_row = group == k;
    if (w.col_begin >= 0 && f == quant::Format::kInt4 && (c0 % 2 != 0 || cols % 2 != 0)) {
      return MakeError(ErrorCode::kCorrupt, what + ": an int4 column slice at an odd column");
    }
    if (w.col_begin >= 0 && !per_row && (c0 % group != 0 || cols % group != 0)) {
      return MakeError(ErrorCode::kCorrupt, what + ": columns [" + std::to_string(c0) + ", " + std::to_string(c0 + cols) +
                                                ") do not hold whole groups of " + std::to_string(group));
    }
    const uint64_t col_data = f == quant::Format::kInt4 ? static_cast<uint64_t>(cols / 2) : static_cast<uint64_t>(cols);
    const uint64_t data_at = f == quant::Format::kInt4 ? static_cast<uint64_t>(c0 / 2) : static_cast<uint64_t>(c0);
    const uint64_t records = per_row ? 1 : static_cast<uint64_t>(cols / group);
    const uint64_t record_at = per_row ? 0 : static_cast<uint64_t>(c0 / group);
    if (col_data + records * record_bytes != row_bytes) {
      return MakeError(ErrorCode::kCorrupt, what + ": a slice row of " + std::to_string(row_bytes) + " bytes, not " +
                                                std::to_string(col_data + records * record_bytes));
    }
    std::vector<uint8_t> out(static_cast<size_t>(row_bytes) * static_cast<size_t>(w.rows));
    uint64_t at = 0;
    for (const auto& [begin, end] : w.row_ranges) {
      if (begin < 0 || end > n || begin >= end) {
        return MakeError(ErrorCode::kCorrupt, what + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                                                  ") outside its " + std::to_string(n));
      }
      for (int64_t r = begin; r < end; ++r) {
        if (at + row_bytes > out.size()) return MakeError(ErrorCode::kCorrupt, what + ": more rows than its slice");
        const uint8_t* row = converted->data() + static_cast<uint64_t>(r) * whole_row;
        std::memcpy(out.data() + at, row + data_at, col_data);
        std::memcpy(out.data() + at + col_data, row + data_bytes + record_at * record_bytes, records * record_bytes);
        at += row_bytes;
      }
    }
    if (at != out.size()) return MakeError(ErrorCode::kCorrupt, what + ": fewer rows than its slice");
    *converted = std::move(out);
    return Status::Ok();
  }

  // A pre-quantized checkpoint's weight: converted from its source tensors (exactly for fp8; GPTQ's f16 scales
  // rounded to bf16) into the row-quantized layout in host memory, then stored as QuantizeWeight stores. Act-order
  // GPTQ leaves its column order in w.perm.
  Status ConvertWeight(WeightRuntime& w, bool device_home, std::vector<uint8_t>* bounce,
                       LoadProgress* progress) {
    // A tensor-parallel shard's slice: the whole tensor is converted, then the shard's rows (of a column slice: each
    // row's columns) are kept; a per-row-scaled weight's column slice keeps its row's scale.
    const bool sliced = !w.row_ranges.empty();
    const int64_t n = sliced ? w.src_rows : w.rows;
    const int64_t k = w.col_begin >= 0 ? w.src_cols : w.shape.size() == 2 ? w.shape[1] : 0;
    // The whole tensor's groups: a column slice's may differ (a per-row scale is one group of the slice's columns).
    int64_t group = w.group;
    if (w.col_begin >= 0) {
      if (w.prequant == schema::PreQuantKind::Fp8) {
        group = w.block_cols > 0 ? w.block_cols : k;
      } else if (w.sources.size() > 2 && w.sources[2].shape.size() == 2 && w.sources[2].shape[0] > 0) {
        group = k / w.sources[2].shape[0];  // GPTQ scales [k / g, n]
      }
    }
    const std::string what = plan_name + ": converting " + w.name;
    const Result<uint64_t> whole_bytes = quant::TensorBytes(w.format, n, k, group);
    if (!whole_bytes.ok()) return WithContext(whole_bytes.error(), what);
    std::vector<uint8_t> converted(*whole_bytes);
    if (w.prequant == schema::PreQuantKind::Fp8) {
      const WeightRuntime::Source& weight = w.sources[0];
      const WeightRuntime::Source& scale = w.sources[1];
      // Scales to aligned floats: a mapped tensor's offset need not be a multiple of 4.
      std::vector<float> scales(scale.bytes / sizeof(float));
      if (scales.size() * sizeof(float) != scale.bytes || scales.empty()) {
        return MakeError(ErrorCode::kMismatch, what + ": scale tensor " + scale.name + " has " +
                                                   std::to_string(scale.bytes) + " bytes, not a float32 array");
      }
      std::memcpy(scales.data(), scale.data, scale.bytes);
      quant::ScaleShape shape;
      if (scale.shape.size() == 2) shape = {scale.shape[0], scale.shape[1]};
      else if (scale.shape.size() == 1) shape = {scale.shape[0], 1};
      if (static_cast<uint64_t>(shape.rows * shape.cols) != scales.size()) {
        return MakeError(ErrorCode::kMismatch, what + ": scale tensor " + scale.name + " has " +
                                                   std::to_string(scales.size()) + " values for its shape");
      }
      int64_t fp8_group = 0;
      Status st = quant::FromFp8(std::span<const uint8_t>(weight.data, weight.bytes), scales.data(), shape, w.block_rows,
                                 w.block_cols, n, k, converted, &fp8_group);
      if (!st.ok()) return WithContext(st.take_error(), what + " (from " + weight.name + ", " + scale.name + ")");
      if (fp8_group != group) {
        return MakeError(ErrorCode::kCorrupt, what + ": the checkpoint's fp8 groups are " + std::to_string(fp8_group) +
                                                  " columns, the plan's " + std::to_string(group));
      }
    } else if (w.prequant == schema::PreQuantKind::Gptq) {
      quant::GptqTensors g;
      auto span = [](const WeightRuntime::Source& s) { return std::span<const uint8_t>(s.data, s.bytes); };
      g.qweight = span(w.sources[0]);
      g.qweight_dtype = static_cast<DType>(w.sources[0].dtype);
      g.qweight_shape = w.sources[0].shape;
      g.qzeros = span(w.sources[1]);
      g.qzeros_dtype = static_cast<DType>(w.sources[1].dtype);
      g.qzeros_shape = w.sources[1].shape;
      g.scales = span(w.sources[2]);
      g.scales_dtype = static_cast<DType>(w.sources[2].dtype);
      g.scales_shape = w.sources[2].shape;
      if (w.sources.size() > 3) {
        g.g_idx = span(w.sources[3]);
        g.g_idx_dtype = static_cast<DType>(w.sources[3].dtype);
        g.g_idx_shape = w.sources[3].shape;
      }
      std::vector<int32_t> perm;
      Status st = quant::FromGptq(g, n, k, group, w.gptq_v1_zero_offset, converted, &perm);
      if (!st.ok()) return WithContext(st.take_error(), what + " (from " + w.sources[0].name + ", ...)");
      // Act-order: our column i is the checkpoint's column perm[i]; the kernels multiply with x[..., perm].
      // (The planner does not split such a weight's columns: PreQuant::act_order.)
      if (!perm.empty() && w.col_begin >= 0) {
        return MakeError(ErrorCode::kUnsupported, what + ": its columns are permuted (act-order GPTQ), so a shard "
                                                         "cannot take a range of them");
      }
      w.perm = std::move(perm);
    } else {
      return MakeError(ErrorCode::kInternal, what + ": not a pre-quantized weight");
    }
    if (sliced) BIGPLAN_RETURN_IF_ERROR(CutSlice(w, n, k, group, &converted, what));
    const uint64_t row_bytes = w.row_bytes();
    const int64_t step = std::max<int64_t>(1, static_cast<int64_t>(kLoadChunkBytes / std::max<uint64_t>(row_bytes, 1)));
    return StoreQuantized(w, device_home, bounce, progress, step,
                          [&](int64_t r, int64_t rows, std::span<uint8_t> out) -> Status {
                            std::memcpy(out.data(), converted.data() + r * row_bytes, rows * row_bytes);
                            return Status::Ok();
                          });
  }

  // Stores a quantized weight at w.home (pinned host memory, or the device arena through `bounce`), `step` rows at a
  // time, each slice's rows written by `produce(first_row, rows, out)`. A split weight (WeightQuant::split) puts
  // each slice's values in the values block and its records, transposed, in the records block.
  Status StoreQuantized(const WeightRuntime& w, bool device_home, std::vector<uint8_t>* bounce, LoadProgress* progress,
                        int64_t step,
                        const std::function<Status(int64_t, int64_t, std::span<uint8_t>)>& produce) {
    const int64_t rows = w.rows, cols = w.shape.size() == 2 ? w.shape[1] : 0;
    const uint64_t row_bytes = w.row_bytes();
    const uint64_t data_bytes = static_cast<uint64_t>(cols) / 2;  // split (int4) only
    const int64_t groups = w.group > 0 ? cols / w.group : 0;
    std::vector<uint8_t> records(w.split ? rows * groups * 4 : 0);  // [groups, rows] 4-byte records
    for (int64_t r = 0; r < rows; r += step) {
      const int64_t n = std::min(step, rows - r);
      uint8_t* out = w.home + r * row_bytes;
      if (device_home) {
        bounce->resize(std::max<size_t>(bounce->size(), n * row_bytes));
        out = bounce->data();
      }
      BIGPLAN_RETURN_IF_ERROR(produce(r, n, std::span<uint8_t>(out, n * row_bytes)));
      if (w.split) {
        // Rows [r, r + n): their values to rows of the values block (now), record g of row r + i to [g, r + i] of
        // the records block (gathered here, copied once after the last slice).
        for (int64_t i = 0; i < n; ++i) {
          const uint8_t* row = out + i * row_bytes;
          for (int64_t g = 0; g < groups; ++g) std::memcpy(&records[(g * rows + r + i) * 4], row + data_bytes + 4 * g, 4);
          std::memmove(out + i * data_bytes, row, data_bytes);  // row i's values never overlap a later row's
        }
        BIGPLAN_RETURN_IF_ERROR(CudaStatus(
            cudaMemcpy(w.home + r * data_bytes, out, n * data_bytes, cudaMemcpyHostToDevice), "loading " + w.name));
      } else if (device_home) {
        BIGPLAN_RETURN_IF_ERROR(CudaStatus(
            cudaMemcpy(w.home + r * row_bytes, out, n * row_bytes, cudaMemcpyHostToDevice), "loading " + w.name));
      }
      progress->Add(n * row_bytes);
    }
    if (w.split) {
      BIGPLAN_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(w.home + rows * data_bytes, records.data(), records.size(),
                                                    cudaMemcpyHostToDevice),
                                         "loading " + w.name));
    }
    return Status::Ok();
  }

  Status FillWeights() {
    uint64_t total = 0;
    for (BlockRuntime& br : state.blocks) {
      for (WeightRuntime& w : br.weights) {
        if (state.cpu_mode && w.routed && w.tier == schema::Tier::Disk) {
          // CPU mode computes a routed expert where it rests: a disk-resting one is loaded like a resident one.
          BIGPLAN_ASSIGN_OR_RETURN(Allocation a,
                                   Allocation::Host(std::max<uint64_t>(w.bytes, 1), "routed expert " + w.name));
          w.home = a.data();
          state.owned.push_back(std::move(a));
        }
        total += w.tier == schema::Tier::Disk && w.home == nullptr ? 0 : w.bytes;
      }
    }
    LoadProgress progress(total, options.progress);
    std::vector<uint8_t> bounce;
    for (BlockRuntime& br : state.blocks) {
      for (WeightRuntime& w : br.weights) {
        if (w.tier == schema::Tier::Disk && w.home == nullptr) continue;
        const bool device_home = w.tier == schema::Tier::Gpu && br.device >= 0;
        if (device_home) {
          BIGPLAN_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(br.device), "cudaSetDevice"));
        }
        uint8_t* dst = w.home;
        w.shard->WillNeed(w.source_offset, w.source_bytes);
        if (w.prequant != schema::PreQuantKind::None) {
          BIGPLAN_RETURN_IF_ERROR(ConvertWeight(w, device_home, &bounce, &progress));
          continue;
        }
        if (w.quantized()) {
          BIGPLAN_RETURN_IF_ERROR(QuantizeWeight(w, device_home, &bounce, &progress));
          continue;
        }
        const size_t src_elem = DTypeSize(w.source_dtype);
        const size_t dst_elem = DTypeSize(w.dtype);
        if (w.col_begin >= 0) {
          // A shard's columns, each row's segment: one strided copy to the GPU when no cast is needed, else
          // gathered into `gather`, cast, and copied as below.
          const int64_t cols = w.shape[1];
          const int64_t rows_per = std::max<int64_t>(1, static_cast<int64_t>(kLoadChunkBytes / (cols * std::max(src_elem, dst_elem))));
          std::vector<uint8_t> gather;
          for (int64_t r = 0; r < w.rows; r += rows_per) {
            const int64_t nr = std::min(rows_per, w.rows - r);
            if (device_home && w.dtype == w.source_dtype && w.col_ranges.empty()) {
              // No cast, one range: one strided copy from the mapping.
              BIGPLAN_RETURN_IF_ERROR(CudaStatus(
                  cudaMemcpy2D(dst + r * cols * dst_elem, cols * dst_elem,
                               w.source + (r * w.src_cols + w.col_begin) * src_elem, w.src_cols * src_elem,
                               cols * src_elem, nr, cudaMemcpyHostToDevice),
                  "loading " + w.name));
              progress.Add(nr * cols * dst_elem);
              continue;
            }
            gather.resize(nr * cols * src_elem);
            for (int64_t i = 0; i < nr; ++i) w.GatherColumns(r + i, src_elem, gather.data() + i * cols * src_elem);
            uint8_t* d = dst + r * cols * dst_elem;
            const int64_t n = nr * cols;
            if (!device_home) {
              BIGPLAN_RETURN_IF_ERROR(CastInto(d, w.dtype, gather.data(), w.source_dtype, n));
            } else {
              bounce.resize(std::max<size_t>(bounce.size(), n * dst_elem));
              BIGPLAN_RETURN_IF_ERROR(CastInto(bounce.data(), w.dtype, gather.data(), w.source_dtype, n));
              BIGPLAN_RETURN_IF_ERROR(
                  CudaStatus(cudaMemcpy(d, bounce.data(), n * dst_elem, cudaMemcpyHostToDevice), "loading " + w.name));
            }
            progress.Add(n * dst_elem);
          }
          continue;
        }
        const int64_t chunk_elems =
            std::max<int64_t>(1, kLoadChunkBytes / std::max<size_t>({src_elem, dst_elem, size_t{1}}));
        for (int64_t e = 0; e < w.numel; e += chunk_elems) {
          const int64_t n = std::min(chunk_elems, w.numel - e);
          const uint8_t* src = w.source + e * src_elem;
          uint8_t* d = dst + e * dst_elem;
          if (!device_home) {
            BIGPLAN_RETURN_IF_ERROR(CastInto(d, w.dtype, src, w.source_dtype, n));
          } else if (w.dtype == w.source_dtype) {
            BIGPLAN_RETURN_IF_ERROR(
                CudaStatus(cudaMemcpy(d, src, n * dst_elem, cudaMemcpyHostToDevice), "loading " + w.name));
          } else {
            bounce.resize(std::max<size_t>(bounce.size(), n * dst_elem));
            BIGPLAN_RETURN_IF_ERROR(CastInto(bounce.data(), w.dtype, src, w.source_dtype, n));
            BIGPLAN_RETURN_IF_ERROR(
                CudaStatus(cudaMemcpy(d, bounce.data(), n * dst_elem, cudaMemcpyHostToDevice), "loading " + w.name));
          }
          progress.Add(n * dst_elem);
        }
      }
    }
    progress.Finish();
    for (const auto& shard : state.shards) BIGPLAN_RETURN_IF_ERROR(shard->CheckIntact());
    state.loaded_bytes = total;
    return Status::Ok();
  }
};

at::TensorOptions OptionsFor(schema::DType dtype, int device) {
  auto opts = at::TensorOptions().dtype(ToScalarType(dtype));
  return device < 0 ? opts.device(at::kCPU) : opts.device(at::kCUDA, device);
}

}  // namespace

at::ScalarType ToScalarType(schema::DType dtype) {
  switch (dtype) {
    case schema::DType::F32: return at::kFloat;
    case schema::DType::F16: return at::kHalf;
    case schema::DType::BF16: return at::kBFloat16;
    case schema::DType::F64: return at::kDouble;
    case schema::DType::I64: return at::kLong;
    case schema::DType::I32: return at::kInt;
    case schema::DType::I16: return at::kShort;
    case schema::DType::I8: return at::kChar;
    case schema::DType::U8: return at::kByte;
    case schema::DType::Bool: return at::kBool;
    case schema::DType::F8_E4M3: return at::kFloat8_e4m3fn;
    case schema::DType::F8_E5M2: return at::kFloat8_e5m2;
  }
  return at::kFloat;
}

Status CastInto(void* dst, schema::DType dst_dtype, const void* src, schema::DType src_dtype, int64_t numel) {
  if (numel <= 0) return Status::Ok();
  if (dst_dtype == src_dtype) {
    std::memcpy(dst, src, numel * DTypeSize(dst_dtype));
    return Status::Ok();
  }
  try {
    at::Tensor s = at::from_blob(const_cast<void*>(src), {numel}, at::TensorOptions().dtype(ToScalarType(src_dtype)));
    at::Tensor d = at::from_blob(dst, {numel}, at::TensorOptions().dtype(ToScalarType(dst_dtype)));
    d.copy_(s);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kUnsupported, std::string("casting ") + DTypeName(src_dtype) + " to " +
                                                  DTypeName(dst_dtype) + " failed: " + e.what());
  }
  return Status::Ok();
}

namespace {

// A plan that records its config.json's sha256 (Fingerprint.config_sha256) runs only with those exact bytes in the
// checkpoint directory: the plan's ModelConfig was derived from them, and an edited config.json (norm eps, rope
// scaling, ...) would otherwise be ignored silently.
Status CheckConfigUnchanged(const std::string& pname, const std::string& planned_sha256,
                            const std::string& checkpoint_dir) {
  if (planned_sha256.empty()) return Status::Ok();  // a plan that does not record its config.json
  const std::string path =
      (std::filesystem::path(checkpoint_dir.empty() ? "." : checkpoint_dir) / "config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return MakeError(ErrorCode::kMismatch, "plan " + pname + ": it was made from a config.json (sha256 " +
                                               planned_sha256.substr(0, 12) + "...), but " + path +
                                               " does not exist; restore it or plan again");
  }
  auto bytes = ReadBoundedFileBytes(path, kConfigFile);
  if (!bytes.ok()) return bytes.error();
  const std::string have = Sha256Hex(bytes->data(), bytes->size());
  if (have != planned_sha256) {
    return MakeError(ErrorCode::kMismatch, "plan " + pname + ": " + path +
                                               " changed since the plan was made (sha256 " + have.substr(0, 12) +
                                               "..., plan " + planned_sha256.substr(0, 12) +
                                               "...); plan again");
  }
  return Status::Ok();
}

}  // namespace

Status CheckPlanAgainstCheckpoint(const PlanFile& plan_file, const Checkpoint& checkpoint) {
  const schema::Plan& plan = plan_file.plan();
  const std::string& pname = plan_file.path();
  const schema::Fingerprint* fp = plan.checkpoint();
  const auto* shards = fp == nullptr ? nullptr : fp->shards();
  bool synthetic = shards == nullptr || shards->size() == 0;
  if (!synthetic) {
    synthetic = true;
    for (const schema::ShardInfo* s : *shards) synthetic &= s->size_bytes() == 0;
  }
  if (synthetic) {
    return MakeError(ErrorCode::kMismatch,
                     "plan " + pname +
                         " was made from a model description without weights (its checkpoint fingerprint is "
                         "synthetic: no shard has a size), so it cannot run; plan again with --model pointing at "
                         "the checkpoint directory " + checkpoint.directory());
  }
  const auto& ck = checkpoint.fingerprint();
  const std::string stale = " (the checkpoint is not the one the plan was made for, or it changed after planning; "
                            "plan again)";
  for (uint32_t i = 0; i < shards->size(); ++i) {
    const schema::ShardInfo* s = shards->Get(i);
    const std::string name = Str(s->file_name());
    const ShardFingerprint* have = nullptr;
    for (const ShardFingerprint& c : ck.shards) {
      if (c.file_name == name) have = &c;
    }
    if (have == nullptr) {
      return MakeError(ErrorCode::kMismatch, "plan " + pname + " needs shard " + name + ", which checkpoint " +
                                                 checkpoint.directory() + " does not have" + stale);
    }
    if (have->size_bytes != s->size_bytes()) {
      return MakeError(ErrorCode::kMismatch, "plan " + pname + ": shard " + name + " has " +
                                                 std::to_string(have->size_bytes) + " bytes in " +
                                                 checkpoint.directory() + " but " + std::to_string(s->size_bytes()) +
                                                 " in the plan" + stale);
    }
    if (have->header_digest != Str(s->header_digest())) {
      return MakeError(ErrorCode::kMismatch, "plan " + pname + ": shard " + name + " in " + checkpoint.directory() +
                                                 " has a different header (digest " + have->header_digest.substr(0, 12) +
                                                 "..., plan " + Str(s->header_digest()).substr(0, 12) + "...)" + stale);
    }
  }
  if (ck.shards.size() != shards->size()) {
    for (const ShardFingerprint& c : ck.shards) {
      bool listed = false;
      for (const schema::ShardInfo* s : *shards) listed |= Str(s->file_name()) == c.file_name;
      if (!listed) {
        return MakeError(ErrorCode::kMismatch, "plan " + pname + ": checkpoint " + checkpoint.directory() +
                                                   " has shard " + c.file_name + ", which the plan does not list" +
                                                   stale);
      }
    }
  }
  const auto* tensors = plan.tensors();
  // Each checkpoint tensor the plan reads: a plain tensor itself, a pre-quantized weight's sources (v5).
  std::vector<const schema::Tensor*> plain;
  std::vector<const schema::SourceTensor*> sources;
  if (tensors != nullptr) {
    for (const schema::Tensor* t : *tensors) {
      if (t->sources() != nullptr && t->sources()->size() > 0) {
        for (const schema::SourceTensor* s : *t->sources()) sources.push_back(s);
      } else {
        plain.push_back(t);
      }
    }
  }
  auto check = [&](const auto* t) -> Status {
      const std::string name = Str(t->name());
      const TensorLocation* loc = checkpoint.Find(name);
      if (loc == nullptr) {
        return MakeError(ErrorCode::kMismatch, "plan " + pname + ": tensor " + name + " is not in checkpoint " +
                                                   checkpoint.directory());
      }
      const std::string plan_shard = Str(shards->Get(t->shard())->file_name());
      const std::string ck_shard =
          loc->shard < ck.shards.size() ? ck.shards[loc->shard].file_name : std::to_string(loc->shard);
      const std::vector<int64_t> shape = ShapeOf(t->shape());
      std::string what;
      if (plan_shard != ck_shard) {
        what = "shard " + ck_shard + " (plan: " + plan_shard + ")";
      } else if (loc->offset != t->offset()) {
        what = "offset " + std::to_string(loc->offset) + " (plan: " + std::to_string(t->offset()) + ")";
      } else if (loc->size_bytes != t->size_bytes()) {
        what = "size " + std::to_string(loc->size_bytes) + " bytes (plan: " + std::to_string(t->size_bytes()) + ")";
      } else if (static_cast<int>(loc->dtype) != static_cast<int>(t->src_dtype())) {
        what = std::string("dtype ") + DTypeString(loc->dtype) + " (plan: " + DTypeName(t->src_dtype()) + ")";
      } else if (loc->shape != shape) {
        what = "shape " + ShapeString(loc->shape) + " (plan: " + ShapeString(shape) + ")";
      }
      if (!what.empty()) {
        return MakeError(ErrorCode::kMismatch,
                         "plan " + pname + ": tensor " + name + " differs in the checkpoint: " + what + stale);
      }
      return Status::Ok();
  };
  for (const schema::Tensor* t : plain) BIGPLAN_RETURN_IF_ERROR(check(t));
  for (const schema::SourceTensor* t : sources) BIGPLAN_RETURN_IF_ERROR(check(t));
  return CheckConfigUnchanged(pname, Str(fp->config_sha256()), checkpoint.directory());
}

Result<std::unique_ptr<ModelState>> LoadModelState(PlanFile plan_file, const std::string& plan_path,
                                                   const std::string& checkpoint_dir, const LoadOptions& options) {
  const auto start = Clock::now();
  auto state = std::make_unique<ModelState>();
  state->plan = std::make_unique<PlanFile>(std::move(plan_file));
  state->checkpoint_dir = checkpoint_dir;
  state->cpu_mode = options.cpu_mode;
  const schema::Plan& plan = state->plan->plan();
  state->host_max_tokens = options.cpu_mode ? 0 : plan.host_max_tokens();
  {
    BIGPLAN_ASSIGN_OR_RETURN(Checkpoint checkpoint, Checkpoint::Open(checkpoint_dir));
    BIGPLAN_RETURN_IF_ERROR(CheckPlanAgainstCheckpoint(*state->plan, checkpoint));
    Loader loader{options, *state, plan, plan_path};
    BIGPLAN_RETURN_IF_ERROR(loader.MapShards(checkpoint));
  }
  const int cuda_count = options.cpu_mode ? 0 : CudaDeviceCount();
  Loader loader{options, *state, plan, plan_path};
  BIGPLAN_RETURN_IF_ERROR(loader.BindSlots());
  BIGPLAN_RETURN_IF_ERROR(loader.AllocateArenas(cuda_count));
  BIGPLAN_RETURN_IF_ERROR(loader.BuildBlocks(cuda_count));
  BIGPLAN_RETURN_IF_ERROR(loader.BuildSteps());
  BIGPLAN_RETURN_IF_ERROR(loader.BuildStreams());
  BIGPLAN_RETURN_IF_ERROR(loader.FillWeights());

  ModelInfo& info = state->info;
  const schema::ModelConfig* config = plan.config();
  info.architecture = Str(config->architecture());
  info.model_name = Str(plan.model_name());
  info.plan_path = plan_path;
  info.exec_dtype = DTypeName(plan.exec_dtype());
  info.weights = quant::FormatName(FormatOf(plan.weights()));
  for (const BlockRuntime& b : state->blocks)
    for (const WeightRuntime& w : b.weights) info.quantized_weights += w.quantized() ? 1 : 0;
  info.vocab_size = config->vocab_size();
  info.max_batch = plan.run_shape()->max_batch();
  info.max_seq_len = plan.run_shape()->max_seq_len();
  if (config->eos_token_ids() != nullptr) info.eos_token_ids.assign(config->eos_token_ids()->begin(), config->eos_token_ids()->end());
  info.cpu_mode = state->cpu_mode;
  info.blocks = static_cast<int>(state->blocks.size());
  for (const BlockRuntime& b : state->blocks) {
    info.gpu_tier_blocks += b.tier == schema::Tier::Gpu;
    info.cpu_tier_blocks += b.tier == schema::Tier::Cpu;
    info.disk_tier_blocks += b.tier == schema::Tier::Disk;
    bool resident = false;
    for (const WeightRuntime& w : b.weights) resident |= w.tier == schema::Tier::Gpu;
    info.partially_resident_blocks += b.tier != schema::Tier::Gpu && resident;
  }
  for (const StreamRuntime& s : state->streams) {
    info.stream_units += static_cast<int>(s.units.size());
    for (const UnitRuntime& u : s.units) info.chunk_units += u.whole ? 0 : 1;
  }
  for (const ArenaRuntime& a : state->arenas) {
    (a.pool == schema::Pool::PinnedHost ? info.pinned_pool_bytes : info.device_arena_bytes) += a.memory.size();
  }
  state->load_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return state;
}

Result<std::vector<BlockKv>> MakeKvViews(const ModelState& state) {
  const schema::Plan& plan = state.plan->plan();
  const schema::ModelConfig* config = plan.config();
  const schema::RunShape* run = plan.run_shape();
  std::vector<BlockKv> views(state.blocks.size());
  try {
    for (const BlockRuntime& br : state.blocks) {
      if (br.kv == nullptr) continue;
      BlockKv& v = views[br.index];
      const std::vector<int64_t> shape{run->max_batch(), BlockKvHeads(plan), run->max_seq_len(),
                                       config->head_dim()};
      const auto opts = OptionsFor(plan.exec_dtype(), br.device);
      v.kv.k = at::from_blob(br.kv, shape, opts);
      v.kv.v = at::from_blob(br.kv + br.kv_bytes / 2, shape, opts);
      v.has_kv = true;
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kDevice, std::string("making KV cache views: ") + e.what());
  }
  return views;
}

ModelSpec SpecFromPlan(const schema::Plan& plan) {
  const schema::ModelConfig* c = plan.config();
  ModelSpec s;
  s.architecture = Str(c->architecture());
  s.hidden_size = c->hidden_size();
  s.num_layers = c->num_layers();
  s.num_heads = c->num_heads();
  s.num_kv_heads = c->num_kv_heads();
  s.head_dim = c->head_dim();
  s.intermediate_size = c->intermediate_size();
  s.vocab_size = c->vocab_size();
  s.max_position_embeddings = c->max_position_embeddings();
  s.norm_eps = c->norm_eps();
  s.rotary_dim = c->rotary_dim();
  s.attention_bias = c->attention_bias();
  s.mlp_bias = c->mlp_bias();
  s.tie_word_embeddings = c->tie_word_embeddings();
  s.activation = Str(c->activation());
  s.rope = RopeParamsOf(*c->rope());  // present in every verified plan (VerifyPlan checks it)
  s.sliding_window = c->sliding_window();
  if (c->sliding_window_layers() != nullptr) {
    for (uint32_t i = 0; i < c->sliding_window_layers()->size(); ++i) {
      s.sliding_window_layers.push_back(c->sliding_window_layers()->Get(i) != 0);
    }
  }
  s.scale_attn_weights = c->scale_attn_weights();
  s.scale_attn_by_inverse_layer_idx = c->scale_attn_by_inverse_layer_idx();
  s.reorder_and_upcast_attn = c->reorder_and_upcast_attn();
  s.num_experts = c->num_experts();
  s.num_experts_per_tok = c->num_experts_per_tok();
  s.moe_intermediate_size = c->moe_intermediate_size();
  s.shared_expert_intermediate_size = c->shared_expert_intermediate_size();
  s.norm_topk_prob = c->norm_topk_prob();
  if (c->sparse_layers() != nullptr) {
    for (uint32_t i = 0; i < c->sparse_layers()->size(); ++i) s.sparse_layers.push_back(c->sparse_layers()->Get(i) != 0);
  }
  s.qk_norm = c->qk_norm();
  return s;
}

}  // namespace bigplan::executor_internal
