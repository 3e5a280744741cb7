#include "support/json_parse.h"

#include <exception>
#include <utility>
#include <vector>

namespace bigplan {
namespace {

using json = nlohmann::json;

// Builds the tree from parser events, like nlohmann's own DOM builder, and stops at the first duplicate key or
// at a nesting deeper than the cap. (nlohmann's callback parser rescans a container's elements each time a
// child object ends, which is quadratic in the number of entries of one object.)
class StrictBuilder {
 public:
  StrictBuilder(json* root, size_t max_depth) : root_(root), max_depth_(max_depth) {}

  bool null() { return Put(json(nullptr)); }
  bool boolean(bool v) { return Put(json(v)); }
  bool number_integer(json::number_integer_t v) { return Put(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return Put(json(v)); }
  bool number_float(json::number_float_t v, const json::string_t& /*text*/) { return Put(json(v)); }
  bool string(json::string_t& v) { return Put(json(std::move(v))); }
  bool binary(json::binary_t& v) { return Put(json::binary(std::move(v))); }

  bool start_object(std::size_t /*elements*/) { return Open(json::value_t::object); }
  bool start_array(std::size_t /*elements*/) { return Open(json::value_t::array); }
  bool end_object() { return Close(); }
  bool end_array() { return Close(); }

  bool key(json::string_t& k) {
    Frame& f = stack_.back();
    if (f.node->contains(k)) {
      if (stack_.size() == 1) {
        error_ = "duplicate entry \"" + k + "\"";
      } else {
        error_ = "duplicate key \"" + k + "\" inside \"" + stack_[stack_.size() - 2].key + "\"";
      }
      return false;
    }
    f.key = std::move(k);
    return true;
  }

  bool parse_error(std::size_t position, const std::string& /*last_token*/, const nlohmann::detail::exception& ex) {
    // ex.what() ends with "; last read: '<bytes>'": keep the position and the reason, not the file's bytes.
    std::string what = ex.what();
    const size_t cut = what.find("; last read:");
    if (cut != std::string::npos) what.resize(cut);
    error_ = "malformed JSON: " + what + " (byte " + std::to_string(position) + ")";
    return false;
  }

  const std::string& error() const { return error_; }

 private:
  struct Frame {
    json* node;
    std::string key;  // the latest key of an object
  };

  json* Insert(json&& v) {
    if (stack_.empty()) {
      *root_ = std::move(v);
      return root_;
    }
    Frame& f = stack_.back();
    if (f.node->is_array()) {
      f.node->push_back(std::move(v));
      return &f.node->back();
    }
    json& slot = (*f.node)[f.key];
    slot = std::move(v);
    return &slot;
  }

  bool Put(json&& v) {
    Insert(std::move(v));
    return true;
  }

  bool Open(json::value_t type) {
    if (stack_.size() >= max_depth_) {
      error_ = "nested deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    json* node = Insert(json(type));
    stack_.push_back(Frame{node, {}});
    return true;
  }

  bool Close() {
    stack_.pop_back();
    return true;
  }

  json* root_;
  size_t max_depth_;
  std::vector<Frame> stack_;
  std::string error_;
};

}  // namespace

Result<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& source, size_t max_depth) {
  json result;
  StrictBuilder builder(&result, max_depth);
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json, /*strict=*/true);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kCorrupt, source + ": cannot parse JSON: " + e.what());
  }
  if (!ok) {
    return MakeError(ErrorCode::kCorrupt,
                     source + ": " + (builder.error().empty() ? std::string("malformed JSON") : builder.error()));
  }
  return result;
}

}  // namespace bigplan
