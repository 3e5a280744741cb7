#include "planner/parity_util.h"

#include <cstdio>
#include <fstream>
#include <map>
#include <vector>

#include "planner/hf_import.h"

namespace bigplan {
namespace {

int Run(const std::string& cases_path, const std::string& root, const ParityCaseFn& check_case) {
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
  std::map<std::string, ModelDescription> models;
  int failures = 0, count = 0;
  for (const nlohmann::json& c : cases.at("cases")) {
    ++count;
    const std::string model_dir = c.at("model").get<std::string>();
    if (!models.count(model_dir)) {
      Result<ModelDescription> m = ImportExample(root + "/" + model_dir);
      if (!m.ok()) {
        std::fprintf(stderr, "%s: %s\n", model_dir.c_str(), m.error().ToString().c_str());
        return 2;
      }
      models.emplace(model_dir, std::move(m).value());
    }
    const ModelDescription& model = models.at(model_dir);
    Result<MemoryBudget> budget = MemoryBudgetFromJson(c.at("max_memory"));
    Result<DType> dtype = ParseExecDType(c.at("dtype").get<std::string>());
    std::optional<ParityCheck> check;
    if (budget.ok() && dtype.ok()) check = check_case(c, model, *budget, *dtype);
    if (!check) {
      std::fprintf(stderr, "case %d: bad budget or dtype\n", count);
      return 2;
    }
    const PlacementRequest req = ParityRequest(model, *budget, *dtype);
    const std::string label =
        model_dir + " " + c.at("dtype").get<std::string>() + " " + check->label + budget->ToString();
    std::string diff = check->diff;
    Result<Placement> ours = PlaceModel(check->strategy, req);
    Result<std::vector<BlockPlacement>> theirs = DeviceMapToPlacement(model, c.at("accelerate_device_map"), *budget);
    if (!ours.ok() || !theirs.ok()) {
      std::printf("FAIL %s: %s\n", label.c_str(),
                  (!ours.ok() ? ours.error().ToString() : theirs.error().ToString()).c_str());
      ++failures;
      continue;
    }
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      if (ours->blocks[i] == (*theirs)[i]) continue;
      diff += "\n    " + model.blocks[i].name + ": ours " + std::to_string(ours->blocks[i].device) + "/" +
              TierName(ours->blocks[i].tier) + ", accelerate " + std::to_string((*theirs)[i].device) + "/" +
              TierName((*theirs)[i].tier);
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

PlacementRequest ParityRequest(const ModelDescription& model, const MemoryBudget& budget, DType exec_dtype) {
  PlacementRequest req;
  req.model = &model;
  req.budget = budget;
  req.exec_dtype = exec_dtype;
  req.run = RunShape{1, 128};
  req.options.enforce_budget = false;
  return req;
}

int ParityMain(int argc, char** argv, const ParityCaseFn& check_case) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASES.json [WORKSPACE_ROOT]\n", argv[0]);
    return 2;
  }
  return Run(argv[1], argc > 2 ? argv[2] : ".", check_case);
}

}  // namespace bigplan
