// Unit tests of the tokenizer pipeline on small hand-written tokenizer.json documents. Parity with the Python
// tokenizers package on real-sized models is tokenizer_parity_test.
#include "text/tokenizer.h"

#include <gtest/gtest.h>

#include <string>

namespace bigplan::text {
namespace {

// A byte-level BPE over "a", "b", "ab", "abb" and the 256 byte characters, with one special token.
std::string ByteLevelJson(const std::string& extra_model = "") {
  std::string vocab;
  // The byte-level alphabet: printable ASCII maps to itself; use only a few characters here.
  vocab = R"("a": 0, "b": 1, "ab": 2, "abb": 3, "Ġ": 4, "Ġab": 5, "ä": 6, "¸": 7, "Ń": 8)";
  return R"({"version": "1.0", "added_tokens": [{"id": 9, "content": "<|end|>", "single_word": false,
    "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, )" +
         extra_model + R"(
      "vocab": {)" +
         vocab + R"(}, "merges": [["a", "b"], ["ab", "b"], ["Ġ", "ab"]]}})";
}

TEST(Tokenizer, ByteLevelBpeMergesByRank) {
  auto tok = Tokenizer::FromJson(ByteLevelJson(), "test.json");
  ASSERT_TRUE(tok.ok()) << tok.error().ToString();
  auto ids = (*tok)->Encode("abb ab<|end|>a");
  ASSERT_TRUE(ids.ok()) << ids.error().ToString();
  EXPECT_EQ(*ids, (std::vector<int64_t>{3, 5, 9, 0}));
  EXPECT_EQ((*tok)->Decode(*ids), "abb ab<|end|>a");
  EXPECT_EQ((*tok)->Decode(*ids, /*skip_special_tokens=*/true), "abb aba");
  EXPECT_TRUE((*tok)->IsSpecial(9));
  EXPECT_EQ((*tok)->TokenToId("<|end|>"), 9);
  EXPECT_EQ((*tok)->IdToToken(5), "Ġab");
  EXPECT_EQ((*tok)->vocab_size(), 10);
}

TEST(Tokenizer, MissingCharacterWithoutUnkIsAnError) {
  auto tok = Tokenizer::FromJson(ByteLevelJson(), "test.json");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("abc");
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.error().message.find("not in the vocabulary"), std::string::npos);
}

TEST(Tokenizer, InvalidUtf8IsRefused) {
  auto tok = Tokenizer::FromJson(ByteLevelJson(), "test.json");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("a\xff");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.error().code, ErrorCode::kInvalidArgument);
}

TEST(Tokenizer, StreamDecoderNeverSplitsACharacter) {
  auto tok = Tokenizer::FromJson(ByteLevelJson(), "test.json");
  ASSERT_TRUE(tok.ok());
  // "中" is E4 B8 AD: byte-level characters ä (E4), ¸ (B8), Ń (AD).
  StreamDecoder sd(**tok, false);
  EXPECT_EQ(sd.Next(0), "a");
  EXPECT_EQ(sd.Next(6), "");  // E4: incomplete
  EXPECT_EQ(sd.Next(7), "");  // E4 B8: incomplete
  EXPECT_EQ(sd.Next(8), "\xE4\xB8\xAD");
  EXPECT_EQ(sd.Next(6), "");
  EXPECT_EQ(sd.Finish(), "\xEF\xBF\xBD");  // an unfinished character at the end becomes U+FFFD
}

TEST(Tokenizer, UnsupportedComponentsAreNamed) {
  std::string j = ByteLevelJson();
  j.replace(j.find("\"normalizer\": null"), 18, R"("normalizer": {"type": "BertNormalizer"})");
  auto tok = Tokenizer::FromJson(j, "x/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(tok.error().message.find("x/tokenizer.json"), std::string::npos);
  EXPECT_NE(tok.error().message.find("BertNormalizer"), std::string::npos);
}

TEST(Tokenizer, CorruptFilesAreNamed) {
  auto tok = Tokenizer::FromJson("{not json", "bad/tokenizer.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(tok.error().message.find("bad/tokenizer.json"), std::string::npos);
  std::string j = ByteLevelJson();
  j.replace(j.find("[\"ab\", \"b\"]"), 11, "[\"ab\", \"zz\"]");
  tok = Tokenizer::FromJson(j, "m.json");
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.error().message.find("not in vocab"), std::string::npos);
}

TEST(Tokenizer, LoadNamesTheMissingDirectory) {
  auto tok = Tokenizer::Load("/nonexistent/model-dir");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code, ErrorCode::kNotFound);
  EXPECT_NE(tok.error().message.find("/nonexistent/model-dir"), std::string::npos);
}

}  // namespace
}  // namespace bigplan::text
