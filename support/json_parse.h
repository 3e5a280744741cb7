// The one JSON parser for every JSON file the tools read (config.json, indexes, safetensors headers, device maps,
// device profiles, model descriptions, rope_scaling strings inside plans).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "support/result.h"

namespace bigplan {

// Deepest nesting of arrays/objects accepted. Real inputs nest at most ~4 levels; 100k levels would overflow
// the stack of anything that walks the tree recursively (dump, copy, destruction in older nlohmann versions).
inline constexpr size_t kMaxJsonDepth = 64;

// Parses `text` as one JSON value without throwing, in time and memory linear in the text's size (an event
// parser builds the tree; no per-element rescans). kCorrupt, with a message starting with `source`, for:
//   - malformed JSON ("malformed JSON: ..." with the position; the offending bytes are not echoed);
//   - nesting deeper than `max_depth` ("nested deeper than N levels");
//   - an object that repeats a key ("duplicate entry \"k\"" at the top level, else "duplicate key \"k\" inside
//     \"parent\""): nlohmann (and Python) would silently keep one of the values.
Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source,
                                       size_t max_depth = kMaxJsonDepth);

}  // namespace bigplan
