// The "balanced" / "balanced_low_0" strategies: Accelerate 1.15's get_balanced_memory (accelerate/utils/modeling.py)
// followed by the "sequential" strategy (its infer_auto_device_map replay) on the rebalanced budget.
#include "planner/placement_balanced.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "arch/registry.h"

namespace bigplan {
namespace {

struct SizedTensor {
  std::string name;
  uint64_t bytes = 0;
};

// compute_module_sizes(model, dtype=exec) per tensor: floating tensors at min(exec, own) dtype size (params are
// instantiated in the exec dtype, so that is the exec size for them), others at their own size.
uint64_t AccelerateBytes(const TensorSpec& t, DType exec, bool param) {
  if (!IsFloatingPoint(t.dtype)) return t.bytes();
  const uint64_t elem = param ? DTypeBytes(exec) : std::min(DTypeBytes(exec), DTypeBytes(t.dtype));
  return static_cast<uint64_t>(t.numel()) * elem;
}

// Every tensor Accelerate sees in the reference model: named_parameters() (tied aliases dropped), then the buffers.
std::vector<SizedTensor> AccelerateTensors(const ModelDescription& model, DType exec) {
  std::vector<SizedTensor> out;
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& t : b.params) out.push_back({t.name, AccelerateBytes(t, exec, true)});
  }
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& t : b.runtime_buffers) out.push_back({t.name, AccelerateBytes(t, exec, false)});
  }
  // Buffers of parameter-free modules (the registry's accelerate_buffers: e.g. the Llama family's and Phi-3's
  // model.rotary_emb frequencies).
  if (const arch::FamilyInfo* family = arch::FindFamily(model.architecture)) {
    for (const arch::ModelBufferRule& r : family->accelerate_buffers) {
      if (r.needs_rotary && model.config.rotary_dim == 0) continue;
      const TensorSpec t{r.name, {arch::EvalDim(r.dim, model.config, arch::TensorFeatures{})}, r.dtype};
      out.push_back({t.name, AccelerateBytes(t, exec, false)});
    }
  }
  return out;
}

std::string Parent(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? std::string() : name.substr(0, dot);
}

// int(sum(sizes of the leaf modules) / count): Accelerate drops the tensors (the leaves of compute_module_sizes)
// and averages the modules that are then leaves, i.e. the modules holding tensors but no module holding tensors.
uint64_t MeanLeafModuleBytes(const std::vector<SizedTensor>& tensors) {
  std::map<std::string, uint64_t> modules;
  for (const SizedTensor& t : tensors) {
    for (std::string m = Parent(t.name); !m.empty(); m = Parent(m)) modules[m] += t.bytes;
  }
  std::set<std::string> parents;
  for (const auto& [name, bytes] : modules) {
    if (name.find('.') != std::string::npos) parents.insert(Parent(name));
  }
  uint64_t sum = 0, count = 0;
  for (const auto& [name, bytes] : modules) {
    if (parents.count(name)) continue;
    sum += bytes;
    ++count;
  }
  if (count == 0) return 0;
  return static_cast<uint64_t>(static_cast<double>(sum) / static_cast<double>(count));
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

class BalancedStrategy : public PlacementStrategy {
 public:
  explicit BalancedStrategy(bool low_zero) : low_zero_(low_zero) {}
  std::string name() const override { return low_zero_ ? kBalancedLowZeroStrategy : kBalancedStrategy; }
  std::string description() const override {
    return low_zero_ ? "Accelerate's device_map=\"balanced_low_0\": as balanced, keeping GPU 0 as empty as possible"
                     : "Accelerate's device_map=\"balanced\": even per-GPU budgets, then sequential fill";
  }
  Result<Placement> Place(const PlacementRequest& request) const override {
    if (request.model == nullptr) return MakeError(ErrorCode::kInvalidArgument, "placement: no model");
    PlacementRequest balanced = request;
    balanced.budget = BalancedMaxMemory(*request.model, request.budget, request.exec_dtype, low_zero_).budget;
    balanced.options.enforce_budget = false;
    Result<Placement> sequential = PlaceModel("sequential", balanced);
    if (!sequential.ok()) {
      return WithContext(sequential.take_error(), "placement \"" + name() + "\" of " + request.model->name);
    }
    // Accounted and checked against the caller's budget, not the rebalanced one.
    return FinishPlacement(request, name(), std::move(sequential->blocks));
  }

 private:
  bool low_zero_;
};

[[maybe_unused]] const bool kRegisteredAtStartup = (RegisterBalancedStrategies(), true);

}  // namespace

