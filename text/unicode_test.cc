#include "text/unicode.h"

#include <gtest/gtest.h>

#include "text/regex.h"

namespace bigplan::text {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Unicode, ValidUtf8) {
  EXPECT_TRUE(IsValidUtf8("abc \xE4\xB8\xAD \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xE4\xB8"));          // truncated
}

TEST(Unicode, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(Utf8Lossy("a\xE4\xB8"
                      "b"),
            "a" + kFffd + "b");                                 // one U+FFFD for a truncated sequence
  EXPECT_EQ(Utf8Lossy("\x80\x80"), kFffd + kFffd);              // lone continuation bytes: one each
  EXPECT_EQ(Utf8Lossy("\xF0\x9F\x98"), kFffd);                  // truncated 4-byte sequence at the end
  EXPECT_EQ(Utf8Lossy("\xE0\x80\x80"), kFffd + kFffd + kFffd);  // E0 80: 80 is outside A0..BF
  EXPECT_EQ(Utf8Lossy("\xED\xA0\x80"), kFffd + kFffd + kFffd);  // surrogates
  EXPECT_EQ(Utf8Lossy("ok \xF0\x9F\x98\x80"), "ok \xF0\x9F\x98\x80");
}

TEST(Unicode, CompletePrefixHoldsBackUnfinishedCharacters) {
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE4\xB8"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE4\xB8\xAD"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xF0"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\x80"), 3u);  // invalid, not incomplete: nothing to wait for
}

TEST(Unicode, ByteLevelMapRoundTrips) {
  EXPECT_EQ(ByteToUnicode(' '), "\xC4\xA0");   // Ġ
  EXPECT_EQ(ByteToUnicode('\n'), "\xC4\x8A");  // Ċ
  EXPECT_EQ(ByteToUnicode('a'), "a");
  for (int b = 0; b < 256; ++b) {
    size_t i = 0;
    const uint32_t cp = NextCodePoint(ByteToUnicode(static_cast<unsigned char>(b)), &i);
    EXPECT_EQ(UnicodeToByte(cp), b);
  }
  EXPECT_EQ(UnicodeToByte(0x4E2D), -1);
}

TEST(Unicode, NormalizationForms) {
  auto nfc = Normalize("e\xCC\x81", NormalForm::kNFC);  // e + combining acute
  ASSERT_TRUE(nfc.ok());
  EXPECT_EQ(*nfc, "\xC3\xA9");
  auto nfkc = Normalize("\xEF\xAC\x81", NormalForm::kNFKC);  // ﬁ ligature
  ASSERT_TRUE(nfkc.ok());
  EXPECT_EQ(*nfkc, "fi");
  auto nfd = Normalize("\xC3\xA9", NormalForm::kNFD);
  ASSERT_TRUE(nfd.ok());
  EXPECT_EQ(*nfd, "e\xCC\x81");
}

TEST(Regex, FindAllAndUnicodeClasses) {
  auto re = Regex::Compile(R"( ?\p{L}+| ?\p{N}+|\s+(?!\S)|\s+)");
  ASSERT_TRUE(re.ok()) << re.error().ToString();
  const std::string s = "héllo  123 世界";
  auto m = re->FindAll(s);
  std::vector<std::string> parts;
  for (auto [a, b] : m) parts.push_back(s.substr(a, b - a));
  EXPECT_EQ(parts, (std::vector<std::string>{"héllo", " ", " 123", " 世界"}));
}

TEST(Regex, WhitespaceIncludesNelAsOniguruma) {
  auto re = Regex::Compile(R"(\s+|[^\s]+)");
  ASSERT_TRUE(re.ok());
  const std::string s =
      "a\xC2\x85\xC2\x85"
      "b";  // a NEL NEL b
  auto m = re->FindAll(s);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[1], (std::pair<size_t, size_t>{1, 5}));
}

TEST(Regex, BadPatternIsAnError) {
  auto re = Regex::Compile("(unclosed");
  ASSERT_FALSE(re.ok());
  EXPECT_NE(re.error().message.find("(unclosed"), std::string::npos);
}

TEST(Regex, LiteralEscapes) {
  auto re = Regex::Literal("a.b\\E(");
  ASSERT_TRUE(re.ok()) << re.error().ToString();
  const std::string s = "xa.b\\E(y axb";
  auto m = re->FindAll(s);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], (std::pair<size_t, size_t>{1, 7}));
}

}  // namespace
}  // namespace bigplan::text
