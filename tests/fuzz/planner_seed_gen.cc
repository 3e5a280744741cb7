// Writes seed corpora for the planner fuzzers: real plans (the tiny test model and the bundled examples under
// several budgets and device maps), model descriptions (canonical JSON of the bundled examples and the tiny model)
// and device profiles. Run from the repository root: planner_seed_gen OUT_DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "planner/budget.h"
#include "planner/device_profile.h"
#include "planner/hf_import.h"
#include "planner/planner.h"

namespace fs = std::filesystem;
using namespace bigplan;

static void Write(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: planner_seed_gen OUT_DIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  for (const char* d : {"plan", "desc", "profile"}) fs::create_directories(out / d);
  int plans = 0;
  struct Case {
    const char* model;
    const char* budget;
    const char* map;
    unsigned seq;
  };
  const Case cases[] = {
      {"tools/testdata/tiny-llama", "cuda:0=1GiB,cpu=1GiB", "", 64},
      {"tools/testdata/tiny-llama", "cuda:0=1GiB,cpu=1GiB", "tools/testdata/tiny-llama-device-map.json", 64},
      {"tools/testdata/tiny-llama", "cuda:0=1GiB,cuda:1=1GiB,cpu=1GiB", "", 32},
      {"tools/testdata/tiny-llama", "cpu=1GiB", "", 16},
      // Partly resident layers (auto's candidate P) and row-chunked streaming (candidate C).
      {"tools/testdata/tiny-llama", "cuda:0=320.5MiB,cpu=1GiB", "", 64},
      {"planner/testdata/configs/llama-3.1-405b-4layers", "cuda:0=4GiB,cpu=200GiB", "", 64},
  };
  for (const Case& c : cases) {
    PlanRequest r;
    r.model_dir = c.model;
    r.budget = ParseMaxMemory(c.budget).value();
    r.run = RunShape{1, c.seq};
    if (*c.map) {
      std::ifstream f(c.map);
      r.device_map = nlohmann::json::parse(f);
      r.strategy = "explicit";
    }
    auto result = MakePlan(r);
    if (!result.ok()) {
      std::fprintf(stderr, "seed %s %s: %s\n", c.model, c.budget, result.error().ToString().c_str());
      continue;
    }
    Write(out / "plan" / ("plan" + std::to_string(plans++) + ".bplan"),
          std::string(result->bytes.begin(), result->bytes.end()));
    Write(out / "desc" / ("tiny" + std::to_string(plans) + ".json"), result->model.ToJson(plans % 2 ? 2 : -1));
  }
  for (const char* ex : {"llama-2-7b", "gpt-j-6b", "llama-3.1-405b"}) {
    auto m = ImportExample(std::string("planner/examples/") + ex);
    if (m.ok()) Write(out / "desc" / (std::string(ex) + ".json"), m->ToJson(-1));
  }
  Write(out / "profile" / "h100.json", DeviceProfileToJson(DefaultGpuProfile()).dump());
  Write(out / "profile" / "cpu.json", DeviceProfileToJson(DefaultCpuProfile()).dump(2));
  std::printf("%d plan seeds\n", plans);
  return plans > 0 ? 0 : 1;
}
