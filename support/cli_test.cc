#include "support/cli.h"

#include <cstdlib>
#include <vector>

#include <gtest/gtest.h>

namespace bigplan {
namespace {

constexpr Cli kCli("usage: tool [FLAGS]\n");

std::string Message(const Error& e) { return e.message; }

TEST(CliTest, UsageErrorAppendsUsageText) {
  const Error e = kCli.Usage("bad flag");
  EXPECT_EQ(e.code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(Message(e), "bad flag\n\nusage: tool [FLAGS]\n");
}

TEST(CliTest, UserPathFollowsBuildWorkingDirectory) {
  ASSERT_EQ(setenv("BUILD_WORKING_DIRECTORY", "/home/me", 1), 0);
  EXPECT_EQ(UserPath("a/b.json"), "/home/me/a/b.json");
  EXPECT_EQ(UserPath("/abs/b.json"), "/abs/b.json");
  EXPECT_EQ(UserPath(""), "");
  ASSERT_EQ(setenv("BUILD_WORKING_DIRECTORY", "", 1), 0);
  EXPECT_EQ(UserPath("a/b.json"), "a/b.json");
  ASSERT_EQ(unsetenv("BUILD_WORKING_DIRECTORY"), 0);
  EXPECT_EQ(UserPath("a/b.json"), "a/b.json");
}

TEST(CliTest, SplitFlagForms) {
  std::vector<std::string> args = {"tool", "--batch=4", "--seq-len", "128", "--nope", "x", "--batch"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  const int argc = static_cast<int>(argv.size());
  std::string flag, value;
  int i = 1;
  EXPECT_EQ(SplitFlag(argc, argv.data(), &i, {"--batch", "--seq-len"}, &flag, &value), FlagSplit::kOk);
  EXPECT_EQ(flag, "--batch");
  EXPECT_EQ(value, "4");
  EXPECT_EQ(i, 1);
  i = 2;
  EXPECT_EQ(SplitFlag(argc, argv.data(), &i, {"--batch", "--seq-len"}, &flag, &value), FlagSplit::kOk);
  EXPECT_EQ(flag, "--seq-len");
  EXPECT_EQ(value, "128");
  EXPECT_EQ(i, 3);
  i = 4;
  EXPECT_EQ(SplitFlag(argc, argv.data(), &i, {"--batch", "--seq-len"}, &flag, &value), FlagSplit::kUnknown);
  EXPECT_EQ(flag, "--nope");
  i = 6;
  EXPECT_EQ(SplitFlag(argc, argv.data(), &i, {"--batch", "--seq-len"}, &flag, &value), FlagSplit::kMissingValue);
  EXPECT_EQ(flag, "--batch");
}

TEST(CliTest, ParsePositive) {
  EXPECT_EQ(*kCli.ParsePositive("--batch", "12"), 12u);
  EXPECT_EQ(*kCli.ParsePositive("--batch", "999999999"), 999999999u);
  EXPECT_EQ(Message(kCli.ParsePositive("--batch", "0").error()), "--batch: must be at least 1\n\nusage: tool [FLAGS]\n");
  for (const char* bad : {"", "-1", "1.5", "1000000000", "x"}) {
    auto r = kCli.ParsePositive("--batch", bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(Message(r.error()), std::string("--batch: expected a positive integer, got \"") + bad +
                                      "\"\n\nusage: tool [FLAGS]\n");
  }
}

TEST(CliTest, ParseIntRanges) {
  EXPECT_EQ(*kCli.ParseInt("--seed", "0", 0), 0);
  EXPECT_EQ(*kCli.ParseInt("--seed", "9000000000", 0), 9000000000);
  EXPECT_EQ(*kCli.ParseInt("--n", "1024", 1, 1024), 1024);
  EXPECT_EQ(Message(kCli.ParseInt("--n", "1025", 1, 1024).error()),
            "--n: 1025 is too large (at most 1024)\n\nusage: tool [FLAGS]\n");
  EXPECT_EQ(Message(kCli.ParseInt("--n", "0", 1).error()),
            "--n: expected an integer >= 1, got \"0\"\n\nusage: tool [FLAGS]\n");
  for (const char* bad : {"", "3x", "99999999999999999999"}) EXPECT_FALSE(kCli.ParseInt("--n", bad, 0).ok()) << bad;
}

TEST(CliTest, ParseDouble) {
  EXPECT_DOUBLE_EQ(*kCli.ParseDouble("--t", "0.5", 0), 0.5);
  EXPECT_EQ(Message(kCli.ParseDouble("--t", "-1", 0).error()),
            "--t: expected a finite number >= 0.0, got \"-1\"\n\nusage: tool [FLAGS]\n");
  for (const char* bad : {"", "inf", "nan", "1e999", "0.5x"}) EXPECT_FALSE(kCli.ParseDouble("--t", bad, 0).ok()) << bad;
}

}  // namespace
}  // namespace bigplan
