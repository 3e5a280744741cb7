#include "executor/expert_engine.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <tuple>

#include "arch/binding.h"
#include "executor/fused_cuda.h"
#include "executor/fused_ops.h"

namespace bigplan::executor_internal {
namespace {

Status Cuda(cudaError_t err, const std::string& what) { return CudaStatus(static_cast<int>(err), what); }

constexpr uint64_t kAlign = 256;
uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

at::ScalarType ScalarOf(schema::DType d) {
  switch (d) {
    case schema::DType::F32: return at::kFloat;
    case schema::DType::F16: return at::kHalf;
    case schema::DType::BF16: return at::kBFloat16;
    case schema::DType::U8: return at::kByte;
    default: return at::kFloat;
  }
}

// A routed expert's matrix as it rests in pinned memory: bf16 rows, or row-quantized ones (formats/quant.h).
cpu_matvec::Matrix HostMatrixOf(const WeightRuntime& w) {
  const int64_t cols = w.shape.size() == 2 ? w.shape[1] : 0;
  return cpu_matvec::Matrix{w.quantized() ? w.format : quant::Format::kNone, w.home, w.rows, cols,
                            w.quantized() ? w.group : 0, static_cast<int64_t>(w.row_bytes())};
}

double MicrosSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Result<std::unique_ptr<ExpertEngine>> ExpertEngine::Create(const ModelState& state, size_t ring, int threads,
                                                           bool host_compute, int prefetch, int64_t split_rows,
                                                           uint64_t split_min_bytes, int spin_us, bool adapt_share) {
  if (state.cpu_mode || ring >= state.expert_rings.size()) return std::unique_ptr<ExpertEngine>();
  const ExpertRingRuntime& r = state.expert_rings[ring];
  for (size_t other = 0; other < ring; ++other) {
    if (state.expert_rings[other].device == r.device) {
      return MakeError(ErrorCode::kInvalidArgument, "two expert rings on cuda:" + std::to_string(r.device));
    }
  }
  const schema::Plan& plan = state.plan->plan();
  const schema::ModelConfig* config = plan.config();
  std::unique_ptr<ExpertEngine> e(new ExpertEngine());
  e->device_ = r.device;
  e->hidden_ = config->hidden_size();
  e->top_k_ = config->num_experts_per_tok();
  e->num_experts_ = config->num_experts();
  e->cpu_share_ = host_compute ? r.cpu_share : 0.0;
  e->adapt_ = adapt_share;
  e->decode_max_tokens_ = r.decode_max_tokens;
  e->copy_all_tokens_ = std::max<uint32_t>(1, r.copy_all_tokens);
  e->max_tokens_ = int64_t{plan.run_shape()->max_batch()} * plan.run_shape()->max_seq_len();
  const std::string act = config->activation() ? config->activation()->str() : "silu";
  if (act == "silu" || act == "swish" || act.empty()) {
    e->act_ = cpu_experts::Activation::kSilu;
  } else if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") {
    e->act_ = cpu_experts::Activation::kGeluTanh;
  } else if (e->cpu_share_ > 0) {
    return MakeError(ErrorCode::kUnsupported, "the host computes experts with silu or tanh-gelu, not " + act);
  }
  e->ring_ = r.ring;
  e->slots_ = static_cast<int>(r.slots);
  e->slot_bytes_ = r.slot_bytes;
  e->disk_ring_ = r.disk_ring;
  e->disk_slots_ = static_cast<int>(r.disk_slots);
  e->disk_slot_bytes_ = r.disk_slot_bytes;

