#include "text/streamer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace bigplan::text {

namespace {

// 1: found ids, 0: no such file or field, error: bad file.
Result<bool> EosFrom(const std::string& path, std::vector<int64_t>* ids) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return MakeError(ErrorCode::kCorrupt, path + ": not a JSON object");
  if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) return false;
  const nlohmann::json& e = j["eos_token_id"];
  if (e.is_number_integer()) {
    ids->push_back(e.get<int64_t>());
    return true;
  }
  if (e.is_array()) {
    for (const auto& x : e) {
      if (!x.is_number_integer()) return MakeError(ErrorCode::kCorrupt, path + ": eos_token_id: expected integers");
      ids->push_back(x.get<int64_t>());
    }
    return !ids->empty();
  }
  return MakeError(ErrorCode::kCorrupt, path + ": eos_token_id: expected an integer or a list of integers");
}

}  // namespace

Result<std::vector<int64_t>> LoadEosTokenIds(const std::string& dir) {
  std::vector<int64_t> ids;
  BIGPLAN_ASSIGN_OR_RETURN(bool found, EosFrom(dir + "/generation_config.json", &ids));
  if (found) return ids;
  ids.clear();
  BIGPLAN_ASSIGN_OR_RETURN(found, EosFrom(dir + "/config.json", &ids));
  return ids;
}

TextStreamer::TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings, bool skip_special_tokens)
    : decoder_(tokenizer, skip_special_tokens), stops_(std::move(stop_strings)) {
  stops_.erase(std::remove_if(stops_.begin(), stops_.end(), [](const std::string& s) { return s.empty(); }),
               stops_.end());
}

std::string TextStreamer::Emit(bool final, bool* stop) {
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    std::string out = pending_.substr(0, first);
    pending_.clear();
    stopped_ = true;
    if (stop) *stop = true;
    return out;
  }
  size_t keep = 0;  // the longest suffix of pending_ that starts a stop string
  if (!final) {
    for (const std::string& s : stops_) {
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > keep; --n) {
        if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string TextStreamer::Next(int64_t id, bool* stop) {
  if (stop) *stop = stopped_;
  if (stopped_) return "";
  pending_ += decoder_.Next(id);
  return Emit(false, stop);
}

std::string TextStreamer::Finish() {
  if (stopped_) return "";
  pending_ += decoder_.Finish();
  return Emit(true, nullptr);
}

}  // namespace bigplan::text
