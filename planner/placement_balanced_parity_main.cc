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
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "planner/budget.h"
#include "planner/hf_import.h"
#include "planner/placement.h"
#include "planner/placement_balanced.h"

namespace {

using bigplan::Result;

int Run(const std::string& cases_path, const std::string& root) {
  bigplan::RegisterBalancedStrategies();
  std::ifstream in(cases_path);
  if (!in) {
    std::fprintf(stderr, "cannot open %s\n", cases_path.c_str());
    return 2;
  }
  nlohmann::json cases;
  try {
    cases = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "%s: %s\n", cases_path.c_str(), e.what());
    return 2;
  }
  std::map<std::string, bigplan::ModelDescription> models;
  int failures = 0, count = 0;
  for (const nlohmann::json& c : cases.at("cases")) {
    ++count;
    const std::string model_dir = c.at("model").get<std::string>();
    if (!models.count(model_dir)) {
      Result<bigplan::ModelDescription> m = bigplan::ImportExample(root + "/" + model_dir);
      if (!m.ok()) {
        std::fprintf(stderr, "%s: %s\n", model_dir.c_str(), m.error().ToString().c_str());
        return 2;
      }
      models.emplace(model_dir, std::move(m).value());
    }
    const bigplan::ModelDescription& model = models.at(model_dir);
    const std::string strategy = c.at("strategy").get<std::string>();
    Result<bigplan::MemoryBudget> budget = bigplan::MemoryBudgetFromJson(c.at("max_memory"));
    Result<bigplan::MemoryBudget> balanced = bigplan::MemoryBudgetFromJson(c.at("balanced_max_memory"));
    Result<bigplan::DType> dtype = bigplan::ParseExecDType(c.at("dtype").get<std::string>());
    if (!budget.ok() || !balanced.ok() || !dtype.ok()) {
      std::fprintf(stderr, "case %d: bad budget or dtype\n", count);
      return 2;
    }
    bigplan::PlacementRequest req;
    req.model = &model;
    req.budget = *budget;
    req.exec_dtype = *dtype;
    req.run = bigplan::RunShape{1, 128};
    req.options.enforce_budget = false;
    const std::string label = model_dir + " " + c.at("dtype").get<std::string>() + " " + strategy + " " +
                              budget->ToString();
    const bigplan::MemoryBudget ours_budget =
        bigplan::BalancedMaxMemory(model, *budget, *dtype, strategy == bigplan::kBalancedLowZeroStrategy).budget;
    std::string diff;
    if (!(ours_budget == *balanced)) {
      diff += "\n    max_memory: ours " + ours_budget.ToString() + " (" + bigplan::MemoryBudgetToJson(ours_budget).dump() +
              "), accelerate " + c.at("balanced_max_memory").dump();
    }
    Result<bigplan::Placement> ours = bigplan::PlaceModel(strategy, req);
    Result<std::vector<bigplan::BlockPlacement>> theirs =
        bigplan::DeviceMapToPlacement(model, c.at("accelerate_device_map"), *budget);
    if (!ours.ok() || !theirs.ok()) {
      std::printf("FAIL %s: %s\n", label.c_str(),
                  (!ours.ok() ? ours.error().ToString() : theirs.error().ToString()).c_str());
      ++failures;
      continue;
    }
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      if (ours->blocks[i] == (*theirs)[i]) continue;
      diff += "\n    " + model.blocks[i].name + ": ours " + std::to_string(ours->blocks[i].device) + "/" +
              bigplan::TierName(ours->blocks[i].tier) + ", accelerate " + std::to_string((*theirs)[i].device) + "/" +
              bigplan::TierName((*theirs)[i].tier);
    }
    if (diff.empty()) {
      std::printf("ok   %s: %s\n", label.c_str(), c.at("accelerate_device_map").dump().c_str());
    } else {
      std::printf("FAIL %s:%s\n", label.c_str(), diff.c_str());
      ++failures;
    }
  }
  std::printf("%d of %d cases agree with Accelerate\n", count - failures, count);
  return failures == 0 && count > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASES.json [WORKSPACE_ROOT]\n", argv[0]);
    return 2;
  }
  return Run(argv[1], argc > 2 ? argv[2] : ".");
}
