// Parity of the "sequential" strategy with Accelerate 1.15's infer_auto_device_map, against the committed device
// maps in planner/testdata/accelerate_device_maps.json (planner/testdata/make_accelerate_fixtures.py made them; the
// sh_test placement_accelerate_live_test recomputes them with the venv's Accelerate).
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

namespace bigplan {
namespace {

std::string Root() { return std::string(std::getenv("TEST_SRCDIR")) + "/bigplan/"; }

TEST(PlacementParityTest, SequentialMatchesAccelerate) {
  std::ifstream in(Root() + "planner/testdata/accelerate_device_maps.json");
  ASSERT_TRUE(in);
  nlohmann::json fixtures = nlohmann::json::parse(in);
  std::map<std::string, ModelDescription> models;
  std::set<std::string> model_names;
  size_t cases = 0, offloaded = 0, multi_gpu = 0;
  for (const nlohmann::json& c : fixtures.at("cases")) {
    const std::string dir = c.at("model").get<std::string>();
    if (!models.count(dir)) {
      Result<ModelDescription> m = ImportExample(Root() + dir);
      ASSERT_TRUE(m.ok()) << m.error().ToString();
      models.emplace(dir, std::move(m).value());
    }
    model_names.insert(dir);
    const ModelDescription& model = models.at(dir);
    Result<MemoryBudget> budget = MemoryBudgetFromJson(c.at("max_memory"));
    ASSERT_TRUE(budget.ok()) << budget.error().ToString();
    Result<DType> dtype = ParseExecDType(c.at("dtype").get<std::string>());
    ASSERT_TRUE(dtype.ok());
    const PlacementRequest req = ParityRequest(model, *budget, *dtype);
    Result<Placement> ours = PlaceModel("sequential", req);
    ASSERT_TRUE(ours.ok()) << ours.error().ToString();
    Result<std::vector<BlockPlacement>> theirs = DeviceMapToPlacement(model, c.at("accelerate_device_map"), *budget);
    ASSERT_TRUE(theirs.ok()) << theirs.error().ToString();
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      EXPECT_EQ(ours->blocks[i], (*theirs)[i])
          << dir << " " << budget->ToString() << ": block " << model.blocks[i].name << ": ours "
          << ours->blocks[i].device << "/" << TierName(ours->blocks[i].tier) << ", accelerate " << (*theirs)[i].device << "/"
          << TierName((*theirs)[i].tier);
    }
    // Our block-level export, read back, gives the same placement.
    Result<std::vector<BlockPlacement>> back =
        DeviceMapToPlacement(model, nlohmann::json::parse(PlacementToDeviceMap(model, ours->blocks).dump()), *budget);
    ASSERT_TRUE(back.ok()) << back.error().ToString();
    EXPECT_EQ(*back, ours->blocks);
    ++cases;
    std::set<int> gpus;
    bool off = false;
    for (const BlockPlacement& p : ours->blocks) {
      if (p.tier == Tier::kGpu && p.device >= 0) gpus.insert(p.device);
      off = off || p.tier != Tier::kGpu;
    }
    offloaded += off;
    multi_gpu += gpus.size() > 1;
  }
  // The fixtures cover at least 3 models x 3 budgets, with offloading and several GPUs.
  EXPECT_GE(model_names.size(), 3u);
  EXPECT_GE(cases, 9u);
  EXPECT_GE(offloaded, 6u);
  EXPECT_GE(multi_gpu, 6u);
}

}  // namespace
}  // namespace bigplan
