// Strict JSON parsing shared by the safetensors and index readers (internal to formats/).
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "support/result.h"

namespace bigplan::formats_internal {

// bigplan::ParseJsonStrict (support/json_parse.h): kCorrupt, with a message starting with `source`, for malformed
// JSON, nesting deeper than kMaxJsonDepth and an object that repeats a key; linear in the text's size.
Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source);

// "object", "array", "string", "number", ... for error messages.
const char* JsonTypeName(const nlohmann::json& j);

}  // namespace bigplan::formats_internal
