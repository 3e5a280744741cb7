// The one place where tools turn an error into a message and an exit code.
#pragma once

#include <functional>

#include "support/result.h"

namespace bigplan {

// Exit codes shared by every tool.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // the request failed (bad input, infeasible, device failure)
inline constexpr int kExitUsage = 2;  // bad command line

// Runs `body`; on error prints "<tool>: <code>: <message>" to stderr and returns the exit code
// (kExitUsage for kInvalidArgument, kExitError otherwise). Exceptions escaping `body` are reported as
// internal errors instead of crashing.
int RunTool(const char* tool_name, const std::function<Status()>& body);

}  // namespace bigplan
