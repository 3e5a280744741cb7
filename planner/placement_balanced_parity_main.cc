// Compares the "balanced" / "balanced_low_0" placements with the device maps Accelerate computed for
// device_map="balanced" / "balanced_low_0" (planner/testdata/make_balanced_fixtures.py writes them): for each case,
// the rebalanced max_memory must equal Accelerate's get_balanced_memory, and every block must land where
// Accelerate put it.
//
//   placement_balanced_parity_main CASES.json [WORKSPACE_ROOT]
//
// CASES.json: {"cases": [{"model": "planner/examples/llama-2-7b", "dtype": "F16", "strategy": "balanced",
//                         "max_memory": {"0": 123, "1": 123, "cpu": 456}, "balanced_max_memory": {...},
//                         "accelerate_device_map": {"model.embed_tokens": 0, ...}}, ...]}
// Model paths are relative to WORKSPACE_ROOT (default: the current directory). Exit status 0 when all cases agree.
#include <optional>
#include <string>

#include "planner/parity_util.h"
#include "planner/placement_balanced.h"

namespace bigplan {
namespace {

// The rebalanced max_memory must be Accelerate's get_balanced_memory before the blocks are compared.
std::optional<ParityCheck> CheckBalanced(const nlohmann::json& c, const ModelDescription& model,
                                         const MemoryBudget& budget, DType dtype) {
  const std::string strategy = c.at("strategy").get<std::string>();
  Result<MemoryBudget> balanced = MemoryBudgetFromJson(c.at("balanced_max_memory"));
  if (!balanced.ok()) return std::nullopt;
  ParityCheck check{strategy, strategy + " ", ""};
  const MemoryBudget ours = BalancedMaxMemory(model, budget, dtype, strategy == kBalancedLowZeroStrategy).budget;
  if (!(ours == *balanced)) {
    check.diff = "\n    max_memory: ours " + ours.ToString() + " (" + MemoryBudgetToJson(ours).dump() +
                 "), accelerate " + c.at("balanced_max_memory").dump();
  }
  return check;
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  bigplan::RegisterBalancedStrategies();
  return bigplan::ParityMain(argc, argv, bigplan::CheckBalanced);
}
