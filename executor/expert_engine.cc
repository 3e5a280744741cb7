#include "executor/expert_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "arch/binding.h"

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

double MicrosSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Result<std::unique_ptr<ExpertEngine>> ExpertEngine::Create(const ModelState& state, int threads, bool host_compute) {
  if (state.cpu_mode || state.expert_rings.empty()) return std::unique_ptr<ExpertEngine>();
  if (state.expert_rings.size() != 1) {
    return MakeError(ErrorCode::kUnsupported, "routed experts on more than one GPU");
  }
  const ExpertRingRuntime& r = state.expert_rings[0];
  const schema::Plan& plan = state.plan->plan();
  const schema::ModelConfig* config = plan.config();
  std::unique_ptr<ExpertEngine> e(new ExpertEngine());
  e->device_ = r.device;
  e->hidden_ = config->hidden_size();
  e->top_k_ = config->num_experts_per_tok();
  e->num_experts_ = config->num_experts();
  e->cpu_share_ = host_compute ? r.cpu_share : 0.0;
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
    if (!routed_any) continue;
    if (b.device != e->device_) {
      return MakeError(ErrorCode::kInvalidArgument, b.name + " has routed experts but is not computed on cuda:" +
                                                        std::to_string(e->device_));
    }
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
        if (w.routed && w.quantized()) {
          return MakeError(ErrorCode::kUnsupported, b.name + ": routed expert matrix " + w.name +
                                                        " is row-quantized (routed experts move in bf16/fp16/fp32)");
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
        if (m.w->dtype != schema::DType::BF16) e->cpu_share_ = 0;  // the host multiplies bf16 matrices
      }
    }
  }

  // Grouped products need every expert's [gate; up] back to back: resident ones in their block's buffer, routed
  // ones in a slot (gate at 0, up right after it).
  e->grouped_ = true;
  for (const BlockRuntime& b : state.blocks) {
    if (e->layers_[b.index].experts.empty()) continue;
    for (const Expert& ex : e->layers_[b.index].experts) {
      const WeightRuntime& g = *ex.m[0].w;
      const WeightRuntime& u = *ex.m[1].w;
      const WeightRuntime& d = *ex.m[2].w;
      const bool plain = !g.quantized() && !u.quantized() && !d.quantized() && g.shape == u.shape &&
                         g.shape.size() == 2 && d.shape.size() == 2 && g.dtype == d.dtype && g.dtype == u.dtype;
      const bool adjacent = ex.routed ? ex.m[1].slot_offset == g.bytes : g.home + g.bytes == u.home;
      if (!plain || !adjacent) e->grouped_ = false;
      e->inter_ = g.shape.empty() ? 0 : g.shape[0];
    }
  }
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaSetDevice(e->device_), "cudaSetDevice"));
  BIGPLAN_ASSIGN_OR_RETURN(e->copy_stream_, CudaStream::Create(e->device_, "expert copies"));
  for (int s = 0; s < e->slots_; ++s) {
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent ready, CudaEvent::Create(e->device_, false, "expert copy"));
    BIGPLAN_ASSIGN_OR_RETURN(CudaEvent freed, CudaEvent::Create(e->device_, false, "expert release"));
    e->ready_.push_back(std::move(ready));
    e->free_.push_back(std::move(freed));
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
    e->runner_ = std::make_unique<cpu_experts::ExpertRunner>(e->pool_.get(), e->hidden_, max_inter,
                                                             static_cast<int>(host_tokens),
                                                             static_cast<int>(host_tokens * e->top_k_));
    // bf16 plans: the host rounds as the GPU's bf16 experts do (a near tie in a later router then goes the same way).
    e->runner_->set_round_bf16(plan.exec_dtype() == schema::DType::BF16);
    e->host_experts_.reserve(static_cast<size_t>(e->num_experts_));
    e->host_thread_ = std::thread([p = e.get()] { p->HostLoop(); });
    e->host_assignments_.reserve(static_cast<size_t>(host_tokens * e->top_k_));
  }
  for (const Allocation* a : {&e->choices_, &e->indices_, &e->x_host_, &e->y_host_}) {
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
      e->ptr_dev_ = at::empty({2 * 6 * e->num_experts_}, opts.dtype(at::kLong));
    } catch (const std::exception& ex) {
      return MakeError(ErrorCode::kDevice, std::string("expert group buffers: ") + ex.what());
    }
  }
  e->copies_.reserve(static_cast<size_t>(e->num_experts_));
  e->copy_of_.assign(static_cast<size_t>(e->num_experts_), -1);
  return e;
}

