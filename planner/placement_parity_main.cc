// Compares the "sequential" placement with device maps Accelerate computed (planner/testdata/
// make_accelerate_fixtures.py writes them): for each case, every block must land where Accelerate put it.
//
//   placement_parity_main CASES.json [WORKSPACE_ROOT]
//
// CASES.json: {"cases": [{"model": "planner/examples/llama-2-7b", "dtype": "F16", "max_memory": {"0": 123, "cpu": 456},
//                         "accelerate_device_map": {"model.embed_tokens": 0, ...}}, ...]}
// Model paths are relative to WORKSPACE_ROOT (default: the current directory). Exit status 0 when all cases agree.
#include "planner/parity_util.h"

int main(int argc, char** argv) {
  return bigplan::ParityMain(argc, argv,
                             [](const nlohmann::json&, const bigplan::ModelDescription&, const bigplan::MemoryBudget&,
                                bigplan::DType) { return bigplan::ParityCheck{"sequential", "", ""}; });
}
