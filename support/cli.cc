#include "support/cli.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>

namespace bigplan {

namespace fs = std::filesystem;

std::string UserPath(const std::string& path) {
  if (path.empty() || fs::path(path).is_absolute()) return path;
  const char* wd = std::getenv("BUILD_WORKING_DIRECTORY");
  return wd && *wd ? (fs::path(wd) / path).string() : path;
}

FlagSplit SplitFlag(int argc, char** argv, int* i, std::initializer_list<const char*> known, std::string* flag,
                    std::string* value) {
  const std::string arg = argv[*i];
  const size_t eq = arg.find('=');
  if (eq != std::string::npos && arg.rfind("--", 0) == 0) {
    *flag = arg.substr(0, eq);
    *value = arg.substr(eq + 1);
    return FlagSplit::kOk;
  }
  *flag = arg;
  bool is_known = false;
  for (const char* k : known) is_known = is_known || arg == k;
  if (!is_known) return FlagSplit::kUnknown;
  if (*i + 1 >= argc) return FlagSplit::kMissingValue;
  *value = argv[++*i];
  return FlagSplit::kOk;
}

Error Cli::Usage(const std::string& why) const {
  return MakeError(ErrorCode::kInvalidArgument, why + "\n\n" + usage_);
}

Result<uint32_t> Cli::ParsePositive(const std::string& flag, const std::string& text) const {
  if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos)
    return Usage(flag + ": expected a positive integer, got \"" + text + "\"");
  const unsigned long v = std::strtoul(text.c_str(), nullptr, 10);
  if (v == 0) return Usage(flag + ": must be at least 1");
  return static_cast<uint32_t>(v);
}

Result<int64_t> Cli::ParseInt(const std::string& flag, const std::string& text, int64_t min, int64_t max) const {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < min) {
    return Usage(flag + ": expected an integer >= " + std::to_string(min) + ", got \"" + text + "\"");
  }
  if (v > max) {
    return Usage(flag + ": " + text + " is too large (at most " + std::to_string(max) + ")");
  }
  return static_cast<int64_t>(v);
}

Result<double> Cli::ParseDouble(const std::string& flag, const std::string& text, double min) const {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || v < min) {
    return Usage(flag + ": expected a finite number >= " + std::to_string(min).substr(0, 3) + ", got \"" + text +
                 "\"");
  }
  return v;
}

}  // namespace bigplan