ExpertEngine::~ExpertEngine() {
  if (host_thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    host_thread_.join();
  }
  if (copy_stream_.get() != nullptr) cudaStreamSynchronize(copy_stream_.get());
}

void ExpertEngine::HostLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || host_job_; });
    if (stop_) return;
    host_job_ = false;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    Status st = runner_->Run(host_experts_, host_assignments_, reinterpret_cast<const float*>(x_host_.data()),
                             host_tokens_, act_, reinterpret_cast<float*>(y_host_.data()));
    const auto t1 = std::chrono::steady_clock::now();
    lock.lock();
    host_status_ = std::move(st);
    host_start_ = t0;
    host_end_ = t1;
    host_done_ = true;
    cv_.notify_all();
  }
}

bool ExpertEngine::Routes(const BlockRuntime& b) const {
  return b.index < layers_.size() && !layers_[b.index].experts.empty();
}

void ExpertEngine::BeginForward(int64_t tokens) {
  tokens_ = tokens;
  decode_ = cpu_share_ > 0 && decode_max_tokens_ > 0 && tokens <= static_cast<int64_t>(decode_max_tokens_);
  copy_all_ = !decode_ && tokens >= static_cast<int64_t>(copy_all_tokens_);
  prefetched_ = false;
  stats_ = Stats{};
}

Status ExpertEngine::IssueCopy(const BlockRuntime& b, Copy* c) {
  const Expert& ex = layers_[b.index].experts[static_cast<size_t>(c->expert)];
  const int s = c->slot;
  cudaStream_t cs = copy_stream_.get();
  if (free_recorded_[s]) BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(cs, free_[s].get(), 0), "expert slot wait"));
  uint8_t* dst = ring_ + static_cast<uint64_t>(s) * slot_bytes_;
  if (ex.tier == schema::Tier::Cpu) {
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
  ++stats_.copied;
  return Status::Ok();
}

// Issues the copies whose slot's previous occupant in this layer (the copy slots_ earlier) has been released (its
// `used` cleared); the first slots_ copies reuse slots whose experts were released in earlier layers.
Status ExpertEngine::IssueCopies(const BlockRuntime& b) {
  const size_t ring = static_cast<size_t>(slots_);
  while (issued_ < copies_.size()) {
    if (issued_ >= ring && copies_[issued_ - ring].used) break;
    BIGPLAN_RETURN_IF_ERROR(IssueCopy(b, &copies_[issued_]));
    ++issued_;
  }
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
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));
  prefetched_ = true;
  prefetched_block_ = b.index;
  return Status::Ok();
}

