#include "formats/json_util.h"

#include "support/json_parse.h"

namespace bigplan::formats_internal {

Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source) {
  return bigplan::ParseJsonStrict(text, source);
}

const char* JsonTypeName(const nlohmann::json& j) { return j.type_name(); }

}  // namespace bigplan::formats_internal
