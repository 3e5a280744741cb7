#include "executor/step_weights.h"

#include <exception>

namespace bigplan::executor_internal {
namespace {

std::vector<int64_t> RowsShape(const WeightRuntime& w, int64_t rows) {
  std::vector<int64_t> shape = w.stored_shape();
  if (shape.empty()) return shape;
  shape[0] = rows;
  return shape;
}

}  // namespace

Result<StepWeights> StepWeights::Make(StreamEngine* engine, const ModelState& state, uint32_t block,
                                      HostProducts* host, ExpertEngine* experts) {
  StepWeights sw;
  sw.engine_ = engine;
  sw.host_ = host;
  sw.block_ = &state.blocks[block];
  if (experts != nullptr && experts->Routes(*sw.block_)) sw.experts_ = experts;
  const BlockRuntime& b = *sw.block_;
  sw.stream_ = b.stream >= 0 ? &state.streams[b.stream] : nullptr;
  sw.options_ = at::TensorOptions().dtype(ToScalarType(state.plan->plan().exec_dtype()));
  sw.options_ = b.device < 0 ? sw.options_.device(at::kCPU) : sw.options_.device(at::kCUDA, b.device);
  if (b.remote) return sw;  // another rank computes it
  sw.entries_.resize(b.slots.size());
  try {
    for (size_t s = 0; s < b.slots.size(); ++s) {
      if (b.slots[s] < 0) continue;
      const WeightRuntime& w = b.weights[b.slots[s]];
      Entry& e = sw.entries_[s];
      e.weight = &w;
      if (!w.perm.empty()) {
        const at::Tensor host = at::from_blob(const_cast<int32_t*>(w.perm.data()),
                                              {static_cast<int64_t>(w.perm.size())}, at::TensorOptions().dtype(at::kInt));
        e.perm = host.to(sw.options_.device(), at::kLong);
      }
      if (w.routed && sw.experts_ != nullptr) continue;  // views set while its expert is acquired
      if (w.units.empty()) {
        // Resident, or a Cpu-tier weight of a block computed on the CPU (used where it rests).
        e.view = at::from_blob(w.home, w.stored_shape(), sw.options_.dtype(ToScalarType(w.stored_dtype())));
      }
    }
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, b.name + ": making weight views: " + ex.what());
  }
  sw.FindResidentExperts(state);
  return sw;
}

void StepWeights::FindResidentExperts(const ModelState& state) {
  const BlockRuntime& b = *block_;
  if (b.device < 0 || experts_ != nullptr) return;
  const schema::DType exec = state.plan->plan().exec_dtype();
  ResidentExpertTable t;
  for (uint32_t e = 0;; ++e) {
    const WeightRuntime* m[3] = {};
    const arch::Slot roles[3] = {arch::Slot::kExpertGate, arch::Slot::kExpertUp, arch::Slot::kExpertDown};
    for (int k = 0; k < 3; ++k) {
      const size_t slot = static_cast<size_t>(arch::ExpertSlot(roles[k], e));
      if (slot < b.slots.size() && b.slots[slot] >= 0) m[k] = &b.weights[b.slots[slot]];
    }
    if (m[0] == nullptr && m[1] == nullptr && m[2] == nullptr) break;  // past the last expert
    for (const WeightRuntime* w : m) {
      if (w == nullptr || w->routed || !w->units.empty() || w->chunked || w->quantized() || w->home == nullptr ||
          w->tier != schema::Tier::Gpu || w->dtype != exec || w->shape.size() != 2) {
        return;
      }
    }
    const int64_t inter = m[0]->shape[0], hidden = m[0]->shape[1];
    if (m[1]->shape != m[0]->shape || m[2]->shape[0] != hidden || m[2]->shape[1] != inter ||
        m[0]->home + m[0]->bytes != m[1]->home || (t.inter != 0 && (t.inter != inter || t.hidden != hidden))) {
      return;
    }
    t.inter = inter;
    t.hidden = hidden;
    t.gate_up.push_back(reinterpret_cast<uint64_t>(m[0]->home));
    t.down.push_back(reinterpret_cast<uint64_t>(m[2]->home));
  }
  // Equal distances between consecutive experts (in either direction the products would read them wrong: only
  // increasing addresses count).
  auto stride = [](const std::vector<uint64_t>& a) -> int64_t {
    if (a.size() < 2 || a[1] <= a[0]) return 0;
    const uint64_t d = a[1] - a[0];
    for (size_t i = 2; i < a.size(); ++i) {
      if (a[i] <= a[i - 1] || a[i] - a[i - 1] != d) return 0;
    }
    return static_cast<int64_t>(d);
  };
  t.gate_up_stride = stride(t.gate_up);
  t.down_stride = stride(t.down);
  resident_experts_ = std::move(t);
}

