#include "planner/device_profile.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace bigplan {
namespace {

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* ws = std::getenv("TEST_WORKSPACE");
  return std::string(srcdir ? srcdir : ".") + "/" + (ws ? ws : "bigplan") + "/" + path;
}

TEST(DeviceProfileTest, BundledProfilesMatchTheDefaults) {
  auto h100 = LoadDeviceProfile(Runfile("planner/profiles/h100-pcie5.json"));
  ASSERT_TRUE(h100.ok()) << h100.error().ToString();
  EXPECT_EQ(*h100, DefaultGpuProfile());
  EXPECT_EQ(h100->h2d_gbps, 53.0);
  EXPECT_EQ(h100->matmul_tflops, 770.0);
  auto cpu = LoadDeviceProfile(Runfile("planner/profiles/cpu.json"));
  ASSERT_TRUE(cpu.ok()) << cpu.error().ToString();
  EXPECT_EQ(*cpu, DefaultCpuProfile());
}

TEST(DeviceProfileTest, RoundTrips) {
  auto p = DeviceProfileFromJson(DeviceProfileToJson(DefaultGpuProfile()), "x");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, DefaultGpuProfile());
}

TEST(DeviceProfileTest, NamedErrors) {
  nlohmann::json good = DeviceProfileToJson(DefaultGpuProfile());
  auto expect_error = [](const nlohmann::json& j, ErrorCode code, const std::string& needle) {
    auto r = DeviceProfileFromJson(j, "p.json");
    ASSERT_FALSE(r.ok()) << j.dump();
    EXPECT_EQ(r.error().code, code);
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.rfind("p.json: ", 0), 0u) << r.error().message;
  };
  nlohmann::json j = good;
  j.erase("h2d_gbps");
  expect_error(j, ErrorCode::kInvalidArgument, "lacks \"h2d_gbps\"");
  j = good;
  j["disk_gbps"] = 0;
  expect_error(j, ErrorCode::kInvalidArgument, "\"disk_gbps\" must be a positive number");
  j = good;
  j["matmul_tflops"] = "fast";
  expect_error(j, ErrorCode::kInvalidArgument, "\"matmul_tflops\" must be a number");
  j = good;
  j["h2d_gpbs"] = 1;
  expect_error(j, ErrorCode::kInvalidArgument, "unknown key \"h2d_gpbs\"");
  j = good;
  j["name"] = "";
  expect_error(j, ErrorCode::kInvalidArgument, "\"name\"");
  expect_error(nlohmann::json::array(), ErrorCode::kCorrupt, "JSON object");
  auto r = ParseDeviceProfile("{nope", "p.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  auto missing = LoadDeviceProfile("/nonexistent/profile.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
}

}  // namespace
}  // namespace bigplan
