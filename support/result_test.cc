#include "support/result.h"

#include <gtest/gtest.h>

#include "support/tool_main.h"

namespace bigplan {
namespace {

Result<int> Half(int x) {
  if (x % 2) return MakeError(ErrorCode::kInvalidArgument, "odd: " + std::to_string(x));
  return x / 2;
}

Result<int> Quarter(int x) {
  BIGPLAN_ASSIGN_OR_RETURN(int h, Half(x));
  BIGPLAN_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(ResultTest, ValuesAndErrorsPropagate) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.error().ToString(), "invalid argument: odd: 3");
}

TEST(ResultTest, ContextKeepsCode) {
  Error e = WithContext(MakeError(ErrorCode::kCorrupt, "bad header"), "a.safetensors");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  EXPECT_EQ(e.message, "a.safetensors: bad header");
}

TEST(ToolMainTest, MapsErrorsToExitCodes) {
  EXPECT_EQ(RunTool("t", [] { return Status::Ok(); }), kExitOk);
  EXPECT_EQ(RunTool("t", [] { return Status(MakeError(ErrorCode::kInvalidArgument, "x")); }), kExitUsage);
  EXPECT_EQ(RunTool("t", [] { return Status(MakeError(ErrorCode::kCorrupt, "x")); }), kExitError);
  EXPECT_EQ(RunTool("t", []() -> Status { throw std::runtime_error("boom"); }), kExitError);
}

}  // namespace
}  // namespace bigplan
