// The tokenizer.json implementation behind Tokenizer::Load (see text/tokenizer.h for what it supports).
#pragma once

#include <memory>
#include <string>

#include "support/result.h"
#include "text/tokenizer.h"

namespace bigplan::text {

// Parses a tokenizer.json document; `name` (usually its path) is used in error messages.
Result<std::unique_ptr<Tokenizer>> ParseTokenizerJson(const std::string& json_text, const std::string& name);

}  // namespace bigplan::text