  // Every sparse layer's experts: resident or routed, with where their matrices rest and lie in a slot.
  e->layers_.resize(state.blocks.size());
  bool any_disk = false;
  std::vector<bool> shard_needed(state.shards.size(), false);
  int64_t max_inter = 0;
  for (const BlockRuntime& b : state.blocks) {
    bool routed_any = false;
    for (const WeightRuntime& w : b.weights) routed_any = routed_any || w.routed;
    if (!routed_any || b.device != e->device_) continue;  // (another GPU's ring serves a block computed there)
    Layer& layer = e->layers_[b.index];
    layer.experts.resize(static_cast<size_t>(e->num_experts_));
    for (uint32_t x = 0; x < e->num_experts_; ++x) {
      Expert& ex = layer.experts[x];
      const arch::Slot roles[3] = {arch::Slot::kExpertGate, arch::Slot::kExpertUp, arch::Slot::kExpertDown};
      int routed = 0;
      uint64_t offset = 0;
      for (int k = 0; k < 3; ++k) {
        const size_t slot = static_cast<size_t>(arch::ExpertSlot(roles[k], x));
        if (slot >= b.slots.size() || b.slots[slot] < 0) {
          return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) + " has no " +
                                                            arch::SlotName(roles[k]) + " matrix");
        }
        const WeightRuntime& w = b.weights[b.slots[slot]];
        ex.m[k].w = &w;
        ex.m[k].slot_offset = offset;
        offset += AlignUp(w.bytes);
        routed += w.routed ? 1 : 0;
        if (w.routed && w.quantized() && w.tier == schema::Tier::Disk) {
          // (A disk read would have to quantize the checkpoint's rows on the way; the planner keeps quantized
          // experts in pinned memory.)
          return MakeError(ErrorCode::kUnsupported, b.name + ": routed expert matrix " + w.name +
                                                        " is row-quantized and rests on disk (quantized experts "
                                                        "move from pinned memory only)");
        }
        if (w.routed && w.quantized() && w.split) {
          return MakeError(ErrorCode::kInvalidArgument, b.name + ": routed expert matrix " + w.name +
                                                            " is stored split (a GPU-resident int4 layout)");
        }
      }
      if (routed != 0 && routed != 3) {
        return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) +
                                                          " is partly routed (an expert's matrices move together)");
      }
      if (routed == 0) continue;
      ex.routed = true;
      ex.tier = ex.m[0].w->tier;
      for (const Matrix& m : ex.m) {
        if (m.w->tier != ex.tier) {
          return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) +
                                                            " rests in two tiers");
        }
      }
      if (offset > e->slot_bytes_) {
        return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) + " (" +
                                                          std::to_string(offset) + " bytes) exceeds the ring's slots of " +
                                                          std::to_string(e->slot_bytes_));
      }
      if (ex.tier == schema::Tier::Cpu) {
        ex.host = ex.m[0].w->home;
        ex.span = offset - AlignUp(ex.m[2].w->bytes) + ex.m[2].w->bytes;
        // The three matrices lie in the block's host buffer in this order, 256-aligned (the planner's layout).
        for (const Matrix& m : ex.m) {
          if (m.w->home != ex.host + m.slot_offset) {
            return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) +
                                                              "'s matrices are not adjacent in pinned memory");
          }
        }
      } else if (ex.tier == schema::Tier::Disk) {
        any_disk = true;
        if (e->disk_ring_ == nullptr || offset > e->disk_slot_bytes_) {
          return MakeError(ErrorCode::kInvalidArgument, b.name + ": expert " + std::to_string(x) +
                                                            " rests on disk but the plan has no disk slot for it");
        }
        for (const Matrix& m : ex.m) shard_needed[m.w->shard_index] = true;
      } else {
        return MakeError(ErrorCode::kInvalidArgument, b.name + ": routed expert " + std::to_string(x) +
                                                          " is resident");
      }
      max_inter = std::max(max_inter, ex.m[0].w->rows);
      for (const Matrix& m : ex.m) {
        // The host multiplies bf16 rows and row-quantized ones (cpu_matvec's layouts; int4 with even groups).
        // (Act-order GPTQ columns are permuted: the host's products do not permute x.)
        const bool host_rows = m.w->quantized() ? cpu_matvec::Validate(HostMatrixOf(*m.w)).ok() && m.w->perm.empty()
                                                : m.w->dtype == schema::DType::BF16;
        if (!host_rows) e->cpu_share_ = 0;
      }
    }
  }

  // Grouped products need every expert's [gate; up] back to back: resident ones in their block's buffer, routed
  // ones in a slot (gate at 0, up right after it).
  e->grouped_ = true;
  // Splitting takes gate's and up's first rows and down's first columns: gate and up [inter, hidden] alike, down
  // [hidden, inter], plain or row-quantized as the grouped products take them (per-row fp8/int8: the GPU's columns
  // keep a multiple of 8; int4: the split's rows a multiple of down's group, so its groups stay whole).
  e->split_rows_ = std::max<int64_t>(0, split_rows);
  int64_t split_quantum = 1;
  e->split_min_bytes_ = split_min_bytes;
  bool any_plain = false, any_resident = false;
  std::set<std::tuple<quant::Format, int64_t, int64_t>> formats;  // of quantized experts: (format, gate/up group, down's)
  for (const BlockRuntime& b : state.blocks) {
    if (e->layers_[b.index].experts.empty()) continue;
    for (const Expert& ex : e->layers_[b.index].experts) {
      const WeightRuntime& g = *ex.m[0].w;
      const WeightRuntime& u = *ex.m[1].w;
      const WeightRuntime& d = *ex.m[2].w;
      const bool plain = !g.quantized() && !u.quantized() && !d.quantized() && g.shape == u.shape &&
                         g.shape.size() == 2 && d.shape.size() == 2 && g.dtype == d.dtype && g.dtype == u.dtype;
      // Quantized experts group too, through fused::QuantGemv's batched products: per-row fp8/int8 (one scale a
      // row) and int4 in groups of a multiple of 8 columns, in the row layout (not a GPU-resident split one).
      const auto groupable = [](const WeightRuntime& w) {
        if (w.shape.size() != 2 || (w.split && w.routed) || !w.perm.empty()) return false;
        const int64_t k = w.shape[1];
        if (w.format == quant::Format::kInt8 || w.format == quant::Format::kFp8E4M3) return w.group == k && k % 4 == 0;
        return w.format == quant::Format::kInt4 && k % 8 == 0 && w.group > 0 && w.group % 8 == 0 && k % w.group == 0;
      };
      const bool quant_rows = groupable(g) && groupable(u) && groupable(d) && g.format == u.format &&
                              g.format == d.format && g.shape == u.shape && g.group == u.group &&
                              d.shape[1] == g.shape[0] && d.shape[0] == g.shape[1];
      const bool adjacent = ex.routed ? ex.m[1].slot_offset == g.bytes : g.home + g.bytes == u.home;
      if (!(plain || quant_rows) || !adjacent) e->grouped_ = false;
      any_plain = any_plain || plain;
      if (quant_rows) formats.insert({g.format, g.group, d.group});
      if (quant_rows && !ex.routed) {  // (GPU-resident int4 is stored split: the kernel reads either layout)
        if (g.split != u.split || g.split != d.split || (any_resident && g.split != e->resident_split_)) {
          e->grouped_ = false;
        }
        e->resident_split_ = g.split;
        any_resident = true;
      }
      if (ex.routed && (!(plain || quant_rows) || d.shape[0] != e->hidden_ || d.shape[1] != g.shape[0] ||
                        g.shape[1] != e->hidden_)) {
        e->split_rows_ = 0;
      }
      if (ex.routed && quant_rows) {
        split_quantum = std::lcm(split_quantum, g.format == quant::Format::kInt4 ? d.group : int64_t{8});
      }
      e->inter_ = g.shape.empty() ? 0 : g.shape[0];
    }
  }
  if (e->split_rows_ > 0) e->split_rows_ = std::lcm(e->split_rows_, split_quantum);
  // (One kind of group: plain matrices, or per-row rows of one format, whose batched products take bf16 or fp16.)
  const schema::DType exec = plan.exec_dtype();
  if (!any_plain && exec != schema::DType::BF16 && exec != schema::DType::F16) e->grouped_ = false;
  if (any_plain ? !formats.empty() : formats.size() != 1) e->grouped_ = false;
  if (e->grouped_ && !any_plain) std::tie(e->group_format_, e->group_cols_[0], e->group_cols_[1]) = *formats.begin();
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(e->device_), "cudaSetDevice"));
  BIGPLAN_ASSIGN_OR_RETURN(e->copy_stream_, CudaStream::Create(e->device_, "expert copies"));
  for (int s = 0; s < e->slots_; ++s) {
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent ready, CudaEvent::Create(e->device_, false, "expert copy"));
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent freed, CudaEvent::Create(e->device_, false, "expert release"));
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent gate_up, CudaEvent::Create(e->device_, false, "expert copy (gate and up)"));
    e->ready_.push_back(std::move(ready));
    e->free_.push_back(std::move(freed));
    e->gate_up_ready_.push_back(std::move(gate_up));
  }
  e->free_recorded_.assign(static_cast<size_t>(e->slots_), false);
  for (int s = 0; s < e->disk_slots_; ++s) {
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent copied, CudaEvent::Create(e->device_, false, "expert disk copy"));
    e->disk_copied_.push_back(std::move(copied));
  }
  e->disk_pending_.assign(static_cast<size_t>(e->disk_slots_), false);
  if (any_disk) {
    e->readers_.resize(state.shards.size());
    for (size_t i = 0; i < state.shards.size(); ++i) {
      if (!shard_needed[i]) continue;
      BIGPLAN_ASSIGN_OR_RETURN(ShardReader reader, ShardReader::Open(state.shards[i]->path()));
      e->readers_[i] = std::make_unique<ShardReader>(std::move(reader));
    }
  }
  BIGPLAN_ASSIGN_OR_RETURN(CudaEvent choices, CudaEvent::Create(e->device_, false, "router choices"));
  e->choices_ready_ = std::move(choices);

  // Mapped pinned buffers (unified addressing maps them at the same address on the device).
  cudaDeviceProp prop{};
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaGetDeviceProperties(&prop, e->device_), "cudaGetDeviceProperties"));
  if (!prop.unifiedAddressing || !prop.canMapHostMemory) {
    return MakeError(ErrorCode::kUnsupported, "routed experts need a GPU that maps pinned host memory (unified "
                                              "addressing): cuda:" + std::to_string(e->device_));
  }
  const uint64_t picks = static_cast<uint64_t>(e->max_tokens_ * e->top_k_);
  BIGPLAN_ASSIGN_OR_RETURN(e->choices_, Allocation::Pinned(picks * (8 + 4) + kAlign, "router choices"));
  BIGPLAN_ASSIGN_OR_RETURN(e->indices_, Allocation::Pinned(picks * 16 + kAlign, "expert rows"));
  const int64_t host_tokens = e->cpu_share_ > 0 ? std::max<int64_t>(1, e->decode_max_tokens_) : 0;
  if (host_tokens > 0) {
    const uint64_t xb = static_cast<uint64_t>(host_tokens * e->hidden_) * sizeof(float);
    BIGPLAN_ASSIGN_OR_RETURN(e->x_host_, Allocation::Pinned(xb, "host experts' input"));
    BIGPLAN_ASSIGN_OR_RETURN(e->y_host_, Allocation::Pinned(xb, "host experts' output"));
    // The host thread computes too; one core stays with the thread that issues the GPU's work.
    const int n = threads > 0 ? threads
                              : static_cast<int>(std::max(2u, std::thread::hardware_concurrency()) - 1);
    e->pool_ = std::make_unique<cpu_matvec::MatVecPool>(n);
    e->host_spin_ = std::chrono::microseconds(spin_us >= 0 ? spin_us : kSpinMicros);
    e->runner_ = std::make_unique<cpu_experts::ExpertRunner>(e->pool_.get(), e->hidden_, max_inter,
                                                             static_cast<int>(host_tokens),
                                                             static_cast<int>(host_tokens * e->top_k_));
    // bf16 plans: the host rounds as the GPU's bf16 experts do (a near tie in a later router then goes the same way).
    e->runner_->set_round_bf16(plan.exec_dtype() == schema::DType::BF16);
    e->host_experts_.reserve(static_cast<size_t>(e->num_experts_));
    BIGPLAN_ASSIGN_OR_RETURN(e->host_flag_, Allocation::Pinned(kAlign, "host experts' flag"));
    std::memset(e->host_flag_.data(), 0, kAlign);
    e->host_thread_ = std::thread([p = e.get()] { p->HostLoop(); });
    e->host_assignments_.reserve(static_cast<size_t>(host_tokens * e->top_k_));
  }
  for (const Allocation* a : {&e->choices_, &e->indices_, &e->x_host_, &e->y_host_, &e->host_flag_}) {
    if (a->data() == nullptr) continue;
    void* device_ptr = nullptr;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostGetDevicePointer(&device_ptr, a->data(), 0), "mapping an expert buffer"));
    if (device_ptr != a->data()) {
      return MakeError(ErrorCode::kUnsupported, "routed experts: a pinned buffer is mapped at another device address");
    }
  }
  if (e->grouped_) {
    const uint64_t n = static_cast<uint64_t>(e->num_experts_);
    const uint64_t per_group = AlignUp(6 * n * sizeof(void*)) + AlignUp(n * kGroupTokens * sizeof(float));
    BIGPLAN_ASSIGN_OR_RETURN(e->groups_, Allocation::Pinned(2 * per_group, "expert groups"));
    void* device_ptr = nullptr;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostGetDevicePointer(&device_ptr, e->groups_.data(), 0), "mapping expert groups"));
    if (device_ptr != e->groups_.data()) return MakeError(ErrorCode::kUnsupported, "expert groups mapped elsewhere");
    const schema::DType dt = plan.exec_dtype();
    const at::ScalarType st = dt == schema::DType::BF16 ? at::kBFloat16 : dt == schema::DType::F16 ? at::kHalf : at::kFloat;
    const auto opts = at::TensorOptions().dtype(st).device(at::kCUDA, static_cast<c10::DeviceIndex>(e->device_));
    try {
      const int64_t rows = e->num_experts_ * kGroupTokens;
      e->gu_buf_ = at::empty({rows * 2 * e->inter_}, opts);
      e->h_buf_ = at::empty({rows * e->inter_}, opts);
      e->y_buf_ = at::empty({rows * e->hidden_}, opts);
      e->ptr_dev_ = at::empty({static_cast<int64_t>(2 * per_group / 8)}, opts.dtype(at::kLong));
    } catch (const std::exception& ex) {
      return MakeError(ErrorCode::kDevice, std::string("expert group buffers: ") + ex.what());
    }
  }
  e->copies_.reserve(static_cast<size_t>(e->num_experts_));
  e->copy_of_.assign(static_cast<size_t>(e->num_experts_), -1);
  e->count_.assign(static_cast<size_t>(e->num_experts_), 0);
  e->host_rows_.assign(static_cast<size_t>(e->num_experts_), 0);
  e->index_of_.assign(static_cast<size_t>(e->num_experts_), -1);
  for (auto& m : e->members_) m.reserve(static_cast<size_t>(e->num_experts_));
  e->hostable_.reserve(static_cast<size_t>(e->num_experts_));
  e->hostable_ids_.reserve(static_cast<size_t>(e->num_experts_));
  e->share_rows_.reserve(static_cast<size_t>(e->num_experts_));

  // Next-layer prefetch: each sparse layer's next sparse layer on this device, when that layer's router is a plain
  // resident matrix and both layers have their post-attention norm resident.
  // (At most top_k, and what the ring holds beside one token's choices: a prediction runs only when both fit.)
  e->prefetch_ = static_cast<int>(std::min<int64_t>({prefetch >= 0 ? prefetch : r.prefetch, e->top_k_,
                                                     std::max<int64_t>(0, e->slots_ - e->top_k_)}));
  e->next_.resize(state.blocks.size());
  if (e->prefetch_ > 0) {
    auto resident = [](const BlockRuntime& b, arch::Slot s) -> const WeightRuntime* {
      const size_t i = static_cast<size_t>(s);
      if (i >= b.slots.size() || b.slots[i] < 0) return nullptr;
      const WeightRuntime& w = b.weights[b.slots[i]];
      return w.tier == schema::Tier::Gpu && w.units.empty() && !w.quantized() && w.home != nullptr ? &w : nullptr;
    };
    const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(e->device_));
    int32_t prev = -1;
    for (const BlockRuntime& b : state.blocks) {  // in block order, which is execution order
      if (e->layers_[b.index].experts.empty()) continue;
      if (prev >= 0) {
        const BlockRuntime& pb = state.blocks[prev];
        const WeightRuntime* router = resident(b, arch::Slot::kRouter);
        const WeightRuntime* norm = resident(pb, arch::Slot::kPostNorm);
        const WeightRuntime* next_norm = resident(b, arch::Slot::kPostNorm);
        if (router != nullptr && norm != nullptr && next_norm != nullptr && router->shape.size() == 2 &&
            router->shape[0] == e->num_experts_ && router->shape[1] == e->hidden_ && norm->numel == e->hidden_ &&
            next_norm->numel == e->hidden_) {
          Next& n = e->next_[prev];
          n.block = static_cast<int32_t>(b.index);
          n.name = b.name;
          n.router = at::from_blob(router->home, router->shape, dev.dtype(ScalarOf(router->dtype)));
          n.norm = norm;
          n.next_norm = next_norm;
        }
      }
      prev = static_cast<int32_t>(b.index);
    }
    // Candidates: the next router's top_k (at least the prefetch count; TopRows ranks at most 64 rows).
    e->candidates_ = static_cast<int>(std::min<int64_t>(std::max<int64_t>(e->prefetch_, e->top_k_),
                                                        std::min<int64_t>(e->num_experts_, 64)));
    BIGPLAN_ASSIGN_OR_RETURN(e->predicted_, Allocation::Pinned(static_cast<uint64_t>(e->candidates_) * 8 + kAlign,
                                                               "predicted experts"));
    void* device_ptr = nullptr;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaHostGetDevicePointer(&device_ptr, e->predicted_.data(), 0), "mapping predictions"));
    if (device_ptr != e->predicted_.data()) return MakeError(ErrorCode::kUnsupported, "predictions mapped elsewhere");
    BIGPLAN_ASSIGN_OR_RETURN(e->predicted_ready_, CudaEvent::Create(e->device_, false, "predicted experts"));
    e->next_copies_.reserve(static_cast<size_t>(e->prefetch_));
  }
  return e;
}

