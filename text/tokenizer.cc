#include "text/tokenizer.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "text/hf_tokenizer.h"
#include "text/sp_tokenizer.h"

namespace bigplan::text {
namespace {

bool IsFile(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& json_text, const std::string& name) {
  return ParseTokenizerJson(json_text, name);
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::string json_path, sp_path;
  if (IsDir(path)) {
    if (IsFile(path + "/tokenizer.json"))
      json_path = path + "/tokenizer.json";
    else if (IsFile(path + "/tokenizer.model"))
      sp_path = path + "/tokenizer.model";
    else
      return MakeError(ErrorCode::kNotFound, path + ": no tokenizer.json or tokenizer.model");
  } else if (IsFile(path)) {
    if (EndsWith(path, ".model"))
      sp_path = path;
    else
      json_path = path;
  } else {
    return MakeError(ErrorCode::kNotFound, path + ": no such file or directory");
  }
  if (!sp_path.empty()) return LoadSentencePiece(sp_path);
  std::ifstream in(json_path, std::ios::binary);
  if (!in) return MakeError(ErrorCode::kIo, json_path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseTokenizerJson(ss.str(), json_path);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {}

std::string StreamDecoder::Next(int64_t id) {
  ids_.push_back(id);
  // A byte-fallback token ("<0xE4>") belongs to a run whose bytes decode together (all valid, or one U+FFFD per
  // byte): wait for the run to end so that text already emitted never changes.
  const std::optional<std::string> token = tok_.IdToToken(id);
  if (token && token->size() == 6 && token->compare(0, 3, "<0x") == 0 && (*token)[5] == '>') return "";
  std::string text = tok_.Decode(ids_, skip_special_);
  static const std::string kReplacement = "\xEF\xBF\xBD";
  const bool incomplete = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
  if (text.size() <= prefix_.size() || incomplete) return "";
  // The decoded window starts with what was emitted from it; emit the rest.
  std::string out = text.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tok_.Decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return out;
}

std::string StreamDecoder::Finish() {
  std::string text = tok_.Decode(ids_, skip_special_);
  std::string out = text.size() > prefix_.size() ? text.substr(prefix_.size()) : "";
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return out;
}

}  // namespace bigplan::text
