#include "text/sp_tokenizer.h"

#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "text/unicode.h"

namespace bigplan::text {
namespace {

class SpTokenizer final : public Tokenizer {
 public:
  explicit SpTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp) : sp_(std::move(sp)) {}

  Result<std::vector<int64_t>> Encode(std::string_view text, bool add_special_tokens) const override {
    if (!IsValidUtf8(text)) return MakeError(ErrorCode::kInvalidArgument, "text is not valid UTF-8");
    std::vector<int> ids;
    const auto st = sp_->Encode(text, &ids);
    if (!st.ok()) return MakeError(ErrorCode::kInvalidArgument, "sentencepiece: " + st.ToString());
    std::vector<int64_t> out;
    if (add_special_tokens && sp_->bos_id() >= 0) out.push_back(sp_->bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<int> v;
    for (int64_t id : ids) {
      if (id < 0 || id >= sp_->GetPieceSize()) continue;
      if (skip_special_tokens && IsSpecial(id)) continue;
      v.push_back(static_cast<int>(id));
    }
    std::string out;
    if (!sp_->Decode(v, &out).ok()) return "";
    return out;
  }
  std::optional<int64_t> TokenToId(std::string_view token) const override {
    const int id = sp_->PieceToId(token);
    if (id == sp_->unk_id() && token != sp_->IdToPiece(id)) return std::nullopt;
    return id;
  }
  std::optional<std::string> IdToToken(int64_t id) const override {
    if (id < 0 || id >= sp_->GetPieceSize()) return std::nullopt;
    return sp_->IdToPiece(static_cast<int>(id));
  }
  bool IsSpecial(int64_t id) const override {
    if (id < 0 || id >= sp_->GetPieceSize()) return false;
    return sp_->IsControl(static_cast<int>(id)) || sp_->IsUnknown(static_cast<int>(id));
  }
  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadSentencePiece(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakeError(ErrorCode::kNotFound, path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = sp->LoadFromSerializedProto(ss.str());
  if (!st.ok()) return MakeError(ErrorCode::kCorrupt, path + ": not a SentencePiece model: " + st.ToString());
  return std::unique_ptr<Tokenizer>(std::make_unique<SpTokenizer>(std::move(sp)));
}

}  // namespace bigplan::text
