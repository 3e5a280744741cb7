// inspect: prints a plan file as text (stable and deterministic, for reading and golden tests) or JSON, or
// compares two plans.
//
//   inspect PLAN            text
//   inspect --json PLAN     JSON (every field)
//   inspect --diff A B      what differs: placement, bytes per tier, arenas, predicted times

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "schema/plan_dump.h"
#include "schema/plan_io.h"
#include "support/cli.h"
#include "support/result.h"
#include "support/tool_main.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: inspect [--json] PLAN\n"
    "       inspect --diff A B\n"
    "\n"
    "Prints a plan file (written by `plan -o`) as text, or with --json as JSON. --diff compares two plans:\n"
    "placement differences, weight bytes per tier, arena sizes and predicted times.\n"
    "\n"
    "  --json     JSON instead of text\n"
    "  --diff     compare two plans\n"
    "  -h, --help this text\n"
    "\n"
    "Exit status: 0 ok, 1 a plan could not be read (not a plan, damaged, incompatible version), 2 bad command line.\n";

constexpr Cli kCli(kUsage);

Error Usage(const std::string& why) { return kCli.Usage(why); }

Status Main(int argc, char** argv) {
  bool json = false, diff = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return Status::Ok();
    }
    if (arg == "--json") json = true;
    else if (arg == "--diff") diff = true;
    else if (arg.size() > 1 && arg[0] == '-') return Usage("unknown flag \"" + arg + "\"");
    else files.push_back(arg);
  }
  if (json && diff) return Usage("--json and --diff do not combine");
  if (files.size() != (diff ? 2u : 1u)) return Usage(diff ? "--diff needs two plan files" : "expected one plan file");
  const std::vector<std::string> names = files;
  for (std::string& f : files) f = UserPath(f);
  BIGPLAN_ASSIGN_OR_RETURN(PlanFile a, PlanFile::Load(files[0]));
  std::ostringstream out;
  if (diff) {
    BIGPLAN_ASSIGN_OR_RETURN(PlanFile b, PlanFile::Load(files[1]));
    WritePlanDiff(out, a.plan(), b.plan(), names[0], names[1]);
  } else if (json) {
    out << PlanToJson(a.plan()).dump(2) << "\n";
  } else {
    WritePlanText(out, a.plan());
  }
  std::fputs(out.str().c_str(), stdout);
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("inspect", [&] { return bigplan::Main(argc, argv); });
}
