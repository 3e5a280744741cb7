// SentencePiece models (tokenizer.model) through Debian's libsentencepiece, for model directories that have no
// tokenizer.json. Encode matches SentencePieceProcessor::Encode plus BOS (and EOS where the model defines one
// and `add_eos` is asked for) as Llama-2's slow tokenizer adds them; Decode is SentencePieceProcessor::Decode.
#pragma once

#include <memory>
#include <string>

#include "support/result.h"
#include "text/tokenizer.h"

namespace bigplan::text {

// kNotFound / kCorrupt naming `path` when it cannot be read or is not a SentencePiece model.
Result<std::unique_ptr<Tokenizer>> LoadSentencePiece(const std::string& path);

}  // namespace bigplan::text
