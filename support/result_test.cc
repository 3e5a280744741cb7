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

// Reading the value of an error (or the error of a success) is a broken contract: a checked failure that prints the
// error and the caller's file:line, then aborts. Never an exception (which a caller could swallow or that would
// escape a thread).
TEST(ResultDeathTest, ValueOfAnErrorAbortsWithTheErrorAndTheCaller) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Result<int> r = MakeError(ErrorCode::kNotFound, "weights.bin: missing");
  EXPECT_DEATH((void)r.value(),
               "bigplan: Result::value\\(\\) called on an error: not found: weights.bin: missing \\(at "
               ".*support/result_test.cc:[0-9]+ in ");
  EXPECT_DEATH((void)*r, "Result::value\\(\\) called on an error: not found: weights.bin: missing");
  EXPECT_DEATH((void)std::move(r).value(), "not found: weights.bin: missing");
  Result<std::string> s = MakeError(ErrorCode::kCorrupt, "plan damaged");
  EXPECT_DEATH((void)s->size(), "called on an error: corrupt: plan damaged");
  Result<int> fine = 3;
  EXPECT_DEATH((void)fine.error(), "Result::error\\(\\) called on a value \\(at .*support/result_test.cc:[0-9]+");
  EXPECT_DEATH((void)Status::Ok().error(), "Status::error\\(\\) called on an OK status \\(at .*result_test.cc");
  EXPECT_DEATH((void)Status::Ok().take_error(), "Status::take_error\\(\\) called on an OK status");
  // A std::bad_variant_access is not what happens: nothing is thrown.
  EXPECT_EQ(*fine, 3);
  EXPECT_EQ(fine.value(), 3);
}

TEST(ToolMainTest, MapsErrorsToExitCodes) {
  EXPECT_EQ(RunTool("t", [] { return Status::Ok(); }), kExitOk);
  EXPECT_EQ(RunTool("t", [] { return Status(MakeError(ErrorCode::kInvalidArgument, "x")); }), kExitUsage);
  EXPECT_EQ(RunTool("t", [] { return Status(MakeError(ErrorCode::kCorrupt, "x")); }), kExitError);
  EXPECT_EQ(RunTool("t", []() -> Status { throw std::runtime_error("boom"); }), kExitError);
}

}  // namespace
}  // namespace bigplan