Result<BlockWeights::ExpertWork> ExpertEngine::Begin(const BlockRuntime& b, const at::Tensor& x,
                                                     const at::Tensor& topi, const at::Tensor& topw,
                                                     cudaStream_t compute) {
  const int64_t tokens = topi.size(0), k = topi.size(1);
  if (tokens > max_tokens_ || k != top_k_ || x.size(0) != tokens || x.size(1) != hidden_) {
    return MakeError(ErrorCode::kInvalidArgument, b.name + ": routed experts: " + std::to_string(tokens) + " x " +
                                                      std::to_string(k) + " choices exceed the run shape");
  }
  const Layer& layer = layers_[b.index];
  const bool host_path = decode_ && pool_ != nullptr && tokens <= static_cast<int64_t>(decode_max_tokens_);
  // The choices (and the host's input) through mapped memory, then one synchronization.
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  int64_t* ids = reinterpret_cast<int64_t*>(choices_.data());
  float* weights = reinterpret_cast<float*>(choices_.data() + AlignUp(static_cast<uint64_t>(max_tokens_ * top_k_) * 8));
  at::from_blob(ids, {tokens, k}, dev.dtype(at::kLong)).copy_(topi);
  at::from_blob(weights, {tokens, k}, dev.dtype(at::kFloat)).copy_(topw);
  if (host_path) at::from_blob(x_host_.data(), {tokens, hidden_}, dev.dtype(at::kFloat)).copy_(x);
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(choices_ready_.get(), compute), "cudaEventRecord"));
  const auto t0 = std::chrono::steady_clock::now();
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventSynchronize(choices_ready_.get()), "waiting for the router's choices"));
  const double waited = MicrosSince(t0);
  stats_.wait_router_us += waited;

  // Rows per chosen expert.
  std::vector<int32_t> count(static_cast<size_t>(num_experts_), 0);
  for (int64_t i = 0; i < tokens * k; ++i) {
    if (ids[i] < 0 || ids[i] >= num_experts_) {
      return MakeError(ErrorCode::kInternal, b.name + ": the router chose expert " + std::to_string(ids[i]));
    }
    ++count[static_cast<size_t>(ids[i])];
  }
  // The host's experts: the last round(share x n) chosen pinned-resting experts, in decode forwards.
  std::vector<bool> on_host(static_cast<size_t>(num_experts_), false);
  if (host_path) {
    int n = 0;
    for (int32_t e = 0; e < num_experts_; ++e) n += count[e] > 0 && layer.experts[e].routed && layer.experts[e].tier == schema::Tier::Cpu;
    int take = static_cast<int>(std::lround(cpu_share_ * n));
    for (int32_t e = num_experts_ - 1; e >= 0 && take > 0; --e) {
      if (count[e] > 0 && layer.experts[e].routed && layer.experts[e].tier == schema::Tier::Cpu) {
        on_host[e] = true;
        --take;
      }
    }
  }
  // The copies: prefetched ones first (copy-all), then the other chosen routed experts in order.
  const bool prefetched = prefetched_ && prefetched_block_ == b.index;
  prefetched_ = false;
  if (!prefetched) {
    copies_.clear();
    std::fill(copy_of_.begin(), copy_of_.end(), -1);
    issued_ = 0;
  }
  int32_t last_prefetched = -1;
  for (Copy& c : copies_) {
    c.used = count[c.expert] > 0;
    last_prefetched = std::max(last_prefetched, c.expert);
  }
  for (int32_t e = last_prefetched + 1; e < num_experts_; ++e) {
    if (count[e] == 0 || !layer.experts[e].routed || on_host[e]) continue;
    copy_of_[e] = static_cast<int32_t>(copies_.size());
    copies_.push_back(Copy{e, (next_slot_ + static_cast<int>(copies_.size())) % slots_, true});
  }
  next_slot_ = (next_slot_ + static_cast<int>(copies_.size())) % std::max(1, slots_);
  // Unchosen prefetched experts free their slots now.
  for (Copy& c : copies_) {
    if (c.used) continue;
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
    free_recorded_[c.slot] = true;
    copy_of_[c.expert] = -1;
  }
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));

  // The host's job.
  if (host_path) {
    host_experts_.clear();
    host_assignments_.clear();
    std::vector<int32_t> index_of(static_cast<size_t>(num_experts_), -1);
    for (int32_t e = 0; e < num_experts_; ++e) {
      if (!on_host[e]) continue;
      const Expert& ex = layer.experts[e];
      index_of[e] = static_cast<int32_t>(host_experts_.size());
      cpu_experts::Expert he;
      cpu_matvec::Matrix* mats[3] = {&he.gate, &he.up, &he.down};
      for (int m = 0; m < 3; ++m) {
        const WeightRuntime& w = *ex.m[m].w;
        *mats[m] = cpu_matvec::Matrix{quant::Format::kNone, w.home, w.rows, w.shape[1], 0,
                                      static_cast<int64_t>(w.row_bytes())};
      }
      host_experts_.push_back(he);
      ++stats_.host;
      stats_.host_bytes += ex.span;
    }
    for (int64_t i = 0; i < tokens * k; ++i) {
      const int32_t e = static_cast<int32_t>(ids[i]);
      if (!on_host[e]) continue;
      host_assignments_.push_back(cpu_experts::Assignment{index_of[e], static_cast<int32_t>(i / k), weights[i]});
    }
    if (!host_experts_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      host_tokens_ = static_cast<int>(tokens);
      host_done_ = false;
      host_job_ = true;
      host_pending_ = true;
      cv_.notify_all();
    }
  }

  if (recording_) {
    int resident = 0, copied = 0, host = 0;
    for (int32_t e = 0; e < num_experts_; ++e) {
      if (count[e] == 0) continue;
      if (on_host[e]) ++host;
      else if (layer.experts[e].routed) ++copied;
      else ++resident;
    }
    std::lock_guard<std::mutex> lock(events_mu_);
    events_.push_back(Event{"router " + b.name, "experts", t0, waited,
                            {{"tokens", std::to_string(tokens)}, {"resident", std::to_string(resident)},
                             {"copied", std::to_string(copied)}, {"host", std::to_string(host)},
                             {"prefetched", prefetched ? "yes" : "no"}}});
  }

  BlockWeights::ExpertWork work;
  copies_grouped_ = false;
  if (grouped_ && tokens <= kGroupTokens && copies_.size() <= static_cast<size_t>(slots_) && !prefetched &&
      x.is_contiguous()) {
    // Two groups: resident experts (group 0), copied ones (group 1); each expert's rows are every token (a token
    // that does not route to it has weight 0), so the products have one shape.
    std::vector<int32_t> members[2];
    for (int32_t e = 0; e < num_experts_; ++e) {
      if (count[e] == 0 || on_host[e]) continue;
      members[layer.experts[e].routed ? 1 : 0].push_back(e);
    }
    const uint64_t n_all = static_cast<uint64_t>(num_experts_);
    const uint64_t per_group = AlignUp(6 * n_all * sizeof(void*)) + AlignUp(n_all * kGroupTokens * sizeof(float));
    const auto dev_opts = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
    const int64_t e_bytes = static_cast<int64_t>(gu_buf_.element_size());
    int64_t base = 0;  // experts before this group in the product buffers
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
      // The arrays move to device memory by a kernel (not the copy engine, busy with experts): cuBLAS reads a
      // batch's pointers where it computes, which from mapped host memory would cross PCIe on every tile.
      int64_t* dev = ptr_dev_.data_ptr<int64_t>() + gi * 6 * static_cast<int64_t>(n_all);
      {
        at::Tensor dst = at::from_blob(dev, {static_cast<int64_t>(6 * n_all)}, dev_opts.dtype(at::kLong));
        const at::Tensor src = at::from_blob(arr, {static_cast<int64_t>(6 * n_all)}, dev_opts.dtype(at::kLong));
        at::bitwise_or_out(dst, src, 0);
      }
      const void** darr = reinterpret_cast<const void**>(dev);
      BlockWeights::ExpertGroup g;
      g.index = gi;
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
      g.weights = at::from_blob(w, {n, tokens, 1}, dev_opts.dtype(wt == at::kBFloat16 || wt == at::kHalf ? wt : at::kFloat));
      work.groups.push_back(std::move(g));
      base += n;
      if (gi == 1) copies_grouped_ = true;
    }
    return work;
  }

  // The GPU's tasks: rows and routing weights per expert, the index arrays in mapped memory.
  std::vector<BlockWeights::ExpertTask>& tasks = work.tasks;
  int64_t* idx = reinterpret_cast<int64_t*>(indices_.data());
  int64_t used = 0;
  const at::Tensor flat_w = topw.reshape({-1});
  for (int32_t e = 0; e < num_experts_; ++e) {
    if (count[e] == 0 || on_host[e]) continue;
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
    t.weights = n == 1 ? flat_w.narrow(0, picks[0], 1).view({1, 1})
                       : flat_w.index_select(0, at::from_blob(picks, {n}, dev.dtype(at::kLong))).unsqueeze(1);
    used += 2 * n;
    if (!layer.experts[e].routed) ++stats_.resident;
    tasks.push_back(std::move(t));
  }
  return work;
}