ExpertEngine::~ExpertEngine() {
  if (host_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    host_posts_.fetch_add(1, std::memory_order_release);
    cv_.notify_all();
    host_thread_.join();
  }
  if (copy_stream_.get() != nullptr) cudaStreamSynchronize(copy_stream_.get());
}

void ExpertEngine::HostLoop() {
  uint32_t seen = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (!stop_ && !host_job_ && host_spin_.count() > 0) {
      // Spin for the next post (host_spin_) before sleeping on the condition variable.
      lock.unlock();
      const auto until = std::chrono::steady_clock::now() + host_spin_;
      for (int spins = 0; host_posts_.load(std::memory_order_acquire) == seen; ++spins) {
        if ((spins & 63) == 63 && std::chrono::steady_clock::now() > until) break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      lock.lock();
    }
    cv_.wait(lock, [&] { return stop_ || host_job_; });
    seen = host_posts_.load(std::memory_order_acquire);
    if (stop_) return;
    host_job_ = false;
    const uint32_t seq = host_seq_;
    const bool spanned = host_job_spanned_;
    const std::string name = host_block_;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    Status st = runner_->Run(host_experts_, host_assignments_, reinterpret_cast<const float*>(x_host_.data()),
                             host_tokens_, act_, reinterpret_cast<float*>(y_host_.data()));
    const auto t1 = std::chrono::steady_clock::now();
    if (recording_) {
      std::lock_guard<std::mutex> events_lock(events_mu_);
      events_.push_back(Event{"host experts " + name, "host experts", t0,
                              std::chrono::duration<double, std::micro>(t1 - t0).count(),
                              {{"experts", std::to_string(host_experts_.size())},
                               {"tokens", std::to_string(host_tokens_)}}});
    }
    lock.lock();
    host_busy_us_ += std::chrono::duration<double, std::micro>(t1 - t0).count();
    if (spanned) host_spanned_us_ += std::chrono::duration<double, std::micro>(t1 - t0).count();
    host_status_ = std::move(st);
    host_done_ = true;
    // The GPU waits for this number (Finish), then reads y_host_: the result's stores come first.
    std::atomic_thread_fence(std::memory_order_release);
    *reinterpret_cast<volatile uint32_t*>(host_flag_.data()) = seq;
    cv_.notify_all();
  }
}

Status ExpertEngine::WaitHostJob(const std::string& where) {
  if (pool_ == nullptr) return Status::Ok();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return host_done_; });
  if (!host_status_.ok()) {
    Status st = std::move(host_status_);
    host_status_ = Status::Ok();
    return WithContext(st.take_error(), where + ": host experts");
  }
  if (host_flag_.data() != nullptr &&
      reinterpret_cast<volatile uint32_t*>(host_flag_.data())[1] != 0) {
    reinterpret_cast<volatile uint32_t*>(host_flag_.data())[1] = 0;  // reported once
    return MakeError(ErrorCode::kDevice, where + ": the GPU waited more than " +
                                             std::to_string(kHostWaitTimeoutNs / 1000000000ull) +
                                             " s for the host's experts and went on without them");
  }
  return Status::Ok();
}

