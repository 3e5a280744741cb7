// Built-in placement strategies (internal to planner/placement*).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "planner/placement.h"

namespace bigplan::placement_internal {

std::unique_ptr<PlacementStrategy> MakeSequentialStrategy();
std::unique_ptr<PlacementStrategy> MakeAutoStrategy();
std::unique_ptr<PlacementStrategy> MakeExplicitStrategy();

// Checks what every strategy needs: a valid model, a valid run shape, a floating execution dtype (bf16, fp16,
// fp32), and at least one GPU or a cpu budget.
Status CheckRequest(const PlacementRequest& request);

// The compute device for offloaded ("cpu"/"disk") blocks of an HF-style map: the GPU of the first block placed on
// a GPU, in execution order; -1 (CPU compute) when no block is on a GPU.
int32_t MainDevice(const std::vector<BlockPlacement>& blocks);

// Module names without parameters that Hugging Face device maps may carry for the model's family (the registry's
// parameterless_modules, e.g. "model.rotary_emb", "transformer.drop"); the explicit strategy accepts and ignores them.
bool IsParameterlessModule(const ModelDescription& model, const std::string& name);

}  // namespace bigplan::placement_internal