Status ExpertEngine::AcquireGroup(const BlockRuntime& b, int32_t index, cudaStream_t compute) {
  if (index != 1 || !copies_grouped_) return Status::Ok();
  BIGPLAN_RETURN_IF_ERROR(IssueCopies(b));
  if (issued_ != copies_.size()) return MakeError(ErrorCode::kInternal, b.name + ": grouped expert copies not issued");
  for (const Copy& c : copies_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(compute, ready_[c.slot].get(), 0), "waiting for an expert copy"));
  }
  return Status::Ok();
}

Status ExpertEngine::ReleaseGroup(const BlockRuntime& /*b*/, int32_t index, cudaStream_t compute) {
  if (index != 1 || !copies_grouped_) return Status::Ok();
  for (Copy& c : copies_) {
    BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
    free_recorded_[c.slot] = true;
    c.used = false;
    if (c.expert >= 0) copy_of_[c.expert] = -1;
  }
  copies_grouped_ = false;
  return Status::Ok();
}

Result<bool> ExpertEngine::Acquire(const BlockRuntime& b, int32_t expert, cudaStream_t compute, at::Tensor* views) {
  if (expert < 0 || expert >= num_experts_ || copy_of_[expert] < 0) return false;
  const size_t i = static_cast<size_t>(copy_of_[expert]);
  // (Copies are issued in order ahead of the kernel, which acquires them in that order.)
  if (issued_ <= i) return MakeError(ErrorCode::kInternal, b.name + ": expert copy not issued in order");
  const Copy& c = copies_[i];
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaStreamWaitEvent(compute, ready_[c.slot].get(), 0), "waiting for an expert copy"));
  const Expert& ex = layers_[b.index].experts[static_cast<size_t>(expert)];
  uint8_t* base = ring_ + static_cast<uint64_t>(c.slot) * slot_bytes_;
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  for (int m = 0; m < 3; ++m) {
    const WeightRuntime& w = *ex.m[m].w;
    views[m] = at::from_blob(base + ex.m[m].slot_offset, w.stored_shape(), dev.dtype(ScalarOf(w.stored_dtype())));
  }
  return true;
}

