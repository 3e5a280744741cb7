// A timeline of forward passes, written as a Chrome/Perfetto trace (internal to executor/).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "support/result.h"

namespace bigplan::executor_internal {

struct TraceEvent {
  std::string name;
  std::string track;  // "compute", "copy", "disk worker 0", ...
  double start_us = 0;
  double dur_us = 0;
  std::vector<std::pair<std::string, std::string>> args;
};

class TraceRecorder {
 public:
  void Add(TraceEvent event);
  size_t size() const;
  // {"traceEvents": [...]}: one "X" event per entry, thread-name metadata per track ("compute" first, then "copy",
  // then the others sorted), all in process "bigplan".
  std::string ToJson() const;
  Status Write(const std::string& path) const;

 private:
  mutable std::mutex mu_;
  std::vector<TraceEvent> events_;
};

}  // namespace bigplan::executor_internal
