// libFuzzer target: the device-profile parser. Any text is refused with an error or yields a profile with every
// rate finite and positive that round-trips through JSON.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "planner/device_profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto p = bigplan::ParseDeviceProfile(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!p.ok()) return 0;
  for (double v : {p->h2d_gbps, p->d2h_gbps, p->disk_gbps, p->device_mem_gbps, p->matmul_tflops, p->cpu_mem_gbps,
                   p->cpu_gflops})
    if (!std::isfinite(v) || v <= 0) std::abort();
  auto again = bigplan::DeviceProfileFromJson(bigplan::DeviceProfileToJson(*p), "again");
  if (!again.ok() || !(*again == *p)) std::abort();
  return 0;
}