Status ExpertEngine::EndForward() {
  Status st = WaitHostJob("routed experts");
  if (host_flag_.data() != nullptr && host_layers_ > 0) {
    volatile uint64_t* waited = reinterpret_cast<volatile uint64_t*>(host_flag_.data() + 8);
    stats_.host_wait_us = static_cast<double>(*waited) / 1e3;
    double spanned_us = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.host_busy_us = host_busy_us_;
      spanned_us = host_spanned_us_;
    }
    // The copies' time (the forward's work is done: its span events have completed).
    double copy_us = 0;
    for (size_t i = 0; i < adapt_used_; ++i) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, adapt_spans_[2 * i].get(), adapt_spans_[2 * i + 1].get()) == cudaSuccess) {
        copy_us += ms * 1e3;
      } else {
        cudaGetLastError();
      }
    }
    stats_.host_copy_us = copy_us;
    // (The host's jobs and the copies of the same layers: those whose copies were timed.)
    if (adapt_ && decode_ && st.ok()) cpu_share_ = AdaptShare(cpu_share_, spanned_us, copy_us);
  }
  adapt_span_open_ = false;  // (open only where a forward ended before its copies were all issued: an error)
  stats_.share = cpu_share_;
  return st;
}

bool ExpertEngine::Routes(const BlockRuntime& b) const {
  return b.index < layers_.size() && !layers_[b.index].experts.empty();
}

void ExpertEngine::BeginForward(int64_t tokens) {
  tokens_ = tokens;
  decode_ = cpu_share_ > 0 && decode_max_tokens_ > 0 && tokens <= static_cast<int64_t>(decode_max_tokens_);
  copy_all_ = !decode_ && tokens >= static_cast<int64_t>(copy_all_tokens_);
  prefetched_ = false;
  // A prefetch left from an earlier forward is dropped (its copies were ordered before any later copy into its
  // slots on the one copy stream, and nothing reads them).
  next_copies_.clear();
  next_copies_block_ = -1;
  predicting_ = false;
  stats_ = Stats{};
  marks_.clear();
  first_sync_set_ = false;
  copy_span_open_ = false;
  host_layers_ = 0;
  adapt_used_ = 0;
  adapt_span_open_ = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    host_busy_us_ = 0;
    host_spanned_us_ = 0;
  }
  if (host_flag_.data() != nullptr) *reinterpret_cast<volatile uint64_t*>(host_flag_.data() + 8) = 0;
}

void ExpertEngine::MarkGpu(const std::string& label, const std::string& track, cudaStream_t stream, bool span_end) {
  if (marks_.size() >= mark_pool_.size()) {
    Result<CudaEvent> ev = CudaEvent::Create(device_, true, "expert timeline");
    if (!ev.ok()) return;  // the timeline is a report: a mark that cannot be made is left out
    mark_pool_.push_back(std::move(*ev));
  }
  const int i = static_cast<int>(marks_.size());
  if (cudaEventRecord(mark_pool_[i].get(), stream) != cudaSuccess) return;
  marks_.push_back(Mark{label, track, i, span_end});
}

void ExpertEngine::CollectGpuMarks() {
  // Times relative to the first router mark, which the host saw when its synchronization returned.
  int base = -1;
  for (const Mark& m : marks_) {
    if (m.track == "router (GPU)") {
      base = m.event;
      break;
    }
  }
  if (base < 0 || !first_sync_set_) {
    marks_.clear();
    return;
  }
  auto at_us = [&](int event, double* us) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, mark_pool_[base].get(), mark_pool_[event].get()) != cudaSuccess) return false;
    *us = ms * 1000.0;
    return true;
  };
  double last_copy_end = -1;
  std::lock_guard<std::mutex> lock(events_mu_);
  for (size_t i = 0; i < marks_.size(); ++i) {
    const Mark& m = marks_[i];
    double t = 0;
    if (!at_us(m.event, &t)) continue;
    const auto when = first_sync_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                        std::chrono::duration<double, std::micro>(t));
    if (!m.span_end) {
      if (m.track != "expert copies (GPU)") events_.push_back(Event{m.label, m.track, when, 1.0, {}});
      continue;
    }
    // A span's start is the previous mark on its track.
    for (size_t j = i; j-- > 0;) {
      if (marks_[j].track != m.track || marks_[j].span_end) continue;
      double t0 = 0;
      if (!at_us(marks_[j].event, &t0)) break;
      const auto start = first_sync_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                           std::chrono::duration<double, std::micro>(t0));
      events_.push_back(Event{m.label, m.track, start, t - t0, {}});
      stats_.copy_busy_us += t - t0;
      if (last_copy_end >= 0 && t0 > last_copy_end) stats_.copy_idle_us += t0 - last_copy_end;
      last_copy_end = std::max(last_copy_end, t);
      break;
    }
  }
  marks_.clear();
}

ExpertEngine::SplitLayout ExpertEngine::SplitOf(const Expert& ex, int64_t row0) const {
  SplitLayout l;
  const WeightRuntime& d = *ex.m[2].w;
  l.rows = ex.m[0].w->rows - row0;
  l.up_offset = static_cast<uint64_t>(l.rows) * ex.m[0].w->row_bytes();
  l.down_offset = AlignUp(2 * l.up_offset);
  if (d.quantized()) {
    l.down_group = d.group == d.shape[1] ? l.rows : d.group;
    const Result<uint64_t> row_bytes = quant::RowBytes(d.format, l.rows, l.down_group);
    l.down_row_bytes = row_bytes.ok() ? *row_bytes : 0;
  } else {
    l.down_row_bytes = static_cast<uint64_t>(l.rows) * (d.row_bytes() / static_cast<uint64_t>(d.shape[1]));
  }
  return l;
}

Status ExpertEngine::IssueCopy(uint32_t block, Copy* c) {
  const Expert& ex = layers_[block].experts[static_cast<size_t>(c->expert)];
  const int s = c->slot;
  cudaStream_t cs = copy_stream_.get();
  if (free_recorded_[s]) BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(cs, free_[s].get(), 0), "expert slot wait"));
  uint8_t* dst = ring_ + static_cast<uint64_t>(s) * slot_bytes_;
  if (c->row0 > 0) {
    // A split expert (pinned, plain matrices): the GPU's gate and up rows, then down's columns by one 2-D copy.
    const SplitLayout l = SplitOf(ex, c->row0);
    const WeightRuntime& g = *ex.m[0].w;
    const WeightRuntime& u = *ex.m[1].w;
    const WeightRuntime& d = *ex.m[2].w;
    const uint64_t skip = static_cast<uint64_t>(c->row0) * g.row_bytes();
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(dst, g.home + skip, l.up_offset, cudaMemcpyHostToDevice, cs),
                                 "expert copy"));
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(dst + l.up_offset, u.home + skip, l.up_offset,
                                                 cudaMemcpyHostToDevice, cs), "expert copy"));
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(gate_up_ready_[s].get(), cs), "cudaEventRecord"));
    const size_t rows = static_cast<size_t>(d.rows);
    if (!d.quantized()) {
      const uint64_t element = d.row_bytes() / static_cast<uint64_t>(d.shape[1]);
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpy2DAsync(dst + l.down_offset, l.down_row_bytes, d.home + c->row0 * element,
                                                     d.row_bytes(), l.down_row_bytes, rows, cudaMemcpyHostToDevice, cs),
                                   "expert copy (down columns)"));
    } else {
      // Row-quantized: the columns' values, then their groups' records (with one scale a row, right after them).
      const int64_t inter = d.shape[1];
      const uint64_t v0 = quant::DataBytes(d.format, c->row0), v1 = quant::DataBytes(d.format, inter);
      const uint64_t g0 = d.group == inter ? 0 : static_cast<uint64_t>(c->row0 / d.group);
      const uint64_t records = l.down_row_bytes - (v1 - v0);
      if (g0 == 0) {
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpy2DAsync(dst + l.down_offset, l.down_row_bytes, d.home + v0, d.row_bytes(),
                                                       l.down_row_bytes, rows, cudaMemcpyHostToDevice, cs),
                                     "expert copy (down columns)"));
      } else {
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpy2DAsync(dst + l.down_offset, l.down_row_bytes, d.home + v0, d.row_bytes(),
                                                       v1 - v0, rows, cudaMemcpyHostToDevice, cs),
                                     "expert copy (down columns)"));
        BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpy2DAsync(dst + l.down_offset + (v1 - v0), l.down_row_bytes,
                                                       d.home + v1 + 4 * g0, d.row_bytes(), records, rows,
                                                       cudaMemcpyHostToDevice, cs),
                                     "expert copy (down records)"));
      }
    }
    stats_.copied_bytes += 2 * l.up_offset + l.down_row_bytes * static_cast<uint64_t>(d.rows);
  } else if (ex.tier == schema::Tier::Cpu) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(dst, ex.host, ex.span, cudaMemcpyHostToDevice, cs), "expert copy"));
    stats_.copied_bytes += ex.span;
  } else {
    // Disk: read the three matrices into a pinned disk slot (cast to the execution dtype), then copy it.
    const int d = next_disk_slot_;
    next_disk_slot_ = (next_disk_slot_ + 1) % disk_slots_;
    if (disk_pending_[d]) {
      BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(disk_copied_[d].get()), "waiting for a disk slot"));
    }
    uint8_t* slot = disk_ring_ + static_cast<uint64_t>(d) * disk_slot_bytes_;
    uint64_t end = 0;
    for (const Matrix& m : ex.m) {
      const WeightRuntime& w = *m.w;
      const ShardReader* reader = readers_[w.shard_index].get();
      if (reader == nullptr) return MakeError(ErrorCode::kInternal, "no reader for " + w.name);
      BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* src, reader->ReadToBounce(w.source_offset, w.source_bytes));
      BIGPLAN_RETURN_IF_ERROR(CastInto(slot + m.slot_offset, w.dtype, src, w.source_dtype, w.numel));
      end = m.slot_offset + w.bytes;
    }
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(dst, slot, end, cudaMemcpyHostToDevice, cs), "expert copy"));
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(disk_copied_[d].get(), cs), "cudaEventRecord"));
    disk_pending_[d] = true;
    stats_.copied_bytes += end;
    ++stats_.disk;
  }
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(ready_[s].get(), cs), "cudaEventRecord"));
  return Status::Ok();
}

