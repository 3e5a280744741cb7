// Regular expressions for tokenizer pre-tokenizers and normalizers: PCRE2 (UTF-8, Unicode properties, JIT) with the
// patterns Hugging Face tokenizers write for Oniguruma. One difference is bridged: Oniguruma's \s also matches
// U+0085 (NEL), PCRE2's does not, so \s and \S are rewritten to include it.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "support/result.h"

namespace bigplan::text {

class Regex {
 public:
  // kInvalidArgument with PCRE2's message and the offset when `pattern` does not compile.
  static Result<Regex> Compile(const std::string& pattern);
  // A pattern that matches `literal` exactly.
  static Result<Regex> Literal(const std::string& literal);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Non-overlapping matches, leftmost first, as [start, end) byte offsets into `s` (valid UTF-8). An empty match
  // is skipped and the search resumes one character later.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view s) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string pattern_;
};

}  // namespace bigplan::text
