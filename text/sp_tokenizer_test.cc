// SentencePiece models (tokenizer.model only): a small BPE model with byte fallback is trained here with
// Debian's libsentencepiece_train, then loaded through Tokenizer::Load like a model directory.
#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <fstream>

#include "text/tokenizer.h"

namespace bigplan::text {
namespace {

std::string TrainModel() {
  const std::string dir = ::testing::TempDir() + "/sp_model";
  std::system(("mkdir -p " + dir).c_str());
  {
    std::ofstream corpus(dir + "/corpus.txt");
    for (int i = 0; i < 200; ++i) {
      corpus << "Hello world, this is sentence number " << i << " about tokenizers and models.\n";
      corpus << "The quick brown fox jumps over the lazy dog " << i * 7 << " times.\n";
    }
  }
  const auto st =
      sentencepiece::SentencePieceTrainer::Train("--input=" + dir + "/corpus.txt --model_prefix=" + dir +
                                                 "/tokenizer --vocab_size=300 --model_type=bpe "
                                                 "--byte_fallback=true --character_coverage=1.0 --minloglevel=2");
  EXPECT_TRUE(st.ok()) << st.ToString();
  return dir;
}

TEST(SentencePiece, LoadsADirectoryWithOnlyTokenizerModel) {
  const std::string dir = TrainModel();
  auto tok = Tokenizer::Load(dir);
  ASSERT_TRUE(tok.ok()) << tok.error().ToString();
  EXPECT_EQ((*tok)->kind(), "sentencepiece");
  EXPECT_EQ((*tok)->vocab_size(), 300);
  auto ids = (*tok)->Encode("Hello world");
  ASSERT_TRUE(ids.ok()) << ids.error().ToString();
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ((*ids)[0], 1);  // BOS, as Llama-2's tokenizer adds it
  EXPECT_TRUE((*tok)->IsSpecial(1));
  EXPECT_EQ((*tok)->Decode(*ids, /*skip_special_tokens=*/true), "Hello world");
  auto plain = (*tok)->Encode("Hello world", /*add_special_tokens=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->size() + 1, ids->size());
}

TEST(SentencePiece, ByteFallbackRoundTripsUnseenCharacters) {
  auto tok = Tokenizer::Load(TrainModel());
  ASSERT_TRUE(tok.ok()) << tok.error().ToString();
  const std::string text = "fox 東京 😀 jumps";
  auto ids = (*tok)->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ((*tok)->Decode(*ids), text);
  // Streaming decode of byte pieces never splits a character.
  StreamDecoder sd(**tok, false);
  std::string all;
  for (int64_t id : *ids) {
    const std::string c = sd.Next(id);
    EXPECT_EQ(c.find("\xEF\xBF\xBD"), std::string::npos);
    all += c;
  }
  all += sd.Finish();
  EXPECT_EQ(all, text);
}

TEST(SentencePiece, CorruptModelIsNamed) {
  const std::string dir = ::testing::TempDir() + "/sp_bad";
  std::system(("mkdir -p " + dir).c_str());
  std::ofstream(dir + "/tokenizer.model") << "not a model";
  auto tok = Tokenizer::Load(dir);
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(tok.error().message.find("tokenizer.model"), std::string::npos);
}

}  // namespace
}  // namespace bigplan::text