// Issues the copies whose slot's previous occupant in this layer (the copy slots_ earlier) has been released (its
// `used` cleared); the first slots_ copies reuse slots whose experts were released in earlier layers.
Status ExpertEngine::IssueCopies(const BlockRuntime& b) {
  const size_t ring = static_cast<size_t>(slots_);
  while (issued_ < copies_.size()) {
    if (issued_ >= ring && copies_[issued_ - ring].used) break;
    BIGPLAN_RETURN_IF_ERROR(IssueCopy(b.index, &copies_[issued_]));
    ++stats_.copied;
    ++issued_;
  }
  if (copy_span_open_ && issued_ == copies_.size()) {
    MarkGpu(copy_span_label_, "expert copies (GPU)", copy_stream_.get(), true);
    copy_span_open_ = false;
  }
  if (adapt_span_open_ && issued_ == copies_.size()) {
    BIGPLAN_RETURN_IF_ERROR(
        Cuda(cudaEventRecord(adapt_spans_[2 * adapt_used_ + 1].get(), copy_stream_.get()), "cudaEventRecord"));
    ++adapt_used_;
    adapt_span_open_ = false;
  }
  return Status::Ok();
}

// The adaptive share's timing of a host-computing layer's copies (Create's adapt_share): an event before them on the
// copy stream; IssueCopies records the one after the last.
Status ExpertEngine::OpenAdaptSpan() {
  if (!adapt_ || adapt_span_open_ || !decode_) return Status::Ok();
  if (2 * adapt_used_ + 2 > adapt_spans_.size()) {
    for (int i = 0; i < 2; ++i) {
      BIGPLAN_ASSIGN_OR_RETURN(CudaEvent ev, CudaEvent::Create(device_, true, "expert copy span"));
      adapt_spans_.push_back(std::move(ev));
    }
  }
  BIGPLAN_RETURN_IF_ERROR(
      Cuda(cudaEventRecord(adapt_spans_[2 * adapt_used_].get(), copy_stream_.get()), "cudaEventRecord"));
  adapt_span_open_ = true;
  return Status::Ok();
}

void ExpertEngine::OpenCopySpan(const BlockRuntime& b) {
  if (!recording_ || copy_span_open_) return;
  copy_span_label_ = "copies " + b.name;
  MarkGpu(copy_span_label_, "expert copies (GPU)", copy_stream_.get(), false);
  copy_span_open_ = true;
}

Status ExpertEngine::Predict(const BlockRuntime& b, const at::Tensor& x, cudaStream_t compute) {
  // (LibTorch issues on the current stream, which is `compute` while a block's step runs.)
  Next& n = next_[b.index];
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  int64_t* out = reinterpret_cast<int64_t*>(predicted_.data());
  try {
    if (!n.ratio.defined()) {
      // The next layer normalizes the same residual stream with its own weights: x / w * w_next (0 where w is 0).
      const at::Tensor w = at::from_blob(n.norm->home, {hidden_}, dev.dtype(ScalarOf(n.norm->dtype))).to(at::kFloat);
      const at::Tensor wn =
          at::from_blob(n.next_norm->home, {hidden_}, dev.dtype(ScalarOf(n.next_norm->dtype))).to(at::kFloat);
      n.ratio = at::where(w.abs() > 1e-12, wn / w, at::zeros_like(w)).contiguous();
    }
    // One token (decode at batch 1): one kernel scores the router's rows and writes the top ones; more tokens, or
    // float32: the sum over the tokens of the next router's probabilities, by LibTorch ops.
    if (!(x.size(0) == 1 && fused_ops::TopRows(x, n.ratio, n.router, candidates_, out))) {
      const at::Tensor xin = (x.to(at::kFloat) * n.ratio).to(n.router.scalar_type());
      const at::Tensor probs = at::softmax(at::linear(xin, n.router).to(at::kFloat), -1);
      const at::Tensor top = std::get<1>(at::topk(probs.sum(0), candidates_));
      at::from_blob(out, {candidates_}, dev.dtype(at::kLong)).copy_(top);
    }
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, b.name + ": predicting the next layer's experts: " + ex.what());
  }
  return Cuda(cudaEventRecord(predicted_ready_.get(), compute), "cudaEventRecord");
}

Status ExpertEngine::IssuePrefetch(const BlockRuntime& b, bool wait) {
  if (!predicting_) return Status::Ok();
  // This layer's copies all issued (else a prefetch would pass them on the copy stream), and the prediction in: a
  // call that may not wait leaves it to a later one (the calling thread's busy waits would slow the host's experts).
  if (issued_ != copies_.size()) {
    if (wait) predicting_ = false;
    return Status::Ok();
  }
  if (wait) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(predicted_ready_.get()), "waiting for the predicted experts"));
  } else {
    const cudaError_t q = cudaEventQuery(predicted_ready_.get());
    if (q == cudaErrorNotReady) return Status::Ok();
    BIGPLAN_RETURN_IF_ERROR(Cuda(q, "querying the predicted experts"));
  }
  predicting_ = false;
  const uint32_t nb = static_cast<uint32_t>(next_[b.index].block);
  const Layer& next = layers_[nb];
  const int64_t* ids = reinterpret_cast<const int64_t*>(predicted_.data());
  next_copies_.clear();
  // The prefetch's slots follow this layer's copies (at most tokens x top_k of them; the ring holds both): the most
  // probable candidates that rest in pinned memory (a resident or disk-resting one is passed over for the next).
  for (int i = 0; i < candidates_ && static_cast<int>(next_copies_.size()) < prefetch_; ++i) {
    const int64_t e = ids[i];
    if (e < 0 || e >= num_experts_) return MakeError(ErrorCode::kInternal, b.name + ": predicted expert " + std::to_string(e));
    const Expert& ex = next.experts[static_cast<size_t>(e)];
    if (!ex.routed || ex.tier != schema::Tier::Cpu) continue;
    next_copies_.push_back(Copy{static_cast<int32_t>(e), (next_slot_ + static_cast<int>(next_copies_.size())) % slots_, true});
  }
  if (next_copies_.empty()) return Status::Ok();
  next_slot_ = (next_slot_ + static_cast<int>(next_copies_.size())) % slots_;
  const std::string label = "prefetch " + next_[b.index].name;
  if (recording_) MarkGpu(label, "expert copies (GPU)", copy_stream_.get(), false);
  for (Copy& c : next_copies_) BIGPLAN_RETURN_IF_ERROR(IssueCopy(nb, &c));
  if (recording_) MarkGpu(label, "expert copies (GPU)", copy_stream_.get(), true);
  next_copies_block_ = static_cast<int32_t>(nb);
  return Status::Ok();
}

Status ExpertEngine::StepStarted(const BlockRuntime& b, cudaStream_t /*compute*/) {
  if (!copy_all_ || !Routes(b)) return Status::Ok();
  // A prefill: copy the layer's first ring's worth of non-resident experts before its router chooses.
  copies_.clear();
  std::fill(copy_of_.begin(), copy_of_.end(), -1);
  issued_ = 0;
  const Layer& layer = layers_[b.index];
  for (int32_t x = 0; x < num_experts_ && static_cast<int>(copies_.size()) < slots_; ++x) {
    if (!layer.experts[x].routed) continue;
    copy_of_[x] = static_cast<int32_t>(copies_.size());
    copies_.push_back(Copy{x, (next_slot_ + static_cast<int>(copies_.size())) % slots_, true});
  }
  OpenCopySpan(b);
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));
  prefetched_ = true;
  prefetched_block_ = b.index;
  return Status::Ok();
}

