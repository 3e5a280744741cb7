#include "executor/expert_share.h"

#include <algorithm>
#include <cmath>

namespace bigplan::executor_internal {

int ShareHostRows(std::span<const HostableExpert> experts, double share, int64_t split_rows, uint64_t split_min_bytes,
                  std::span<int64_t> rows) {
  double left = 0;
  for (size_t i = 0; i < experts.size(); ++i) {
    rows[i] = 0;
    left += static_cast<double>(experts[i].bytes);
  }
  left *= share;
  for (size_t j = experts.size(); j-- > 0 && left > 0;) {
    const HostableExpert& e = experts[j];
    if (e.inter <= 0 || e.bytes == 0) continue;
    const double bytes = static_cast<double>(e.bytes);
    const bool splittable = split_rows > 0 && e.bytes >= split_min_bytes;
    const double want = left / bytes * static_cast<double>(e.inter);  // rows the share still covers
    const double whole_at =
        splittable ? static_cast<double>(e.inter - split_rows / 2) : 0.5 * static_cast<double>(e.inter);
    if (want >= whole_at) {
      rows[j] = e.inter;
      left -= bytes;
      continue;
    }
    if (splittable) {
      const int64_t r = std::llround(want / static_cast<double>(split_rows)) * split_rows;
      if (r >= split_rows && e.inter - r >= split_rows) {
        rows[j] = r;
        return static_cast<int>(j);
      }
    }
    break;
  }
  return -1;
}

double AdaptShare(double share, double host_us, double copy_us) {
  if (!(share > 0) || !(share < 1) || !(host_us > 0) || !(copy_us > 0)) return share;
  const double host_rate = share / host_us, copy_rate = (1 - share) / copy_us;
  const double balanced = host_rate / (host_rate + copy_rate);
  return std::clamp(share + kShareGain * (balanced - share), kShareMin, kShareMax);
}

}  // namespace bigplan::executor_internal
