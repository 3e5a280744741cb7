// The driver shared by the Accelerate parity mains (placement_parity_main, placement_balanced_parity_main): reads a
// CASES.json of {"cases": [{"model": DIR, "dtype": ..., "max_memory": {...}, "accelerate_device_map": {...}, ...}]},
// places each case's model with one of our strategies and compares every block with Accelerate's device map.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "planner/budget.h"
#include "planner/model_desc.h"
#include "planner/placement.h"

namespace bigplan {

// The request every parity case is placed with: batch 1, 128 tokens, and no check against bigplan's full accounting
// (KV cache, activations, staging and reserve are not in Accelerate's weights-only budget).
PlacementRequest ParityRequest(const ModelDescription& model, const MemoryBudget& budget, DType exec_dtype);

// What a parity main checks in one case beyond the block-by-block comparison.
struct ParityCheck {
  std::string strategy;  // the placement strategy to compare with Accelerate
  std::string label;     // words put in the case's label after the dtype (e.g. "balanced "); may be empty
  std::string diff;      // differences found before placing ("\n    what: ours ..., accelerate ..."); empty: none
};

// Called for each case with its JSON, model, "max_memory" budget and dtype; std::nullopt when the case is malformed
// (the run stops with exit status 2, "case N: bad budget or dtype").
using ParityCaseFn = std::function<std::optional<ParityCheck>(const nlohmann::json& c, const ModelDescription& model,
                                                              const MemoryBudget& budget, DType dtype)>;

// `main` of a parity binary: "PROGRAM CASES.json [WORKSPACE_ROOT]" (model paths are relative to WORKSPACE_ROOT,
// default the current directory). Prints "ok   LABEL: MAP" or "FAIL LABEL: ..." per case and a summary; returns
// 0 when every case agrees, 1 when one does not (or there are none), 2 for bad input.
int ParityMain(int argc, char** argv, const ParityCaseFn& check_case);

}  // namespace bigplan
