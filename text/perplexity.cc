#include "text/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "support/file_read.h"
#include "support/sha256.h"

namespace bigplan::text {
namespace {

constexpr const char* kMagic = "bigplan-argmax";
constexpr int kVersion = 1;
// An argmax file holds one id per scored token: 64 MiB of text holds ~7M of them.
constexpr FileKind kArgmaxFile{"argmax file", 1024 * kMiB};

}  // namespace

Result<std::vector<Window>> SplitWindows(int64_t num_tokens, int64_t window) {
  if (window < 2) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "window " + std::to_string(window) + ": a window needs at least 2 tokens (one to score)");
  }
  if (num_tokens < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "negative token count " + std::to_string(num_tokens));
  }
  std::vector<Window> out;
  for (int64_t begin = 0; begin < num_tokens; begin += window) {
    const int64_t length = std::min(window, num_tokens - begin);
    if (length >= 2) out.push_back(Window{begin, length});
  }
  return out;
}

double TokenNll(const float* row, int64_t vocab, int64_t target) {
  double max = row[0];
  for (int64_t v = 1; v < vocab; ++v) max = std::max(max, static_cast<double>(row[v]));
  double sum = 0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return std::log(sum) + max - static_cast<double>(row[target]);
}

int64_t Argmax(const float* row, int64_t vocab) {
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v) {
    if (row[v] > row[best]) best = v;
  }
  return best;
}

Status PerplexityAccumulator::AddWindow(const std::vector<int64_t>& tokens, const float* logits, int64_t vocab) {
  const int64_t len = static_cast<int64_t>(tokens.size());
  const std::string where = "window " + std::to_string(windows_);
  if (len < 2) {
    return MakeError(ErrorCode::kInvalidArgument, where + ": " + std::to_string(len) + " tokens; at least 2 needed");
  }
  if (vocab <= 0) return MakeError(ErrorCode::kInvalidArgument, where + ": vocab " + std::to_string(vocab));
  for (int64_t i = 0; i < len; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return MakeError(ErrorCode::kInvalidArgument, where + ": token " + std::to_string(tokens[i]) + " at position " +
                                                        std::to_string(i) + " is outside the vocabulary [0, " +
                                                        std::to_string(vocab) + ")");
    }
  }
  double nll = 0;
  std::vector<int64_t> argmax;
  argmax.reserve(len - 1);
  for (int64_t i = 1; i < len; ++i) {
    const float* row = logits + (i - 1) * vocab;
    for (int64_t v = 0; v < vocab; ++v) {
      if (!std::isfinite(row[v])) {
        return MakeError(ErrorCode::kCorrupt, where + ": the logits at position " + std::to_string(i - 1) +
                                                  " are not finite (id " + std::to_string(v) + ": " +
                                                  std::to_string(row[v]) + ")");
      }
    }
    nll += TokenNll(row, vocab, tokens[i]);
    argmax.push_back(Argmax(row, vocab));
  }
  total_nll_ += nll;
  argmax_.insert(argmax_.end(), argmax.begin(), argmax.end());
  ++windows_;
  return Status::Ok();
}

double PerplexityAccumulator::mean_nll() const {
  return argmax_.empty() ? 0.0 : total_nll_ / static_cast<double>(argmax_.size());
}

double PerplexityAccumulator::perplexity() const { return std::exp(mean_nll()); }

std::string TokenIdsSha256(const std::vector<int64_t>& ids) {
  Sha256 h;
  for (int64_t id : ids) {
    uint8_t le[8];
    const uint64_t u = static_cast<uint64_t>(id);
    for (int b = 0; b < 8; ++b) le[b] = static_cast<uint8_t>(u >> (8 * b));
    h.Update(le, 8);
  }
  return h.HexDigest();
}

Status WriteArgmaxFile(const std::string& path, const ArgmaxRecord& record) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return MakeError(ErrorCode::kIo, path + ": cannot open the argmax file for writing");
  std::string source = record.source;
  for (char& c : source) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  out << kMagic << " " << kVersion << "\n"
      << "tokens " << record.tokens << "\n"
      << "window " << record.window << "\n"
      << "tokens_sha256 " << record.tokens_sha256 << "\n"
      << "positions " << record.ids.size() << "\n"
      << "source " << source << "\n"
      << "ids\n";
  for (size_t i = 0; i < record.ids.size(); ++i) {
    out << record.ids[i] << ((i + 1) % 32 == 0 || i + 1 == record.ids.size() ? "\n" : " ");
  }
  out.flush();
  if (!out) return MakeError(ErrorCode::kIo, path + ": writing the argmax file failed");
  return Status::Ok();
}

