#include "support/result.h"

#include <cstdio>
#include <cstdlib>

namespace bigplan {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kMismatch: return "mismatch";
    case ErrorCode::kInfeasible: return "infeasible";
    case ErrorCode::kIncompatible: return "incompatible";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kIo: return "i/o error";
    case ErrorCode::kDevice: return "device error";
    case ErrorCode::kBusy: return "busy";
    case ErrorCode::kInternal: return "internal error";
  }
  return "error";
}

std::string Error::ToString() const { return std::string(ErrorCodeName(code)) + ": " + message; }

namespace result_internal {

void Die(const char* what, const Error* error, const CallSite& where) {
  const std::string detail = error != nullptr ? ": " + error->ToString() : std::string();
  std::fprintf(stderr, "bigplan: %s%s (at %s:%u in %s)\n", what, detail.c_str(), where.file, where.line,
               where.function);
  std::fflush(stderr);
  std::abort();
}

}  // namespace result_internal

}  // namespace bigplan
