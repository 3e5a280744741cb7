#include "formats/json_util.h"

#include <exception>
#include <set>
#include <vector>

namespace bigplan::formats_internal {

Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source) {
  using json = nlohmann::json;
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::vector<std::string> current;         // the latest key of each open object
  std::string duplicate, parent;
  size_t duplicate_depth = 0;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        current.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        if (!current.empty()) current.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string()) {
          const std::string& key = parsed.get_ref<const std::string&>();
          current.back() = key;
          if (duplicate.empty() && !keys.back().insert(key).second) {
            duplicate = key;
            duplicate_depth = keys.size();
            if (current.size() >= 2) parent = current[current.size() - 2];
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  json result;
  try {
    result = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    return MakeError(ErrorCode::kCorrupt, source + ": malformed JSON: " + e.what());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorrupt, source + ": cannot parse JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    if (duplicate_depth == 1) {
      return MakeError(ErrorCode::kCorrupt, source + ": duplicate entry \"" + duplicate + "\"");
    }
    return MakeError(ErrorCode::kCorrupt, source + ": duplicate key \"" + duplicate + "\" inside \"" + parent + "\"");
  }
  return result;
}

const char* JsonTypeName(const nlohmann::json& j) { return j.type_name(); }

}  // namespace bigplan::formats_internal