Result<ArgmaxRecord> ReadArgmaxFile(const std::string& path) {
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(path, kArgmaxFile));
  auto corrupt = [&](const std::string& why) {
    return MakeError(ErrorCode::kCorrupt, path + ": not an argmax file of this version: " + why);
  };
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != std::string(kMagic) + " " + std::to_string(kVersion)) {
    return corrupt("the first line is not \"" + std::string(kMagic) + " " + std::to_string(kVersion) + "\"");
  }
  std::map<std::string, std::string> header;
  bool saw_ids = false;
  int line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line == "ids") {
      saw_ids = true;
      break;
    }
    const size_t space = line.find(' ');
    if (space == std::string::npos) return corrupt("line " + std::to_string(line_no) + " is not \"key value\"");
    header[line.substr(0, space)] = line.substr(space + 1);
  }
  if (!saw_ids) return corrupt("no \"ids\" line");
  auto number = [&](const char* key) -> Result<int64_t> {
    auto it = header.find(key);
    if (it == header.end()) return corrupt(std::string("missing key \"") + key + "\"");
    try {
      size_t used = 0;
      const long long v = std::stoll(it->second, &used);
      if (used != it->second.size() || v < 0) throw std::invalid_argument(key);
      return static_cast<int64_t>(v);
    } catch (const std::exception&) {
      return corrupt(std::string("key \"") + key + "\" is not a count: \"" + it->second + "\"");
    }
  };
  ArgmaxRecord r;
  BIGPLAN_ASSIGN_OR_RETURN(r.tokens, number("tokens"));
  BIGPLAN_ASSIGN_OR_RETURN(r.window, number("window"));
  BIGPLAN_ASSIGN_OR_RETURN(int64_t positions, number("positions"));
  auto sha = header.find("tokens_sha256");
  if (sha == header.end()) return corrupt("missing key \"tokens_sha256\"");
  r.tokens_sha256 = sha->second;
  if (auto s = header.find("source"); s != header.end()) r.source = s->second;
  std::string word;
  while (in >> word) {
    try {
      size_t used = 0;
      const long long v = std::stoll(word, &used);
      if (used != word.size() || v < 0) throw std::invalid_argument(word);
      r.ids.push_back(v);
    } catch (const std::exception&) {
      return corrupt("id " + std::to_string(r.ids.size()) + " is not a token id: \"" + word + "\"");
    }
  }
  if (static_cast<int64_t>(r.ids.size()) != positions) {
    return corrupt("\"positions " + std::to_string(positions) + "\" but " + std::to_string(r.ids.size()) +
                   " ids follow");
  }
  return r;
}

Result<double> GreedyAgreement(const ArgmaxRecord& ours, const ArgmaxRecord& reference,
                               const std::string& reference_name) {
  auto mismatch = [&](const std::string& field, const std::string& theirs, const std::string& mine) {
    return MakeError(ErrorCode::kMismatch, reference_name + ": the reference scored different tokens: " + field +
                                               " " + theirs + " there, " + mine +
                                               " here (use the same text, tokenizer, --window and --max-tokens)");
  };
  if (reference.tokens != ours.tokens) {
    return mismatch("tokens", std::to_string(reference.tokens), std::to_string(ours.tokens));
  }
  if (reference.window != ours.window) {
    return mismatch("window", std::to_string(reference.window), std::to_string(ours.window));
  }
  if (reference.tokens_sha256 != ours.tokens_sha256) {
    return mismatch("tokens_sha256", reference.tokens_sha256, ours.tokens_sha256);
  }
  if (reference.ids.size() != ours.ids.size()) {
    return mismatch("positions", std::to_string(reference.ids.size()), std::to_string(ours.ids.size()));
  }
  if (ours.ids.empty()) return 1.0;
  int64_t same = 0;
  for (size_t i = 0; i < ours.ids.size(); ++i) same += ours.ids[i] == reference.ids[i];
  return static_cast<double>(same) / static_cast<double>(ours.ids.size());
}

}  // namespace bigplan::text
