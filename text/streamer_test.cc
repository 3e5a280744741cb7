#include "text/streamer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace bigplan::text {
namespace {

// Characters as tokens: ids 0..5 = "a", "b", "c", " ", "<end>" (special), "\xE4\xB8\xAD" (one CJK character).
std::unique_ptr<Tokenizer> CharTokenizer() {
  const std::string json = R"({"added_tokens": [{"id": 4, "content": "<end>", "special": true, "normalized": false}],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": {"type": "Fuse"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, " ": 3, "<end>": 4, "中": 5}, "merges": []}})";
  auto t = Tokenizer::FromJson(json, "chars");
  EXPECT_TRUE(t.ok()) << t.error().ToString();
  return std::move(t).value();
}

std::string Stream(const Tokenizer& tok, const std::vector<int64_t>& ids, std::vector<std::string> stops, bool* stopped,
                   std::vector<std::string>* chunks = nullptr) {
  TextStreamer s(tok, std::move(stops));
  std::string all;
  *stopped = false;
  for (int64_t id : ids) {
    bool stop = false;
    const std::string c = s.Next(id, &stop);
    if (chunks) chunks->push_back(c);
    all += c;
    if (stop) {
      *stopped = true;
      break;
    }
  }
  all += s.Finish();
  return all;
}

TEST(TextStreamer, SkipsSpecialTokensAndStopsAtStopStrings) {
  auto tok = CharTokenizer();
  bool stopped = false;
  EXPECT_EQ(Stream(*tok, {0, 1, 4, 2}, {}, &stopped), "abc");
  EXPECT_FALSE(stopped);
  std::vector<std::string> chunks;
  EXPECT_EQ(Stream(*tok, {0, 3, 1, 2, 0, 0}, {"bc"}, &stopped, &chunks), "a ");
  EXPECT_TRUE(stopped);
  // "b" is held back while it could start "bc".
  EXPECT_EQ(chunks, (std::vector<std::string>{"a", " ", "", ""}));
  // A held-back prefix that does not complete is released.
  EXPECT_EQ(Stream(*tok, {1, 0}, {"bc"}, &stopped), "ba");
  EXPECT_FALSE(stopped);
  EXPECT_EQ(Stream(*tok, {0, 1}, {"bc"}, &stopped), "ab");
}

TEST(TextStreamer, StopStringsSpanningCharacters) {
  auto tok = CharTokenizer();
  bool stopped = false;
  EXPECT_EQ(Stream(*tok, {0, 5, 1}, {"中b"}, &stopped), "a");
  EXPECT_TRUE(stopped);
}

TEST(Eos, GenerationConfigFirstThenConfig) {
  const std::string dir = ::testing::TempDir() + "/eos_model";
  std::system(("mkdir -p " + dir).c_str());
  std::ofstream(dir + "/config.json") << R"({"eos_token_id": 2})";
  auto ids = LoadEosTokenIds(dir);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{2}));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": [128001, 128009]})";
  ids = LoadEosTokenIds(dir);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{128001, 128009}));
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": "x"})";
  ids = LoadEosTokenIds(dir);
  ASSERT_FALSE(ids.ok());
  EXPECT_NE(ids.error().message.find("generation_config.json"), std::string::npos);
}

}  // namespace
}  // namespace bigplan::text
