// Generated text as it is generated: a model's end-of-sequence ids, and a streamer that turns token ids into text
// chunks that never split a UTF-8 character and end before a stop string.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "support/result.h"
#include "text/tokenizer.h"

namespace bigplan::text {

// The end-of-sequence ids of the model directory `dir`: generation_config.json's eos_token_id (an id or a list),
// else config.json's. Empty when neither names one. kCorrupt naming the file when one is not valid JSON or the
// field is neither an integer nor a list of integers.
Result<std::vector<int64_t>> LoadEosTokenIds(const std::string& dir);

// Streams the text of generated ids (special tokens skipped by default, as transformers' decode with
// skip_special_tokens=True) and stops at stop strings: the text before the first occurrence of any stop string is
// emitted, the stop string and what follows are not. Text that could be the start of a stop string is held back
// until it cannot be. The concatenation of every Next() and Finish() is the decoded text, cut at the first stop
// string.
class TextStreamer {
 public:
  TextStreamer(const Tokenizer& tokenizer, std::vector<std::string> stop_strings, bool skip_special_tokens = true);

  // The text that `id` makes final. Sets *stop (and returns the text before the stop string) when a stop string
  // has completed; after that, returns "".
  std::string Next(int64_t id, bool* stop);
  // What was held back (nothing after a stop string).
  std::string Finish();
  bool stopped() const { return stopped_; }

 private:
  std::string Emit(bool final, bool* stop);

  StreamDecoder decoder_;
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace bigplan::text
