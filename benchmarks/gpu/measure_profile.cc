// Measures this GPU machine's floors and prints them as a planner device profile (JSON on stdout).
//   measure_profile [--disk FILE...]      (files are read with O_DIRECT to measure disk bandwidth)
#include <cstdio>
#include <string>
#include <vector>

#include "benchmarks/gpu/floors.h"
#include "support/tool_main.h"

int main(int argc, char** argv) {
  return bigplan::RunTool("measure_profile", [&]() -> bigplan::Status {
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--disk") continue;
      if (a.rfind("--", 0) == 0)
        return bigplan::MakeError(bigplan::ErrorCode::kInvalidArgument, "unknown flag " + a + " (use --disk FILE...)");
      files.push_back(a);
    }
    BIGPLAN_ASSIGN_OR_RETURN(bigplan::Floors f, bigplan::MeasureFloors(files, uint64_t{8} << 30));
    std::printf("%s\n", bigplan::FloorsToProfileJson(f).c_str());
    return bigplan::Status::Ok();
  });
}
