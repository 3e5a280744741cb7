#include "support/result.h"

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

}  // namespace bigplan
