// The human-readable report `plan` prints for each plan it makes: the model line, budget and run shape, the
// placement (consecutive decoder layers with the same device and tier grouped into ranges), the memory plan
// (arenas, usage against each budget) and the predicted time per forward pass against the copy floor.
#pragma once

#include <ostream>

#include "planner/planner.h"

namespace bigplan {

// Writes the report for `result`, made from `request`.
void WritePlanReport(std::ostream& out, const PlanResult& result, const PlanRequest& request);

}  // namespace bigplan
