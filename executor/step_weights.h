// A block's weights as the kernels see them during its step (internal to executor/): resident weights as fixed
// views; whole streamed units as views of where the stream engine put them for this step; chunked weights through
// the engine's AcquireChunk / ReleaseChunk. Slots were bound at load (BlockRuntime::slots): a lookup is an index.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <array>
#include <vector>

#include "executor/expert_engine.h"
#include "executor/host_products.h"
#include "executor/kernels.h"
#include "executor/model_state.h"
#include "executor/stream_engine.h"

namespace bigplan::executor_internal {

at::ScalarType ToScalarType(schema::DType dtype);

class StepWeights : public BlockWeights {
 public:
  // Resident and in-place (Cpu tier on the CPU) weights get their views here; kDevice on a LibTorch failure.
  // `host`: the executor's host compute (nullptr when the plan has no host units).
  // `experts`: the routed experts' engine (nullptr when the plan has none or in CPU mode).
  static Result<StepWeights> Make(StreamEngine* engine, const ModelState& state, uint32_t block,
                                  HostProducts* host = nullptr, ExpertEngine* experts = nullptr);

  // After StreamEngine::BeginStep of the block's step: views of its whole streamed units for this step.
  Status Prepare();

  at::Tensor Find(arch::Slot slot) const override;
  int NumChunks(arch::Slot slot) const override;
  std::vector<int64_t> Shape(arch::Slot slot) const override;
  WeightQuant Quant(arch::Slot slot) const override;
  std::string Name(arch::Slot slot) const override;
  Result<at::Tensor> AcquireChunk(arch::Slot slot, int i, int64_t* row_begin) const override;
  Status ReleaseChunk(arch::Slot slot, int i) const override;
  int64_t HostRowBegin(arch::Slot slot) const override;
  Status HostBegin(const at::Tensor& x) const override;
  Result<at::Tensor> HostProduct(arch::Slot slot) const override;
  Result<ExpertWork> BeginExperts(const at::Tensor& x, const at::Tensor& topi, const at::Tensor& topw,
                                  int64_t num_experts, bool written) const override;
  HostChoices ChoicesForHost() const override;
  Status AcquireGroup(int32_t index) const override;
  Status ReleaseGroup(int32_t index) const override;
  Status AcquireExpert(int32_t expert) const override;
  Status AcquireExpertDown(int32_t expert) const override;
  Status ReleaseExpert(int32_t expert) const override;
  bool ExpertMoves(int32_t expert) const override;
  Status FinishExperts(at::Tensor* out) const override;
  const ResidentExpertTable* ResidentExperts() const override {
    return resident_experts_.gate_up.empty() ? nullptr : &resident_experts_;
  }

 private:
  struct Entry {
    const WeightRuntime* weight = nullptr;  // null: the block has nothing in this slot
    at::Tensor view;  // resident / in place, or this step's whole streamed unit
    at::Tensor perm;  // act-order GPTQ: WeightQuant::perm on the compute device
    // A split row-quantized expert's down columns on the GPU (ExpertEngine::Acquire): their count and group while
    // acquired (0: the weight's own).
    int64_t split_cols = 0, split_group = 0;
  };
  const Entry& At(arch::Slot slot) const;
  StreamEngine* engine_ = nullptr;
  HostProducts* host_ = nullptr;
  ExpertEngine* experts_ = nullptr;  // set only for a block with routed experts
  const BlockRuntime* block_ = nullptr;
  const StreamRuntime* stream_ = nullptr;
  at::TensorOptions options_;
  // By slot (arch::SlotCount of the model); a routed expert's views are set between AcquireExpert and ReleaseExpert.
  mutable std::vector<Entry> entries_;
  ResidentExpertTable resident_experts_;  // filled at Make when the block's experts all rest on its GPU
  void FindResidentExperts(const ModelState& state);
};

}  // namespace bigplan::executor_internal
