// Strict JSON parsing shared by the safetensors and index readers (internal to formats/).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "support/result.h"

namespace bigplan::formats_internal {

// Parses `text` as JSON without throwing. kCorrupt, with a message starting with `source`, for malformed JSON
// and for an object that repeats a key (nlohmann would silently keep the last value).
Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source);

// "object", "array", "string", "number", ... for error messages.
const char* JsonTypeName(const nlohmann::json& j);

}  // namespace bigplan::formats_internal
