// Command-line helpers shared by the tools: usage errors, paths relative to where `bazel run` was started, the
// "--flag=value" / "--flag value" forms, and numeric flags with ranges.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "support/result.h"

namespace bigplan {

// A path given on the command line, taken relative to the directory `bazel run` was started in
// (BUILD_WORKING_DIRECTORY) when it is relative and that variable is set; otherwise unchanged.
std::string UserPath(const std::string& path);

// How SplitFlag read one argument.
enum class FlagSplit {
  kOk,            // *flag and *value are set
  kUnknown,       // "--flag value" form with a flag not in `known` (*flag is the argument)
  kMissingValue,  // a known flag was the last argument (*flag is set)
};

// Reads argv[*i] as "--flag=value" (any flag starting with "--"), or as "FLAG VALUE" for a flag listed in `known`,
// in which case *i advances past the value.
FlagSplit SplitFlag(int argc, char** argv, int* i, std::initializer_list<const char*> known, std::string* flag,
                    std::string* value);

// Usage errors of one tool: kInvalidArgument with the reason, a blank line, then the tool's usage text (so
// RunTool exits with kExitUsage). The numeric parsers name the flag and the text they rejected.
class Cli {
 public:
  explicit constexpr Cli(const char* usage) : usage_(usage) {}

  Error Usage(const std::string& why) const;

  // 1..999999999, digits only.
  Result<uint32_t> ParsePositive(const std::string& flag, const std::string& text) const;

  // A decimal integer in [min, max].
  Result<int64_t> ParseInt(const std::string& flag, const std::string& text, int64_t min,
                           int64_t max = std::numeric_limits<int64_t>::max()) const;

  // A finite number >= min.
  Result<double> ParseDouble(const std::string& flag, const std::string& text, double min) const;

 private:
  const char* usage_;
};

}  // namespace bigplan
