// A small Jinja2 interpreter for chat templates: what the chat templates of the Llama, Mistral, Qwen2 and SmolLM2
// families use, rendered as transformers renders them (jinja2's ImmutableSandboxedEnvironment with trim_blocks,
// lstrip_blocks and the loopcontrols extension).
//
// Supported: {{ }}, {% %}, {# #} with "-" whitespace control; if/elif/else, for (with else, loop.index/index0/
// first/last/length/revindex/revindex0/previtem/nextitem, tuple unpacking, inline "if" filters), set (names,
// namespace attributes, {% set %}...{% endset %}), break/continue, macro/call of simple macros, generation
// blocks (rendered as their body); expressions with Python semantics (literals, lists, dicts, attribute and item
// access, slices, calls, filters, tests, "a if c else b", and/or/not, in, comparisons, + - * / // % ~); the
// common filters, tests and str/dict methods, and the globals raise_exception, strftime_now, range, namespace.
// Values print as Python prints them (None, True, ['a'], {'k': 1}).
//
// Errors are values: a template that does not parse is kInvalidArgument with the line; raise_exception() and
// runtime type errors are kInvalidArgument with the message.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "support/result.h"

namespace bigplan::text::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, string keys (as JSON objects)
using Function = std::function<Result<Value>(const std::vector<Value>& args,
                                             const std::vector<std::pair<std::string, Value>>& kwargs)>;

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kFunction };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Function> fn;
  bool is_namespace = false;  // a namespace(): its attributes may be assigned with {% set ns.x = ... %}

  static Value Undefined() { return Value(); }
  static Value None() {
    Value v;
    v.kind = Kind::kNone;
    return v;
  }
  static Value Bool(bool x) {
    Value v;
    v.kind = Kind::kBool;
    v.b = x;
    return v;
  }
  static Value Int(int64_t x) {
    Value v;
    v.kind = Kind::kInt;
    v.i = x;
    return v;
  }
  static Value Float(double x) {
    Value v;
    v.kind = Kind::kFloat;
    v.f = x;
    return v;
  }
  static Value Str(std::string x) {
    Value v;
    v.kind = Kind::kString;
    v.s = std::move(x);
    return v;
  }
  static Value MakeList(List x = {}) {
    Value v;
    v.kind = Kind::kList;
    v.list = std::make_shared<List>(std::move(x));
    return v;
  }
  static Value MakeDict(Dict x = {}) {
    Value v;
    v.kind = Kind::kDict;
    v.dict = std::make_shared<Dict>(std::move(x));
    return v;
  }
  static Value Func(Function f) {
    Value v;
    v.kind = Kind::kFunction;
    v.fn = std::make_shared<Function>(std::move(f));
    return v;
  }

  // Parses JSON text into a Value (objects keep their key order). kInvalidArgument when it is not JSON.
  static Result<Value> FromJson(const std::string& json_text);

  bool defined() const { return kind != Kind::kUndefined; }
  // Python truthiness (undefined is false).
  bool Truthy() const;
  // A dict entry, or nullptr.
  const Value* Get(const std::string& key) const;
  // Adds or replaces a dict entry.
  void Set(const std::string& key, Value v);
};

// Python's str(value) (what {{ value }} prints; undefined prints nothing).
std::string ToString(const Value& v);
// Python's json.dumps(value, ensure_ascii=False, indent=indent) (indent < 0: none), as transformers' tojson.
std::string ToJson(const Value& v, int indent = -1);

class Template {
 public:
  // kInvalidArgument naming the line and what is wrong when `source` does not parse.
  static Result<Template> Parse(const std::string& source);

  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  ~Template();

  // Renders with `context` (a dict of globals: messages, add_generation_prompt, bos_token, ...).
  Result<std::string> Render(const Value& context) const;

  struct Node;

 private:
  Template();
  std::shared_ptr<Node> root_;
};

}  // namespace bigplan::text::jinja