BlockWeights::HostChoices ExpertEngine::ChoicesForHost(int64_t tokens) const {
  BlockWeights::HostChoices h;
  if (choices_.data() == nullptr || tokens > max_tokens_) return h;
  h.ids = reinterpret_cast<int64_t*>(choices_.data());
  h.weights = reinterpret_cast<float*>(choices_.data() + AlignUp(static_cast<uint64_t>(max_tokens_ * top_k_) * 8));
  if (HostPath(tokens)) h.x = reinterpret_cast<float*>(x_host_.data());
  return h;
}

bool ExpertEngine::HostPath(int64_t tokens) const {
  return decode_ && pool_ != nullptr && tokens <= static_cast<int64_t>(decode_max_tokens_);
}

Result<BlockWeights::ExpertWork> ExpertEngine::Begin(const BlockRuntime& b, const at::Tensor& x,
                                                     const at::Tensor& topi, const at::Tensor& topw,
                                                     cudaStream_t compute, bool written) {
  const int64_t tokens = topi.size(0), k = topi.size(1);
  if (tokens > max_tokens_ || k != top_k_ || x.size(0) != tokens || x.size(1) != hidden_) {
    return MakeError(ErrorCode::kInvalidArgument, b.name + ": routed experts: " + std::to_string(tokens) + " x " +
                                                      std::to_string(k) + " choices exceed the run shape");
  }
  const Layer& layer = layers_[b.index];
  const bool host_path = HostPath(tokens);
  // The choices (and the host's input) through mapped memory (unless the router's kernel wrote them there), then
  // one synchronization.
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  const BlockWeights::HostChoices mapped = ChoicesForHost(tokens);
  int64_t* ids = mapped.ids;
  float* weights = mapped.weights;
  if (!written) {
    at::from_blob(ids, {tokens, k}, dev.dtype(at::kLong)).copy_(topi);
    at::from_blob(weights, {tokens, k}, dev.dtype(at::kFloat)).copy_(topw);
    if (host_path) at::from_blob(x_host_.data(), {tokens, hidden_}, dev.dtype(at::kFloat)).copy_(x);
  }
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(choices_ready_.get(), compute), "cudaEventRecord"));
  if (recording_) MarkGpu("router " + b.name, "router (GPU)", compute, false);
  const auto t0 = std::chrono::steady_clock::now();
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(choices_ready_.get()), "waiting for the router's choices"));
  const double waited = MicrosSince(t0);
  stats_.wait_router_us += waited;
  if (recording_ && !first_sync_set_) {
    first_sync_ = std::chrono::steady_clock::now();
    first_sync_set_ = true;
  }

  // Rows per chosen expert.
  int32_t* count = count_.data();
  std::fill(count_.begin(), count_.end(), 0);
  for (int64_t i = 0; i < tokens * k; ++i) {
    if (ids[i] < 0 || ids[i] >= num_experts_) {
      return MakeError(ErrorCode::kInternal, b.name + ": the router chose expert " + std::to_string(ids[i]));
    }
    ++count[static_cast<size_t>(ids[i])];
  }
  // Copies already issued for this layer: a copy-all forward's first ring (StepStarted), or the previous layer's
  // prediction (next-layer prefetch).
  const bool prefetched = prefetched_ && prefetched_block_ == b.index;
  prefetched_ = false;
  const bool predicted = next_copies_block_ == static_cast<int32_t>(b.index);
  if (!prefetched) {
    copies_.clear();
    std::fill(copy_of_.begin(), copy_of_.end(), -1);
    issued_ = 0;
  }
  size_t ahead = 0;  // prefetched copies whose slots next_slot_ already passed
  if (predicted) {
    for (Copy& c : next_copies_) {
      copy_of_[c.expert] = static_cast<int32_t>(copies_.size());
      copies_.push_back(c);
    }
    issued_ = ahead = copies_.size();
    next_copies_.clear();
    next_copies_block_ = -1;
  }
  // The host's experts, in decode forwards, among the chosen pinned-resting experts not already copied
  // (ShareHostRows: cpu_share_ of their bytes, a large expert split where the share ends). host_rows_[e]: the
  // host's intermediate rows of expert e (0: none).
  int64_t* host_rows = host_rows_.data();
  std::fill(host_rows_.begin(), host_rows_.end(), 0);
  split_expert_ = -1;
  auto inter_of = [&](int32_t e) { return layer.experts[e].m[0].w->rows; };
  auto on_host = [&](int32_t e) { return host_rows[e] > 0 && host_rows[e] == inter_of(e); };  // all of it
  if (host_path) {
    hostable_.clear();
    hostable_ids_.clear();
    for (int32_t e = 0; e < num_experts_; ++e) {
      const Expert& ex = layer.experts[e];
      if (count[e] == 0 || !ex.routed || ex.tier != schema::Tier::Cpu || copy_of_[e] >= 0) continue;
      hostable_.push_back(HostableExpert{ex.span, inter_of(e)});
      hostable_ids_.push_back(e);
    }
    share_rows_.resize(hostable_.size());
    const int split = ShareHostRows(hostable_, cpu_share_, split_rows_, split_min_bytes_, share_rows_);
    for (size_t i = 0; i < hostable_ids_.size(); ++i) host_rows[hostable_ids_[i]] = share_rows_[i];
    if (split >= 0) split_expert_ = hostable_ids_[static_cast<size_t>(split)];
  }
  // The copies: those already issued first, then the other chosen routed experts in order.
  for (Copy& c : copies_) {
    c.used = count[c.expert] > 0;
    if (predicted) {
      ++stats_.prefetched;
      if (c.used) {
        ++stats_.prefetch_hits;
        ++stats_.copied;
      } else {
        stats_.prefetch_wasted_bytes += layer.experts[c.expert].span;
      }
    }
  }
  for (int32_t e = 0; e < num_experts_; ++e) {
    if (count[e] == 0 || !layer.experts[e].routed || on_host(e) || copy_of_[e] >= 0) continue;
    copy_of_[e] = static_cast<int32_t>(copies_.size());
    copies_.push_back(Copy{e, (next_slot_ + static_cast<int>(copies_.size() - ahead)) % slots_, true, host_rows[e]});
  }
  next_slot_ = (next_slot_ + static_cast<int>(copies_.size() - ahead)) % std::max(1, slots_);
  // Unchosen prefetched experts free their slots now.
  for (Copy& c : copies_) {
    if (c.used) continue;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
    free_recorded_[c.slot] = true;
    copy_of_[c.expert] = -1;
  }
  // The host's job first (the host's experts are the longer path; the copies' few calls follow at once). (The
  // previous job is done: the GPU waited for it before this router ran; this also collects its status.)
  if (host_path) {
    BIGPLAN_RETURN_IF_ERROR(WaitHostJob(b.name));
    host_experts_.clear();
    host_assignments_.clear();
    int32_t* index_of = index_of_.data();
    for (int32_t e = 0; e < num_experts_; ++e) {
      index_of[e] = -1;
      if (host_rows[e] == 0) continue;
      const Expert& ex = layer.experts[e];
      index_of[e] = static_cast<int32_t>(host_experts_.size());
      cpu_experts::Expert he;
      cpu_matvec::Matrix* mats[3] = {&he.gate, &he.up, &he.down};
      for (int m = 0; m < 3; ++m) {
        const WeightRuntime& w = *ex.m[m].w;
        *mats[m] = HostMatrixOf(w);
      }
      const int64_t rows = host_rows[e];
      if (rows < inter_of(e)) {  // split: gate and up rows [0, rows), down columns [0, rows) (its row stride kept)
        he.gate.rows = he.up.rows = rows;
        if (he.down.format != cpu_matvec::Format::kNone) {
          // (The records stay where the full rows keep them; one scale a row stays one.)
          he.down.record_offset = static_cast<int64_t>(quant::DataBytes(he.down.format, he.down.cols));
          if (he.down.group == he.down.cols) he.down.group = rows;
        }
        he.down.cols = rows;
        ++stats_.split;
      }
      host_experts_.push_back(he);
      ++stats_.host;
      stats_.host_bytes += static_cast<uint64_t>(static_cast<double>(ex.span) * static_cast<double>(rows) /
                                                 static_cast<double>(inter_of(e)));
    }
    for (int64_t i = 0; i < tokens * k; ++i) {
      const int32_t e = static_cast<int32_t>(ids[i]);
      if (index_of[e] < 0) continue;
      host_assignments_.push_back(cpu_experts::Assignment{index_of[e], static_cast<int32_t>(i / k), weights[i]});
    }
    if (!host_experts_.empty()) {
      ++host_layers_;
      std::lock_guard<std::mutex> lock(mu_);
      host_tokens_ = static_cast<int>(tokens);
      host_block_ = b.name;
      // (Its layer's copies are timed where some are still to be issued: OpenAdaptSpan below.)
      host_job_spanned_ = adapt_ && issued_ < copies_.size();
      ++host_seq_;
      host_done_ = false;
      host_job_ = true;
      host_pending_ = true;
      host_posts_.fetch_add(1, std::memory_order_release);
      cv_.notify_all();
    }
  }
  if (issued_ < copies_.size()) OpenCopySpan(b);
  if (issued_ < copies_.size() && !host_experts_.empty()) BIGPLAN_RETURN_IF_ERROR(OpenAdaptSpan());
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));

  // The next layer's prediction, on the GPU once this layer's copies and the host's job are under way (its launch
  // must not delay them); its copies are issued once it is in (IssuePrefetch, from here on).
  predicting_ = prefetch_ > 0 && !copy_all_ && next_[b.index].block >= 0 && tokens <= kGroupTokens &&
                tokens * top_k_ + prefetch_ <= slots_;
  if (predicting_) BIGPLAN_RETURN_IF_ERROR(Predict(b, x, compute));

  if (recording_) {
    int resident = 0, copied = 0, host = 0;
    for (int32_t e = 0; e < num_experts_; ++e) {
      if (count[e] == 0) continue;
      if (host_rows[e] > 0) ++host;
      if (!on_host(e) && layer.experts[e].routed) ++copied;
      if (!layer.experts[e].routed) ++resident;
    }
    std::lock_guard<std::mutex> lock(events_mu_);
    events_.push_back(Event{"router " + b.name, "experts", t0, waited,
                            {{"tokens", std::to_string(tokens)}, {"resident", std::to_string(resident)},
                             {"copied", std::to_string(copied)}, {"host", std::to_string(host)},
                             {"split", split_expert_ >= 0 ? std::to_string(split_expert_) : "none"},
                             {"prefetched", prefetched ? "yes" : "no"},
                             {"predicted", predicted ? "yes" : "no"}}});
  }

  BlockWeights::ExpertWork work;
  // A task: expert e's rows and picks, the index arrays in mapped memory.
  int64_t* idx = reinterpret_cast<int64_t*>(indices_.data());
  int64_t used = 0;
  auto add_task = [&](int32_t e) {
    const int64_t n = count[e];
    int64_t* rows = idx + used;
    int64_t* picks = rows + n;
    int64_t j = 0;
    for (int64_t i = 0; i < tokens * k; ++i) {
      if (ids[i] != e) continue;
      rows[j] = i / k;
      picks[j] = i;
      ++j;
    }
    BlockWeights::ExpertTask t;
    t.expert = e;
    t.rows = at::from_blob(rows, {n}, dev.dtype(at::kLong));
    t.picks = at::from_blob(picks, {n}, dev.dtype(at::kLong));
    t.first_pick = n > 0 ? picks[0] : -1;
    used += 2 * n;
    if (!layer.experts[e].routed) ++stats_.resident;
    work.tasks.push_back(std::move(t));
  };
  copies_grouped_ = false;
  const int64_t group_tokens = group_format_ == quant::Format::kNone ? kGroupTokens : fused::kGemvMaxRows;
  if (grouped_ && tokens <= group_tokens && copies_.size() <= static_cast<size_t>(slots_) && !prefetched &&
      x.is_contiguous()) {
    // Two groups: resident experts (group 0), copied ones (group 1); each expert's rows are every token (a token
    // that does not route to it has weight 0), so the products have one shape. A split expert's part is a task after
    // them.
    std::vector<int32_t>* members = members_;
    members[0].clear();
    members[1].clear();
    for (int32_t e = 0; e < num_experts_; ++e) {
      if (count[e] == 0 || host_rows[e] > 0) continue;
      members[layer.experts[e].routed ? 1 : 0].push_back(e);
    }
    const uint64_t n_all = static_cast<uint64_t>(num_experts_);
    const uint64_t per_group = AlignUp(6 * n_all * sizeof(void*)) + AlignUp(n_all * kGroupTokens * sizeof(float));
    const auto dev_opts = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
    const int64_t e_bytes = static_cast<int64_t>(gu_buf_.element_size());
    int64_t base = 0;     // experts before this group in the product buffers
    uint64_t filled = 0;  // bytes of groups_ the groups use
    uint8_t* const dev_groups = reinterpret_cast<uint8_t*>(ptr_dev_.data_ptr());
    for (int gi = 0; gi < 2; ++gi) {
      const int64_t n = static_cast<int64_t>(members[gi].size());
      if (n == 0) continue;
      uint8_t* area = groups_.data() + gi * per_group;
      const void** arr = reinterpret_cast<const void**>(area);
      const void** a_gu = arr;
      const void** b_x = arr + n_all;
      void** c_gu = const_cast<void**>(arr + 2 * n_all);
      const void** a_down = arr + 3 * n_all;
      const void** b_h = arr + 4 * n_all;
      void** c_y = const_cast<void**>(arr + 5 * n_all);
      float* w = reinterpret_cast<float*>(area + AlignUp(6 * n_all * sizeof(void*)));
      std::fill(w, w + n * tokens, 0.0f);
      uint8_t* gu = static_cast<uint8_t*>(gu_buf_.data_ptr()) + base * tokens * 2 * inter_ * e_bytes;
      uint8_t* h = static_cast<uint8_t*>(h_buf_.data_ptr()) + base * tokens * inter_ * e_bytes;
      uint8_t* y = static_cast<uint8_t*>(y_buf_.data_ptr()) + base * tokens * hidden_ * e_bytes;
      for (int64_t i = 0; i < n; ++i) {
        const int32_t e = members[gi][i];
        const Expert& ex = layer.experts[e];
        if (gi == 0) {
          a_gu[i] = ex.m[0].w->home;
          a_down[i] = ex.m[2].w->home;
        } else {
          const uint8_t* slot = ring_ + static_cast<uint64_t>(copies_[copy_of_[e]].slot) * slot_bytes_;
          a_gu[i] = slot + ex.m[0].slot_offset;
          a_down[i] = slot + ex.m[2].slot_offset;
        }
        b_x[i] = x.data_ptr();
        c_gu[i] = gu + i * tokens * 2 * inter_ * e_bytes;
        b_h[i] = h + i * tokens * inter_ * e_bytes;
        c_y[i] = y + i * tokens * hidden_ * e_bytes;
        for (int64_t p = 0; p < tokens * k; ++p) {
          if (ids[p] == e) w[i * tokens + p / k] += weights[p];
        }
        if (gi == 0) ++stats_.resident;
      }
      // The group's arrays and weights as they will lie in device memory (one kernel moves both groups' below).
      uint8_t* dev_area = dev_groups + gi * per_group;
      const void** darr = reinterpret_cast<const void**>(dev_area);
      BlockWeights::ExpertGroup g;
      g.index = gi;
      g.format = group_format_;
      g.gate_up_group = group_cols_[0];
      g.down_group = group_cols_[1];
      g.split = gi == 0 && resident_split_;
      g.n = n;
      g.tokens = tokens;
      g.inter = inter_;
      g.hidden = hidden_;
      g.gate_up = darr;
      g.x_ptrs = darr + n_all;
      g.gu_ptrs = const_cast<void**>(darr + 2 * n_all);
      g.down = darr + 3 * n_all;
      g.h_ptrs = darr + 4 * n_all;
      g.y_ptrs = const_cast<void**>(darr + 5 * n_all);
      g.gu = at::from_blob(gu, {n, tokens, 2 * inter_}, dev_opts.dtype(gu_buf_.scalar_type()));
      g.h = at::from_blob(h, {n, tokens, inter_}, dev_opts.dtype(gu_buf_.scalar_type()));
      g.y = at::from_blob(y, {n, tokens, hidden_}, dev_opts.dtype(gu_buf_.scalar_type()));
      // The weights in the router's dtype (each is one chosen expert's weight, already a value of that dtype).
      const at::ScalarType wt = topw.scalar_type();
      if (wt == at::kBFloat16 || wt == at::kHalf) {
        uint16_t* w16 = reinterpret_cast<uint16_t*>(w);
        for (int64_t q = 0; q < n * tokens; ++q) {  // in place, front to back (the 16-bit slot never passes its float)
          const float v = w[q];
          uint16_t bits;
          if (wt == at::kBFloat16) {
            bits = c10::BFloat16(v).x;
          } else {
            bits = c10::Half(v).x;
          }
          w16[q] = bits;
        }
      }
      const at::ScalarType stored = wt == at::kBFloat16 || wt == at::kHalf ? wt : at::kFloat;
      g.weights = at::from_blob(dev_area + AlignUp(6 * n_all * sizeof(void*)), {n, tokens, 1}, dev_opts.dtype(stored));
      filled = gi * per_group + AlignUp(6 * n_all * sizeof(void*)) +
               AlignUp(static_cast<uint64_t>(n * tokens) * sizeof(float));
      work.groups.push_back(std::move(g));
      base += n;
      if (gi == 1) copies_grouped_ = true;
    }
    // The groups' arrays and weights move to device memory by one kernel (not the copy engine, busy with experts):
    // cuBLAS reads a batch's pointers where it computes, which from mapped host memory would cross PCIe on every
    // tile, and so would each output value's weight read.
    if (filled > 0) {
      const int64_t words = static_cast<int64_t>(filled / sizeof(int64_t));
      at::Tensor dst = ptr_dev_.narrow(0, 0, words);
      const at::Tensor src = at::from_blob(groups_.data(), {words}, dev_opts.dtype(at::kLong));
      at::bitwise_or_out(dst, src, 0);
    }
    if (split_expert_ >= 0) add_task(split_expert_);
    return work;
  }

  // The GPU's tasks, one per expert it computes (all or part of).
  for (int32_t e = 0; e < num_experts_; ++e) {
    if (count[e] == 0 || on_host(e)) continue;
    add_task(e);
  }
  return work;
}

