// libFuzzer target: an HF-style device map (--device-map) parsed as the plan tool parses it (bounded, strict JSON)
// and turned into a placement of a small Llama model. Any text is refused with an error or gives one placement per
// block on a device the budget names.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "planner/budget.h"
#include "planner/hf_import.h"
#include "planner/placement.h"
#include "support/json_parse.h"

namespace {

const bigplan::ModelDescription& Model() {
  static const bigplan::ModelDescription* m = [] {
    auto r = bigplan::ImportHfConfigText(R"({"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 32})");
    if (!r.ok()) std::abort();
    return new bigplan::ModelDescription(std::move(r).value());
  }();
  return *m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = bigplan::ParseJsonStrict(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/map.json");
  if (!j.ok()) {
    if (j.error().message.rfind("fuzz/map.json", 0) != 0) std::abort();
    return 0;
  }
  static const bigplan::MemoryBudget budget = *bigplan::ParseMaxMemory("cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB,disk=1GiB");
  auto placement = bigplan::DeviceMapToPlacement(Model(), *j, budget);
  if (placement.ok() && placement->size() != Model().blocks.size()) std::abort();
  return 0;
}