Status StepWeights::Prepare() {
  if (host_ != nullptr) host_->Reset();
  if (experts_ != nullptr) BIGPLAN_RETURN_IF_ERROR(experts_->StepStarted(*block_, engine_->compute_stream(block_->device)));
  try {
    for (Entry& e : entries_) {
      if (e.weight == nullptr) continue;
      const WeightRuntime& w = *e.weight;
      if (w.units.empty() || w.chunked) continue;
      BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, engine_->UnitData(block_->stream, w.units[0]));
      e.view = at::from_blob(const_cast<uint8_t*>(data), w.stored_shape(), options_.dtype(ToScalarType(w.stored_dtype())));
    }
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, block_->name + ": making weight views: " + ex.what());
  }
  return Status::Ok();
}

const StepWeights::Entry& StepWeights::At(arch::Slot slot) const {
  static const Entry kNone;
  const size_t s = static_cast<size_t>(slot);
  return s < entries_.size() ? entries_[s] : kNone;
}

at::Tensor StepWeights::Find(arch::Slot slot) const {
  const Entry& e = At(slot);
  if (e.weight == nullptr || e.weight->chunked) return at::Tensor();
  return e.view;
}

int StepWeights::NumChunks(arch::Slot slot) const {
  const Entry& e = At(slot);
  if (e.weight == nullptr || !e.weight->chunked) return 0;
  return static_cast<int>(e.weight->units.size());
}

std::vector<int64_t> StepWeights::Shape(arch::Slot slot) const {
  const Entry& e = At(slot);
  return e.weight == nullptr ? std::vector<int64_t>{} : e.weight->shape;
}

WeightQuant StepWeights::Quant(arch::Slot slot) const {
  const Entry& e = At(slot);
  if (e.weight == nullptr || !e.weight->quantized() || e.weight->shape.size() != 2) return {};
  if (e.split_cols > 0) return WeightQuant{e.weight->format, e.split_group, e.split_cols, false, e.perm};
  return WeightQuant{e.weight->format, e.weight->group, e.weight->shape[1], e.weight->split, e.perm};
}

std::string StepWeights::Name(arch::Slot slot) const {
  const Entry& e = At(slot);
  return e.weight == nullptr ? BlockWeights::Name(slot) : e.weight->name;
}

Result<at::Tensor> StepWeights::AcquireChunk(arch::Slot slot, int i, int64_t* row_begin) const {
  const Entry& e = At(slot);
  if (e.weight == nullptr || !e.weight->chunked || i < 0 || i >= static_cast<int>(e.weight->units.size())) {
    return MakeError(ErrorCode::kInternal, block_->name + ": no chunk " + std::to_string(i) + " of " + Name(slot));
  }
  const WeightRuntime& w = *e.weight;
  const uint32_t unit = w.units[i];
  BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, engine_->AcquireChunk(block_->stream, unit));
  const UnitRuntime& un = stream_->units[unit];
  const int64_t begin = un.row_begin, end = un.row_end;
  *row_begin = begin;
  try {
    return at::from_blob(const_cast<uint8_t*>(data), RowsShape(w, end - begin),
                          options_.dtype(ToScalarType(w.stored_dtype())));
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, block_->name + ": a chunk view of " + w.name + ": " + ex.what());
  }
}

Status StepWeights::ReleaseChunk(arch::Slot slot, int i) const {
  const Entry& e = At(slot);
  if (e.weight == nullptr || !e.weight->chunked || i < 0 || i >= static_cast<int>(e.weight->units.size())) {
    return MakeError(ErrorCode::kInternal, block_->name + ": no chunk " + std::to_string(i) + " of " + Name(slot));
  }
  return engine_->ReleaseChunk(block_->stream, e.weight->units[i]);
}

int64_t StepWeights::HostRowBegin(arch::Slot slot) const {
  const Entry& e = At(slot);
  if (host_ == nullptr || e.weight == nullptr || e.weight->host_row_begin < 0 || !engine_->host_pass()) return INT64_MAX;
  return e.weight->host_row_begin;
}

Status StepWeights::HostBegin(const at::Tensor& x) const {
  if (host_ == nullptr) return BlockWeights::HostBegin(x);
  try {
    return host_->Begin(x, engine_->compute_stream(block_->device));
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, block_->name + ": host compute input: " + ex.what());
  }
}

