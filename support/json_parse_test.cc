#include "support/json_parse.h"

#include <time.h>

#include <chrono>
#include <string>

#include "gtest/gtest.h"

namespace bigplan {
namespace {

// CPU time of this thread: the bounds are about the parser's work, not about how busy the machine is.
double CpuNow() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

TEST(JsonParseTest, ParsesValues) {
  auto r = ParseJsonStrict(R"({"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": {"d": []}})", "f.json");
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ((*r)["a"][0], 1);
  EXPECT_EQ((*r)["a"][1], -2);
  EXPECT_DOUBLE_EQ((*r)["a"][2].get<double>(), 3.5);
  EXPECT_EQ((*r)["a"][3], "x");
  EXPECT_TRUE((*r)["a"][5].is_null());
  EXPECT_TRUE((*r)["a"][6]["b"].is_object());
  EXPECT_TRUE((*r)["c"]["d"].is_array());
  EXPECT_EQ(*ParseJsonStrict("42", "n"), 42);
  EXPECT_EQ(*ParseJsonStrict("\"s\"", "n"), "s");
}

TEST(JsonParseTest, DuplicateKeysAreRefused) {
  auto top = ParseJsonStrict(R"({"a": 1, "a": 2})", "f.json");
  ASSERT_FALSE(top.ok());
  EXPECT_EQ(top.error().message, "f.json: duplicate entry \"a\"");
  auto nested = ParseJsonStrict(R"({"p": {"k": 1, "k": 2}})", "f.json");
  ASSERT_FALSE(nested.ok());
  EXPECT_EQ(nested.error().message, "f.json: duplicate key \"k\" inside \"p\"");
  EXPECT_TRUE(ParseJsonStrict(R"({"p": {"k": 1}, "q": {"k": 2}})", "f.json").ok());
}

TEST(JsonParseTest, MalformedDoesNotEchoBytes) {
  auto r = ParseJsonStrict("root:x:0:0:secret", "/etc/passwd");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(r.error().message.rfind("/etc/passwd: malformed JSON", 0), 0u) << r.error().message;
  EXPECT_EQ(r.error().message.find("root"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find("secret"), std::string::npos) << r.error().message;
  EXPECT_FALSE(ParseJsonStrict("", "e").ok());
  EXPECT_FALSE(ParseJsonStrict("{\"a\": 1} trailing", "e").ok());
}

TEST(JsonParseTest, DepthIsCapped) {
  std::string ok_text = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(ParseJsonStrict(ok_text, "d").ok());
  std::string too_deep = std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']');
  auto r = ParseJsonStrict(too_deep, "d.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "d.json: nested deeper than 64 levels");
  std::string objects;
  for (size_t i = 0; i <= kMaxJsonDepth; ++i) objects += "{\"k\":";
  objects += "1" + std::string(kMaxJsonDepth + 1, '}');
  EXPECT_FALSE(ParseJsonStrict(objects, "d").ok());
}

TEST(JsonParseTest, HundredThousandLevelsFailFast) {
  const std::string text = std::string(100000, '[') + std::string(100000, ']');
  const double start = CpuNow();
  auto r = ParseJsonStrict(text, "deep.json");
  EXPECT_LT((CpuNow() - start), 1.0);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("nested deeper"), std::string::npos);
  // Unterminated nesting too.
  EXPECT_FALSE(ParseJsonStrict(std::string(100000, '{'), "deep.json").ok());
}

TEST(JsonParseTest, ManyKeysParseInLinearTime) {
  // 200k entries whose values are objects: nlohmann's callback parser rescans the parent at every object end.
  std::string text = "{";
  for (int i = 0; i < 200000; ++i) {
    if (i) text += ",";
    text += "\"t" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  }
  text += "}";
  const double start = CpuNow();
  auto r = ParseJsonStrict(text, "big");
  const double s = (CpuNow() - start);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 200000u);
  EXPECT_LT(s, 2.0);
}

}  // namespace
}  // namespace bigplan
