#include "planner/device_profile.h"

#include <cmath>

#include "support/file_read.h"
#include "support/json_parse.h"

namespace bigplan {
namespace {

struct RateField {
  const char* key;
  double DeviceProfile::*member;
};

constexpr RateField kRates[] = {
    {"h2d_gbps", &DeviceProfile::h2d_gbps},           {"d2h_gbps", &DeviceProfile::d2h_gbps},
    {"disk_gbps", &DeviceProfile::disk_gbps},         {"device_mem_gbps", &DeviceProfile::device_mem_gbps},
    {"matmul_tflops", &DeviceProfile::matmul_tflops}, {"cpu_mem_gbps", &DeviceProfile::cpu_mem_gbps},
    {"cpu_gflops", &DeviceProfile::cpu_gflops},
};

// Optional: absent or 0 means not measured.
constexpr RateField kOptionalRates[] = {
    {"cpu_gemv_gbps", &DeviceProfile::cpu_gemv_gbps},           {"cpu_gemv_fp8_gbps", &DeviceProfile::cpu_gemv_fp8_gbps},
    {"cpu_gemv_int8_gbps", &DeviceProfile::cpu_gemv_int8_gbps}, {"cpu_gemv_int4_gbps", &DeviceProfile::cpu_gemv_int4_gbps},
    {"h2d_busy_gbps", &DeviceProfile::h2d_busy_gbps},
    {"cpu_gemv_alone_gbps", &DeviceProfile::cpu_gemv_alone_gbps},
};

Error Invalid(const std::string& source, const std::string& what) {
  return MakeError(ErrorCode::kInvalidArgument, source + ": " + what);
}

}  // namespace

Result<DeviceProfile> DeviceProfileFromJson(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) return MakeError(ErrorCode::kCorrupt, source + ": a device profile must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    bool known = key == "name";
    for (const RateField& f : kOptionalRates) known = known || key == f.key;
    for (const RateField& f : kRates) known = known || key == f.key;
    if (!known) return Invalid(source, "unknown key \"" + key + "\" in the device profile");
  }
  DeviceProfile p;
  auto name = j.find("name");
  if (name == j.end()) return Invalid(source, "device profile lacks \"name\"");
  if (!name->is_string() || name->get<std::string>().empty())
    return Invalid(source, "\"name\" must be a non-empty string");
  p.name = name->get<std::string>();
  for (const RateField& f : kRates) {
    auto it = j.find(f.key);
    if (it == j.end()) return Invalid(source, std::string("device profile lacks \"") + f.key + "\"");
    if (!it->is_number()) return Invalid(source, std::string("\"") + f.key + "\" must be a number");
    const double v = it->get<double>();
    if (!std::isfinite(v) || v <= 0)
      return Invalid(source, std::string("\"") + f.key + "\" must be a positive number, not " + it->dump());
    p.*(f.member) = v;
  }
  for (const RateField& f : kOptionalRates) {
    const char* key = f.key;
    double DeviceProfile::*member = f.member;
    auto it = j.find(key);
    if (it == j.end()) continue;
    if (!it->is_number()) return Invalid(source, std::string("\"") + key + "\" must be a number");
    const double v = it->get<double>();
    if (!std::isfinite(v) || v < 0)
      return Invalid(source, std::string("\"") + key + "\" must be a number >= 0 (0: not measured), not " + it->dump());
    p.*member = v;
  }
  return p;
}

Result<DeviceProfile> ParseDeviceProfile(std::string_view json_text, const std::string& source) {
  BIGPLAN_ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonStrict(json_text, source));
  return DeviceProfileFromJson(j, source);
}

Result<DeviceProfile> LoadDeviceProfile(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kProfileFile));
  return ParseDeviceProfile(text, path);
}

nlohmann::json DeviceProfileToJson(const DeviceProfile& p) {
  nlohmann::ordered_json o;
  o["name"] = p.name;
  for (const RateField& f : kRates) o[f.key] = p.*(f.member);
  for (const RateField& f : kOptionalRates)
    if (p.*(f.member) > 0) o[f.key] = p.*(f.member);
  return nlohmann::json::parse(o.dump());
}

DeviceProfile DefaultGpuProfile() {
  DeviceProfile p;
  p.name = "h100-pcie5";
  p.h2d_gbps = 53.0;
  p.d2h_gbps = 54.0;
  p.disk_gbps = 1.4;
  p.device_mem_gbps = 3030.0;
  p.matmul_tflops = 770.0;
  p.cpu_mem_gbps = 100.0;
  p.cpu_gflops = 1000.0;
  p.cpu_gemv_gbps = 86.0;
  p.cpu_gemv_alone_gbps = 121.0;
  p.cpu_gemv_fp8_gbps = 54.8;
  p.cpu_gemv_int8_gbps = 54.8;
  p.cpu_gemv_int4_gbps = 29.8;
  p.h2d_busy_gbps = 45.0;
  return p;
}

DeviceProfile DefaultCpuProfile() {
  DeviceProfile p;
  p.name = "cpu";
  p.h2d_gbps = 10.0;
  p.d2h_gbps = 10.0;
  p.disk_gbps = 1.0;
  p.device_mem_gbps = 20.0;
  p.matmul_tflops = 0.2;
  p.cpu_mem_gbps = 20.0;
  p.cpu_gflops = 200.0;
  return p;
}

}  // namespace bigplan
