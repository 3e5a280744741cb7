// Physical floors of a GPU machine, measured in the same run as the benchmarks they judge: pinned host-to-device
// and device-to-host copy bandwidth, device memory bandwidth, dense bf16 matmul rate, and disk read bandwidth with
// the page cache out of play (O_DIRECT). The same numbers form a planner device profile (planner/profiles/*.json).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "support/result.h"

namespace bigplan {

struct Floors {
  std::string device_name;
  double h2d_gbps = 0;          // pinned host -> device, GB/s (1e9 bytes)
  double d2h_gbps = 0;          // device -> pinned host
  double device_mem_gbps = 0;   // device-to-device copy, bytes read + written per second
  double matmul_tflops = 0;     // bf16 8192^3 at::matmul
  double disk_gbps = 0;         // O_DIRECT sequential read of the given files (0 when not measured)
  std::string disk_error;       // why disk_gbps was not measured (no files, or a filesystem without O_DIRECT)
  // The host's multi-threaded bf16 matrix-vector product (executor/cpu_matvec.h, every core) over a 1.5 GiB
  // matrix in pinned memory, GB/s of weights read: alone; the best of five products with H2D copies of another
  // buffer queued (which may find the copy engine between copies); and the rate the host keeps while H2D copies run
  // without pause, over the copies' window (products of 64 MiB one after another; the profile's cpu_gemv_gbps, what
  // host compute in decode sees beside the copies; the queued rate stands in if that window held too few products).
  double cpu_gemv_alone_gbps = 0;
  double cpu_gemv_queued_gbps = 0;
  double cpu_gemv_concurrent_gbps = 0;
  double cpu_gemv_gbps = 0;
  // Pinned H2D copies over that window, while the host computes (the profile's h2d_busy_gbps).
  double h2d_busy_gbps = 0;
  // Each window measured (H2D, host GB/s); the pair above is the one that moved the most bytes per second in all.
  std::vector<std::pair<double, double>> concurrent_windows;
  // The host's products over fp8, int8 and int4 rows (groups of 128 columns for int4) with copies running, GB/s of
  // their bytes.
  double cpu_gemv_fp8_gbps = 0, cpu_gemv_int8_gbps = 0, cpu_gemv_int4_gbps = 0;
  int cpu_threads = 0;
};

// Measures on CUDA device 0. `disk_files`: files to read with O_DIRECT (up to `disk_bytes_cap` bytes in all).
Result<Floors> MeasureFloors(const std::vector<std::string>& disk_files, uint64_t disk_bytes_cap);

// The disk rate a profile gets when the floors could not measure one: the default GPU profile's
// (planner/device_profile.cc DefaultGpuProfile), so plans that read from disk still cost their reads.
inline constexpr double kUnmeasuredDiskGbps = 1.4;

// The floors as a planner device profile JSON (planner/profiles format); disk_gbps kUnmeasuredDiskGbps where the
// floors have none.
std::string FloorsToProfileJson(const Floors& f);

}  // namespace bigplan