void RegisterBalancedStrategies() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (bool low_zero : {false, true}) {
      const std::string name = low_zero ? kBalancedLowZeroStrategy : kBalancedStrategy;
      // An error only means the name is taken (by an earlier registration): keep that one.
      Status s = RegisterPlacementStrategy(name, [low_zero] { return std::make_unique<BalancedStrategy>(low_zero); });
      (void)s.ok();
    }
  });
}

BalancedMemory BalancedMaxMemory(const ModelDescription& model, const MemoryBudget& budget, DType exec_dtype,
                                 bool low_zero) {
  BalancedMemory out;
  out.budget = budget;
  std::vector<int> gpus;  // positive budgets, by ordinal
  for (const auto& [ordinal, bytes] : budget.gpus) {
    if (bytes > 0) gpus.push_back(ordinal);
  }
  out.num_gpus = static_cast<uint32_t>(gpus.size());
  if (gpus.empty()) return out;
  if (gpus.size() == 1) low_zero = false;

  const std::vector<SizedTensor> tensors = AccelerateTensors(model, exec_dtype);
  for (const SizedTensor& t : tensors) out.total_bytes += t.bytes;
  for (const BlockDesc& b : model.blocks) {
    if (b.kind != BlockKind::kDecoderLayer) continue;
    for (const TensorSpec& t : b.params) out.no_split_bytes += AccelerateBytes(t, exec_dtype, true);
    for (const TensorSpec& t : b.runtime_buffers) out.no_split_bytes += AccelerateBytes(t, exec_dtype, false);
    break;
  }
  out.mean_leaf_bytes = MeanLeafModuleBytes(tensors);
  const uint64_t extra =
      static_cast<uint64_t>(1.25 * static_cast<double>(std::max(out.no_split_bytes, out.mean_leaf_bytes)));
  out.per_gpu_bytes = out.total_bytes / (low_zero ? gpus.size() - 1 : gpus.size()) + extra;

  // Every GPU but the last keeps min(per_gpu, its budget); with low_zero the first one is settled below.
  for (size_t i = 0; i + 1 < gpus.size(); ++i) {
    if (low_zero && i == 0) continue;
    uint64_t& b = out.budget.gpus[gpus[i]];
    b = std::min(b, out.per_gpu_bytes);
  }
  if (low_zero) {
    uint64_t others = 0;
    for (size_t i = 1; i < gpus.size(); ++i) others = SaturatingAdd(others, out.budget.gpus[gpus[i]]);
    uint64_t& first = out.budget.gpus[gpus[0]];
    first = std::min(first, out.total_bytes > others ? out.total_bytes - others : 0);
  }
  return out;
}

std::vector<uint64_t> BoundaryActivationBytes(const ModelDescription& model, const std::vector<BlockPlacement>& blocks,
                                              const RunShape& run, DType exec_dtype) {
  std::vector<uint64_t> out(model.blocks.size(), 0);
  const uint64_t hidden_state = run.tokens() * model.config.hidden_size * DTypeBytes(exec_dtype);
  for (size_t i = 1; i < out.size() && i < blocks.size(); ++i) {
    if (blocks[i].device != blocks[i - 1].device) out[i] = hidden_state;
  }
  return out;
}

}  // namespace bigplan