Status ExpertEngine::AcquireGroup(const BlockRuntime& b, int32_t index, cudaStream_t compute) {
  BIGPLAN_RETURN_IF_ERROR(IssuePrefetch(b, false));
  if (index != 1 || !copies_grouped_) return Status::Ok();
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));
  if (issued_ != copies_.size()) return MakeError(ErrorCode::kInternal, b.name + ": grouped expert copies not issued");
  for (const Copy& c : copies_) {
    if (c.row0 > 0) continue;  // a split expert is a task of its own
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(compute, ready_[c.slot].get(), 0), "waiting for an expert copy"));
  }
  return Status::Ok();
}

Status ExpertEngine::ReleaseGroup(const BlockRuntime& /*b*/, int32_t index, cudaStream_t compute) {
  if (index != 1 || !copies_grouped_) return Status::Ok();
  for (Copy& c : copies_) {
    if (c.row0 > 0) continue;  // released by its task
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
    free_recorded_[c.slot] = true;
    c.used = false;
    if (c.expert >= 0) copy_of_[c.expert] = -1;
  }
  copies_grouped_ = false;
  return Status::Ok();
}

Result<bool> ExpertEngine::Acquire(const BlockRuntime& b, int32_t expert, cudaStream_t compute, at::Tensor* views,
                                   SplitQuant* down_quant) {
  if (expert < 0 || expert >= num_experts_ || copy_of_[expert] < 0) return false;
  const size_t i = static_cast<size_t>(copy_of_[expert]);
  // (Copies are issued in order ahead of the kernel, which acquires them in that order.)
  if (issued_ <= i) return MakeError(ErrorCode::kInternal, b.name + ": expert copy not issued in order");
  const Copy& c = copies_[i];
  // A split expert's gate and up rows only: its down columns are waited for by AcquireDown.
  const CudaEvent& ready = c.row0 > 0 ? gate_up_ready_[c.slot] : ready_[c.slot];
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(compute, ready.get(), 0), "waiting for an expert copy"));
  const Expert& ex = layers_[b.index].experts[static_cast<size_t>(expert)];
  uint8_t* base = ring_ + static_cast<uint64_t>(c.slot) * slot_bytes_;
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  if (c.row0 > 0) {
    const SplitLayout l = SplitOf(ex, c.row0);
    if (ex.m[0].w->quantized()) {
      const auto bytes = dev.dtype(at::kByte);
      const int64_t gu_row = static_cast<int64_t>(ex.m[0].w->row_bytes());
      views[0] = at::from_blob(base, {l.rows, gu_row}, bytes);
      views[1] = at::from_blob(base + l.up_offset, {l.rows, gu_row}, bytes);
      views[2] = at::from_blob(base + l.down_offset, {hidden_, static_cast<int64_t>(l.down_row_bytes)}, bytes);
      if (down_quant != nullptr) *down_quant = SplitQuant{l.rows, l.down_group};
      return true;
    }
    const auto opts = dev.dtype(ScalarOf(ex.m[0].w->dtype));
    views[0] = at::from_blob(base, {l.rows, hidden_}, opts);
    views[1] = at::from_blob(base + l.up_offset, {l.rows, hidden_}, opts);
    views[2] = at::from_blob(base + l.down_offset, {hidden_, l.rows}, opts);
    return true;
  }
  for (int m = 0; m < 3; ++m) {
    const WeightRuntime& w = *ex.m[m].w;
    views[m] = at::from_blob(base + ex.m[m].slot_offset, w.stored_shape(), dev.dtype(ScalarOf(w.stored_dtype())));
  }
  return true;
}