Result<at::Tensor> StepWeights::HostProduct(arch::Slot slot) const {
  const Entry& e = At(slot);
  if (host_ == nullptr || e.weight == nullptr || e.weight->host_row_begin < 0) return BlockWeights::HostProduct(slot);
  const WeightRuntime& w = *e.weight;
  const double start = engine_->NowUs();
  Result<at::Tensor> y = MakeError(ErrorCode::kInternal, "unset");
  try {
    y = host_->Product(w, w.host_row_begin, engine_->compute_stream(block_->device));
  } catch (const std::exception& ex) {
    return MakeError(ErrorCode::kDevice, block_->name + ": host compute of " + w.name + ": " + ex.what());
  }
  if (!y.ok()) return WithContext(y.take_error(), block_->name);
  engine_->RecordHostProduct(block_->index, w.name + "[" + std::to_string(w.host_row_begin) + ":" +
                                                std::to_string(w.rows) + "]",
                             static_cast<uint64_t>(w.rows - w.host_row_begin) * w.row_bytes(), start, engine_->NowUs());
  return y;
}

Result<BlockWeights::ExpertWork> StepWeights::BeginExperts(const at::Tensor& x, const at::Tensor& topi,
                                                           const at::Tensor& topw, int64_t num_experts,
                                                           bool written) const {
  if (experts_ == nullptr) return BlockWeights::BeginExperts(x, topi, topw, num_experts, written);
  return experts_->Begin(*block_, x, topi, topw, engine_->compute_stream(block_->device), written);
}

BlockWeights::HostChoices StepWeights::ChoicesForHost() const {
  if (experts_ == nullptr) return {};
  return experts_->ChoicesForHost(1);
}

Status StepWeights::AcquireGroup(int32_t index) const {
  if (experts_ == nullptr) return Status::Ok();
  return experts_->AcquireGroup(*block_, index, engine_->compute_stream(block_->device));
}

Status StepWeights::ReleaseGroup(int32_t index) const {
  if (experts_ == nullptr) return Status::Ok();
  return experts_->ReleaseGroup(*block_, index, engine_->compute_stream(block_->device));
}

Status StepWeights::AcquireExpert(int32_t expert) const {
  if (experts_ == nullptr) return Status::Ok();
  at::Tensor views[3];
  ExpertEngine::SplitQuant down_quant;
  BIGPLAN_ASSIGN_OR_RETURN(
      bool copied, experts_->Acquire(*block_, expert, engine_->compute_stream(block_->device), views, &down_quant));
  if (!copied) return Status::Ok();
  const arch::Slot roles[3] = {arch::Slot::kExpertGate, arch::Slot::kExpertUp, arch::Slot::kExpertDown};
  for (int m = 0; m < 3; ++m) {
    const size_t s = static_cast<size_t>(arch::ExpertSlot(roles[m], static_cast<uint32_t>(expert)));
    if (s >= entries_.size()) continue;
    entries_[s].view = views[m];
    entries_[s].split_cols = m == 2 ? down_quant.cols : 0;
    entries_[s].split_group = m == 2 ? down_quant.group : 0;
  }
  return Status::Ok();
}

Status StepWeights::AcquireExpertDown(int32_t expert) const {
  if (experts_ == nullptr) return Status::Ok();
  return experts_->AcquireDown(*block_, expert, engine_->compute_stream(block_->device));
}

Status StepWeights::ReleaseExpert(int32_t expert) const {
  if (experts_ == nullptr) return Status::Ok();
  const arch::Slot roles[3] = {arch::Slot::kExpertGate, arch::Slot::kExpertUp, arch::Slot::kExpertDown};
  for (const arch::Slot role : roles) {
    const size_t s = static_cast<size_t>(arch::ExpertSlot(role, static_cast<uint32_t>(expert)));
    if (s < entries_.size() && entries_[s].weight != nullptr && entries_[s].weight->routed) {
      entries_[s].view = at::Tensor();
      entries_[s].split_cols = entries_[s].split_group = 0;
    }
  }
  return experts_->Release(*block_, expert, engine_->compute_stream(block_->device));
}

bool StepWeights::ExpertMoves(int32_t expert) const {
  return experts_ != nullptr && experts_->Moves(expert);
}

Status StepWeights::FinishExperts(at::Tensor* out) const {
  if (experts_ == nullptr) return Status::Ok();
  return experts_->Finish(*block_, engine_->compute_stream(block_->device), out);
}

}  // namespace bigplan::executor_internal