Status ExpertEngine::Release(const BlockRuntime& b, int32_t expert, cudaStream_t compute) {
  if (expert < 0 || expert >= num_experts_ || copy_of_[expert] < 0) return Status::Ok();
  const size_t i = static_cast<size_t>(copy_of_[expert]);
  const Copy& c = copies_[i];
  BIGPLAN_RETURN_IF_ERROR(Cuda(cudaEventRecord(free_[c.slot].get(), compute), "cudaEventRecord"));
  free_recorded_[c.slot] = true;
  copy_of_[expert] = -1;
  copies_[i].used = false;  // released
  return IssueCopies(b);
}

Result<at::Tensor> ExpertEngine::Finish(const BlockRuntime& b, cudaStream_t /*compute*/, at::ScalarType dtype) {
  if (!host_pending_) return at::Tensor();
  host_pending_ = false;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return host_done_; });
  const double waited = MicrosSince(t0);
  stats_.host_wait_us += waited;
  if (!host_status_.ok()) return WithContext(host_status_.take_error(), b.name + ": host experts");
  if (recording_) {
    std::lock_guard<std::mutex> events_lock(events_mu_);
    events_.push_back(Event{"host experts " + b.name, "host experts", host_start_,
                            std::chrono::duration<double, std::micro>(host_end_ - host_start_).count(),
                            {{"experts", std::to_string(host_experts_.size())},
                             {"tokens", std::to_string(host_tokens_)}}});
    events_.push_back(Event{"combine " + b.name, "experts", t0, waited, {}});
  }
  const auto dev = at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  return at::from_blob(y_host_.data(), {static_cast<int64_t>(host_tokens_), hidden_}, dev.dtype(at::kFloat)).to(dtype);
}

std::vector<ExpertEngine::Event> ExpertEngine::TakeEvents() {
  std::lock_guard<std::mutex> lock(events_mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

}  // namespace bigplan::executor_internal