Status ExpertEngine::AcquireDown(const BlockRuntime& b, int32_t expert, cudaStream_t compute) {
  if (expert < 0 || expert >= num_experts_ || copy_of_[expert] < 0) return Status::Ok();
  const size_t i = static_cast<size_t>(copy_of_[expert]);
  if (issued_ <= i) return MakeError(ErrorCode::kInternal, b.name + ": expert copy not issued in order");
  const Copy& c = copies_[i];
  if (c.row0 <= 0) return Status::Ok();  // Acquire waited for the whole copy
  return Cuda(cudaStreamWaitEvent(compute, ready_[c.slot].get(), 0), "waiting for an expert copy (down columns)");
}

Status ExpertEngine::Release(const BlockRuntime& b, int32_t expert, cudaStream_t compute) {
  if (expert < 0 || expert >= num_experts_ || copy_of_[expert] < 0) return Status::Ok();
  const size_t i = static_cast<size_t>(copy_of_[expert]);
  const Copy& c = copies_[i];
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
  free_recorded_[c.slot] = true;
  copy_of_[expert] = -1;
  copies_[i].used = false;  // released
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));
  return IssuePrefetch(b, false);
}

Status ExpertEngine::Finish(const BlockRuntime& b, cudaStream_t compute, at::Tensor* out) {
  BIGPLAN_RETURN_IF_ERROR(IssuePrefetch(b, true));
  if (!host_pending_) return Status::Ok();
  host_pending_ = false;
  // The GPU, not this thread, waits for the host's experts: the combine and the next layer's work are queued now and
  // run as soon as the host's sum is in (its status is checked at the next Begin or at EndForward).
  uint32_t* flag = reinterpret_cast<uint32_t*>(host_flag_.data());
  const float* y = reinterpret_cast<const float*>(y_host_.data());
  const int64_t n = static_cast<int64_t>(host_tokens_) * hidden_;
  fused::Elem elem = fused::Elem::kF32;
  const at::ScalarType t = out->scalar_type();
  const bool one_kernel = out->is_cuda() && out->is_contiguous() && out->numel() == n &&
                          (t == at::kBFloat16 || t == at::kHalf || t == at::kFloat);
  if (one_kernel) {
    elem = t == at::kBFloat16 ? fused::Elem::kBF16 : t == at::kHalf ? fused::Elem::kF16 : fused::Elem::kF32;
    BIGPLAN_RETURN_IF_ERROR(Cuda(fused::WaitFlagAdd(flag, host_seq_, kHostWaitTimeoutNs, flag + 1, elem,
                                                    out->data_ptr(), y, n, compute,
                                                    reinterpret_cast<uint64_t*>(host_flag_.data() + 8)),
                                 b.name + ": waiting for the host's experts"));
  } else {
    BIGPLAN_RETURN_IF_ERROR(Cuda(fused::WaitFlag(flag, host_seq_, kHostWaitTimeoutNs, flag + 1, compute),
                                 b.name + ": waiting for the host's experts"));
  }
  if (recording_) MarkGpu("host experts in " + b.name, "expert waits (GPU)", compute, false);
  if (one_kernel) return Status::Ok();
  try {
    const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
    *out = *out + at::from_blob(const_cast<float*>(y), {static_cast<int64_t>(host_tokens_), hidden_},
                                dev.dtype(at::kFloat)).to(t).view(out->sizes());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kDevice, b.name + ": adding the host's experts: " + e.what());
  }
  return Status::Ok();
}

std::vector<ExpertEngine::Event> ExpertEngine::TakeEvents() {
  CollectGpuMarks();
  std::lock_guard<std::mutex> lock(events_mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

}  // namespace bigplan::executor_internal
