// The "explicit" strategy and HF-style device map parsing.
#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "planner/placement.h"
#include "planner/placement_strategies.h"

namespace bigplan {
namespace {

using placement_internal::IsParameterlessModule;
using placement_internal::MainDevice;

// A device map value: a GPU ordinal, or "cpu" (-1), or "disk" (-2).
Result<int> ParseValue(const std::string& key, const nlohmann::json& v) {
  auto bad = [&]() {
    return MakeError(ErrorCode::kInvalidArgument, "device map: \"" + key + "\": bad device " + v.dump() +
                                                      " (expected a GPU ordinal, \"cuda:N\", \"cpu\" or \"disk\")");
  };
  if (v.is_number_integer()) {
    if (v.get<int64_t>() < 0 || v.get<int64_t>() > 1'000'000) return bad();
    return static_cast<int>(v.get<int64_t>());
  }
  if (!v.is_string()) return bad();
  std::string s = v.get<std::string>();
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "cpu") return -1;
  if (s == "disk") return -2;
  if (s.rfind("cuda:", 0) == 0) s = s.substr(5);
  if (s.empty() || s.size() > 6) return bad();
  for (char c : s) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return bad();
  }
  return std::stoi(s);
}

bool Covers(const std::string& key, const std::string& block) {
  return key.empty() || key == block || (block.size() > key.size() && block.compare(0, key.size(), key) == 0 &&
                                         block[key.size()] == '.');
}

class ExplicitStrategy : public PlacementStrategy {
 public:
  std::string name() const override { return "explicit"; }
  std::string description() const override { return "the user's HF-style device map (options.device_map)"; }
  Result<Placement> Place(const PlacementRequest& request) const override {
    BIGPLAN_RETURN_IF_ERROR(placement_internal::CheckRequest(request));
    if (request.options.device_map.is_null()) {
      return MakeError(ErrorCode::kInvalidArgument, "the explicit placement strategy needs a device map");
    }
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<BlockPlacement> blocks,
                             DeviceMapToPlacement(*request.model, request.options.device_map, request.budget));
    return FinishPlacement(request, name(), std::move(blocks));
  }
};

}  // namespace

Result<std::vector<BlockPlacement>> DeviceMapToPlacement(const ModelDescription& model, const nlohmann::json& device_map,
                                                         const MemoryBudget& budget) {
  if (!device_map.is_object()) {
    return MakeError(ErrorCode::kInvalidArgument, "device map: expected a JSON object of module name -> device");
  }
  // Most specific key per block.
  std::vector<std::optional<std::pair<size_t, int>>> chosen(model.blocks.size());  // (key length, device)
  for (auto it = device_map.begin(); it != device_map.end(); ++it) {
    const std::string& key = it.key();
    BIGPLAN_ASSIGN_OR_RETURN(int device, ParseValue(key, it.value()));
    if (device >= 0 && !budget.gpus.count(device)) {
      return MakeError(ErrorCode::kInvalidArgument, "device map: \"" + key + "\" is mapped to cuda:" +
                                                        std::to_string(device) + ", which has no budget in --max-memory");
    }
    bool matched = false;
    for (size_t i = 0; i < model.blocks.size(); ++i) {
      const std::string& block = model.blocks[i].name;
      if (!Covers(key, block)) {
        if (Covers(block, key)) {
          return MakeError(ErrorCode::kInvalidArgument, "device map: \"" + key + "\" is inside block \"" + block +
                                                            "\"; bigplan places whole blocks: map \"" + block + "\" instead");
        }
        continue;
      }
      matched = true;
      if (!chosen[i] || chosen[i]->first < key.size()) chosen[i] = std::make_pair(key.size(), device);
    }
    if (!matched && !IsParameterlessModule(model, key)) {
      std::string some;
      for (size_t i = 0; i < model.blocks.size() && i < 3; ++i) some += (i ? ", " : "") + model.blocks[i].name;
      return MakeError(ErrorCode::kInvalidArgument, "device map: unknown module \"" + key + "\" (model " + model.name +
                                                        " has blocks " + some + ", ...)");
    }
  }
  std::vector<BlockPlacement> out(model.blocks.size());
  std::vector<int> raw(model.blocks.size());
  for (size_t i = 0; i < model.blocks.size(); ++i) {
    if (!chosen[i]) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "device map: block \"" + model.blocks[i].name + "\" is not covered by any key");
    }
    raw[i] = chosen[i]->second;
    if (raw[i] >= 0) out[i] = BlockPlacement{raw[i], Tier::kGpu};
  }
  // Offloaded entries are still default-initialized ({-1, kGpu}); MainDevice skips device -1.
  const int32_t main = MainDevice(out);
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == -1) out[i] = main >= 0 ? BlockPlacement{main, Tier::kCpu} : BlockPlacement{-1, Tier::kGpu};
    if (raw[i] == -2) out[i] = BlockPlacement{main, Tier::kDisk};
  }
  return out;
}

namespace placement_internal {
std::unique_ptr<PlacementStrategy> MakeExplicitStrategy() { return std::make_unique<ExplicitStrategy>(); }
}  // namespace placement_internal

}  // namespace bigplan
