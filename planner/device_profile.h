// Device profiles: the measured rates the cost model predicts with.
//
// A profile is a JSON object with exactly these keys (all rates positive numbers):
//   "name"             string, e.g. "h100-pcie5"
//   "h2d_gbps"         pinned host -> device copy bandwidth, GB/s (1 GB = 1e9 bytes)
//   "d2h_gbps"         device -> pinned host, GB/s
//   "disk_gbps"        sequential read of checkpoint shards, GB/s
//   "device_mem_gbps"  device memory bandwidth, GB/s, counting bytes read + bytes written
//   "matmul_tflops"    dense matmul rate at the execution dtype, TFLOP/s
//   "cpu_mem_gbps"     host memory bandwidth (for blocks computed on the CPU), GB/s
//   "cpu_gflops"       host matmul rate (for blocks computed on the CPU), GFLOP/s
// and optionally
//   "cpu_gemv_gbps"    the host's multi-threaded matrix-vector product over bf16 weight rows in pinned memory while
//                      H2D copies run at the same time (the rate it keeps over the copies' window; h2d_busy_gbps is
//                      theirs), GB/s of weights read (planner/host_compute.h; absent or 0: not measured, and
//                      `plan --cpu-share auto` cannot choose a share)
//   "cpu_gemv_fp8_gbps", "cpu_gemv_int8_gbps", "cpu_gemv_int4_gbps"
//                      the same over row-quantized weights (formats/quant.h), GB/s of their stored bytes (absent or
//                      0: cpu_gemv_gbps x kHostFormatFactor of planner/cost_model.h)
//   "cpu_gemv_alone_gbps" the same product with no copies running (absent or 0: cpu_gemv_gbps)
//   "h2d_busy_gbps"    pinned H2D copies while the host computes those products (host memory is shared), GB/s
//                      (absent or 0: h2d_gbps)
// Bundled: planner/profiles/h100-pcie5.json (measured) and planner/profiles/cpu.json (conservative, for CPU-only
// plans). DefaultGpuProfile()/DefaultCpuProfile() return the same numbers without reading a file.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "support/result.h"

namespace bigplan {

struct DeviceProfile {
  std::string name;
  double h2d_gbps = 0;
  double d2h_gbps = 0;
  double disk_gbps = 0;
  double device_mem_gbps = 0;
  double matmul_tflops = 0;
  double cpu_mem_gbps = 0;
  double cpu_gflops = 0;
  double cpu_gemv_gbps = 0;  // 0: not measured
  double cpu_gemv_alone_gbps = 0;  // 0: not measured (cpu_gemv_gbps stands in)
  double h2d_busy_gbps = 0;  // 0: not measured (h2d_gbps stands in)
  double cpu_gemv_fp8_gbps = 0, cpu_gemv_int8_gbps = 0, cpu_gemv_int4_gbps = 0;  // 0: not measured
  bool operator==(const DeviceProfile&) const = default;
};

// Parses a profile. `source` (a file name) prefixes every message. Errors:
//   kCorrupt          not JSON, or not an object;
//   kInvalidArgument  a missing key, an unknown key, a key of the wrong type, a rate that is not a finite number > 0,
//                     an empty name (each naming the key).
Result<DeviceProfile> ParseDeviceProfile(std::string_view json_text, const std::string& source);
Result<DeviceProfile> DeviceProfileFromJson(const nlohmann::json& json, const std::string& source);
// Reads and parses a file (kNotFound / kIo naming it).
Result<DeviceProfile> LoadDeviceProfile(const std::string& path);
// The profile as JSON (keys as above; stable order when dumped).
nlohmann::json DeviceProfileToJson(const DeviceProfile& profile);

// H100 80GB (PCIe Gen5 host link), measured: pinned H2D 53 GB/s, D2H 54 GB/s, checkpoint reads 1.4 GB/s (buffered;
// 1.3 GB/s with O_DIRECT), device memory 3030 GB/s (read + write), bf16 dense matmul 770 TFLOP/s. Host figures are
// conservative estimates for a server CPU (not measured): 100 GB/s memory, 1000 GFLOP/s. Host compute in decode,
// measured on such machines' 16-core hosts (benchmarks/gpu/floors.h): bf16 products 121 GB/s alone, and 86 GB/s
// while H2D copies run at 45 GB/s beside them (three H100 machines: 79.7-93.0 and 40.5-46.5); fp8 and int8 54.8,
// int4 29.8 (best of four with copies queued, an earlier kernel).
DeviceProfile DefaultGpuProfile();
// Conservative host-only figures for CPU-only plans: "transfers" are host memcpys (10 GB/s), disk 1 GB/s, memory
// 20 GB/s, 200 GFLOP/s. device_mem_gbps/matmul_tflops mirror the host figures.
DeviceProfile DefaultCpuProfile();

}  // namespace bigplan
