// Tokenizers of Hugging Face models, in C++ with no Python at run time.
//
// Tokenizer::Load reads a model directory's `tokenizer.json` (the Hugging Face `tokenizers` format) or, where only
// `tokenizer.model` exists, a SentencePiece model. The tokenizer.json support covers what the GPT-2, Llama-2/3,
// Mistral, Qwen2 and SmolLM2 families use and is bit-exact with the Python `tokenizers` package for them:
//   model:          BPE (merges as "a b" strings or [a, b] pairs; byte_fallback, unk_token, fuse_unk,
//                   ignore_merges, continuing_subword_prefix, end_of_word_suffix; no dropout)
//   added tokens:   special and non-special, lstrip / rstrip / single_word / normalized
//   normalizers:    Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace (string or regex), Strip, ByteLevel
//   pre-tokenizers: Sequence, ByteLevel, Split (string or regex; every behavior; invert), Metaspace, Digits,
//                   Whitespace, WhitespaceSplit
//   post-processors: TemplateProcessing (single sequences), ByteLevel, RobertaProcessing, BertProcessing, Sequence
//   decoders:       Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
// Regexes are PCRE2 (see text/regex.h), normalization forms ICU. Anything else is refused at load with
// kUnsupported naming the component and the file.
//
// A Tokenizer is immutable after Load: Encode and Decode may be called from any number of threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "support/result.h"

namespace bigplan::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // `path` is a directory holding tokenizer.json (preferred) or tokenizer.model, or the path of either file.
  // kNotFound when neither exists (naming the directory); kCorrupt for a file that does not parse (naming it and
  // the field); kUnsupported for a component this build does not implement.
  static Result<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // A tokenizer.json given as text; `name` is used in error messages.
  static Result<std::unique_ptr<Tokenizer>> FromJson(const std::string& json_text, const std::string& name);

  // Token ids of `text`, as Python's `Tokenizer.encode(text, add_special_tokens=...).ids`: added tokens in the
  // text (e.g. "<|im_start|>") become their ids, and with add_special_tokens the post-processor adds its tokens
  // (e.g. Llama's BOS). kInvalidArgument if `text` is not valid UTF-8.
  virtual Result<std::vector<int64_t>> Encode(std::string_view text, bool add_special_tokens = true) const = 0;

  // Text of `ids`, as Python's `Tokenizer.decode(ids, skip_special_tokens=...)`: ids the tokenizer does not know
  // are left out; invalid UTF-8 produced by byte tokens becomes U+FFFD.
  virtual std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;

  // The vocabulary, added tokens included.
  virtual std::optional<int64_t> TokenToId(std::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int64_t id) const = 0;
  // True for added tokens marked special (what skip_special_tokens leaves out).
  virtual bool IsSpecial(int64_t id) const = 0;
  // One past the highest id.
  virtual int64_t vocab_size() const = 0;
  // "tokenizer.json" or "sentencepiece".
  virtual std::string kind() const = 0;
};

// Streaming decoding for generation: feed ids one at a time, get the text they add. Never returns part of a UTF-8
// character: text that ends in an incomplete sequence, or in byte-fallback tokens ("<0xE4>"), is held back until
// the next ids complete it (or Finish).
// The concatenation of every Next() and Finish() equals tokenizer.Decode(all ids) (the same windowing as the
// Python tokenizers' DecodeStream, so decoders that strip a leading space stay consistent).
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  // The text `id` completes (often empty while a multi-byte character is incomplete).
  std::string Next(int64_t id);
  // Whatever was held back (an incomplete character at the end becomes U+FFFD).
  std::string Finish();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int64_t> ids_;  // window: ids_[0, prefix_index_) are already emitted context
  std::string prefix_;        // Decode(ids_) as emitted
  size_t prefix_index_ = 0;
};

}  // namespace bigplan::text
