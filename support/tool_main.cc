#include "support/tool_main.h"

#include <cstdio>
#include <exception>

namespace bigplan {

int RunTool(const char* tool_name, const std::function<Status()>& body) {
  Status status;
  try {
    status = body();
  } catch (const std::exception& e) {
    status = MakeError(ErrorCode::kInternal, std::string("unexpected exception: ") + e.what());
  } catch (...) {
    status = MakeError(ErrorCode::kInternal, "unexpected exception");
  }
  if (status.ok()) return kExitOk;
  std::fprintf(stderr, "%s: %s\n", tool_name, status.error().ToString().c_str());
  return status.error().code == ErrorCode::kInvalidArgument ? kExitUsage : kExitError;
}

}  // namespace bigplan
