// Parity of the "balanced" and "balanced_low_0" strategies with Accelerate 1.15's device_map="balanced" /
// "balanced_low_0" (get_balanced_memory, then infer_auto_device_map), against the committed fixtures in
// planner/testdata/accelerate_balanced_maps.json (planner/testdata/make_balanced_fixtures.py made them; the sh_test
// placement_balanced_accelerate_live_test recomputes them with the venv's Accelerate).
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "planner/budget.h"
#include "planner/hf_import.h"
#include "planner/parity_util.h"
#include "planner/placement.h"
#include "planner/placement_balanced.h"

namespace bigplan {
namespace {

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }

TEST(BalancedParityTest, MatchesAccelerate) {
  std::ifstream in(Root() + "planner/testdata/accelerate_balanced_maps.json");
  ASSERT_TRUE(in);
  nlohmann::json fixtures = nlohmann::json::parse(in);
  std::map<std::string, ModelDescription> models;
  std::map<std::string, std::set<size_t>> gpu_counts;  // strategy -> GPU counts covered
  std::set<std::string> model_names;
  size_t cases = 0, offloaded = 0, rebalanced = 0, low_zero_spared = 0;
  for (const nlohmann::json& c : fixtures.at("cases")) {
    const std::string dir = c.at("model").get<std::string>();
    if (!models.count(dir)) {
      Result<ModelDescription> m = ImportExample(Root() + dir);
      ASSERT_TRUE(m.ok()) << m.error().ToString();
      models.emplace(dir, std::move(m).value());
    }
    model_names.insert(dir);
    const ModelDescription& model = models.at(dir);
    const std::string strategy = c.at("strategy").get<std::string>();
    Result<MemoryBudget> budget = MemoryBudgetFromJson(c.at("max_memory"));
    ASSERT_TRUE(budget.ok()) << budget.error().ToString();
    Result<MemoryBudget> accelerate_budget = MemoryBudgetFromJson(c.at("balanced_max_memory"));
    ASSERT_TRUE(accelerate_budget.ok()) << accelerate_budget.error().ToString();
    Result<DType> dtype = ParseExecDType(c.at("dtype").get<std::string>());
    ASSERT_TRUE(dtype.ok());
    const std::string label = dir + " " + strategy + " " + budget->ToString();

    // get_balanced_memory, to the byte.
    const BalancedMemory balanced = BalancedMaxMemory(model, *budget, *dtype, strategy == kBalancedLowZeroStrategy);
    EXPECT_EQ(balanced.budget, *accelerate_budget)
        << label << ": ours " << MemoryBudgetToJson(balanced.budget).dump() << ", accelerate "
        << c.at("balanced_max_memory").dump();
    rebalanced += !(balanced.budget == *budget);

    const PlacementRequest req = ParityRequest(model, *budget, *dtype);
    Result<Placement> ours = PlaceModel(strategy, req);
    ASSERT_TRUE(ours.ok()) << label << ": " << ours.error().ToString();
    Result<std::vector<BlockPlacement>> theirs = DeviceMapToPlacement(model, c.at("accelerate_device_map"), *budget);
    ASSERT_TRUE(theirs.ok()) << label << ": " << theirs.error().ToString();
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      EXPECT_EQ(ours->blocks[i], (*theirs)[i])
          << label << ": block " << model.blocks[i].name << ": ours " << ours->blocks[i].device << "/"
          << TierName(ours->blocks[i].tier) << ", accelerate " << (*theirs)[i].device << "/"
          << TierName((*theirs)[i].tier);
    }
    ++cases;
    gpu_counts[strategy].insert(budget->gpus.size());
    bool off = false, on_first = false;
    for (const BlockPlacement& p : ours->blocks) {
      off = off || p.tier != Tier::kGpu;
      on_first = on_first || (p.tier == Tier::kGpu && p.device == budget->gpus.begin()->first);
    }
    offloaded += off;
    low_zero_spared += strategy == kBalancedLowZeroStrategy && !on_first;
  }
  // At least 3 models, both strategies on 2, 3 and 4 GPUs, with offloading, rebalanced budgets, and
  // balanced_low_0 leaving GPU 0 empty.
  EXPECT_GE(model_names.size(), 3u);
  for (const char* s : {kBalancedStrategy, kBalancedLowZeroStrategy}) {
    EXPECT_EQ(gpu_counts[s], (std::set<size_t>{2, 3, 4})) << s;
  }
  EXPECT_GE(cases, 54u);
  EXPECT_GE(offloaded, 10u);
  EXPECT_GE(rebalanced, 20u);
  EXPECT_GE(low_zero_spared, 5u);
}

}  // namespace
}  // namespace bigplan
