// The interpreter uses one internal exception type (JinjaError) for parse and render errors; Parse and Render
// catch it and return it as an Error, so nothing escapes the public API.

#include "text/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "text/unicode.h"

namespace bigplan::text::jinja {

namespace {

struct JinjaError {
  std::string message;
};

[[noreturn]] void Fail(const std::string& m) { throw JinjaError{m}; }

using Kind = Value::Kind;

}  // namespace

// ---------------------------------------------------------------- values

bool Value::Truthy() const {
  switch (kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b;
    case Kind::kInt:
      return i != 0;
    case Kind::kFloat:
      return f != 0;
    case Kind::kString:
      return !s.empty();
    case Kind::kList:
      return !list->empty();
    case Kind::kDict:
      return !dict->empty();
    case Kind::kFunction:
      return true;
  }
  return false;
}

const Value* Value::Get(const std::string& key) const {
  if (kind != Kind::kDict) return nullptr;
  for (const auto& [k, v] : *dict) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Value::Set(const std::string& key, Value v) {
  for (auto& [k, old] : *dict) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  dict->emplace_back(key, std::move(v));
}

namespace {

Value FromNlohmann(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value::Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value::Str(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(FromNlohmann(e));
      return Value::MakeList(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (const auto& [k, v] : j.items()) d.emplace_back(k, FromNlohmann(v));
      return Value::MakeDict(std::move(d));
    }
    default:
      return Value::None();
  }
}

}  // namespace

Result<Value> Value::FromJson(const std::string& json_text) {
  auto j = nlohmann::ordered_json::parse(json_text, nullptr, false);
  if (j.is_discarded()) return MakeError(ErrorCode::kInvalidArgument, "not valid JSON");
  return FromNlohmann(j);
}

namespace {

std::string PyFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // d.ddde[+-]XX, shortest round-trip digits
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(-exp - 1, '0') + digits;
  } else {
    if (static_cast<int>(digits.size()) <= exp + 1) {
      out = digits + std::string(exp + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    }
  }
  return neg ? "-" + out : out;
}

std::string PyRepr(const Value& v);

std::string PyStrRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

std::string PyRepr(const Value& v) {
  if (v.kind == Kind::kString) return PyStrRepr(v.s);
  return ToString(v);
}

void JsonString(const std::string& s, std::string* out) {
  *out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        *out += "\\\"";
        break;
      case '\\':
        *out += "\\\\";
        break;
      case '\n':
        *out += "\\n";
        break;
      case '\r':
        *out += "\\r";
        break;
      case '\t':
        *out += "\\t";
        break;
      case '\b':
        *out += "\\b";
        break;
      case '\f':
        *out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", c);
          *out += b;
        } else {
          *out += static_cast<char>(c);
        }
    }
  }
  *out += '"';
}

void ToJsonImpl(const Value& v, int indent, int depth, std::string* out) {
  const std::string nl = indent >= 0 ? "\n" + std::string((depth + 1) * indent, ' ') : "";
  const std::string nl_end = indent >= 0 ? "\n" + std::string(depth * indent, ' ') : "";
  const std::string item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      *out += "null";
      return;
    case Kind::kBool:
      *out += v.b ? "true" : "false";
      return;
    case Kind::kInt:
      *out += std::to_string(v.i);
      return;
    case Kind::kFloat:
      if (std::isnan(v.f))
        *out += "NaN";
      else if (std::isinf(v.f))
        *out += v.f > 0 ? "Infinity" : "-Infinity";
      else
        *out += PyFloat(v.f);
      return;
    case Kind::kString:
      JsonString(v.s, out);
      return;
    case Kind::kList:
      if (v.list->empty()) {
        *out += "[]";
        return;
      }
      *out += "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        *out += (k ? item_sep : "") + nl;
        ToJsonImpl((*v.list)[k], indent, depth + 1, out);
      }
      *out += nl_end + "]";
      return;
    case Kind::kDict:
      if (v.dict->empty()) {
        *out += "{}";
        return;
      }
      *out += "{";
      for (size_t k = 0; k < v.dict->size(); ++k) {
        *out += (k ? item_sep : "") + nl;
        JsonString((*v.dict)[k].first, out);
        *out += ": ";
        ToJsonImpl((*v.dict)[k].second, indent, depth + 1, out);
      }
      *out += nl_end + "}";
      return;
    case Kind::kFunction:
      Fail("Object of type function is not JSON serializable");
  }
}

}  // namespace

std::string ToString(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.b ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return PyFloat(v.f);
    case Kind::kString:
      return v.s;
    case Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + PyRepr((*v.list)[k]);
      return out + "]";
    }
    case Kind::kDict: {
      if (v.is_namespace) return "<Namespace>";
      std::string out = "{";
      for (size_t k = 0; k < v.dict->size(); ++k) {
        out += (k ? ", " : "") + PyStrRepr((*v.dict)[k].first) + ": " + PyRepr((*v.dict)[k].second);
      }
      return out + "}";
    }
    case Kind::kFunction:
      return "<function>";
  }
  return "";
}

std::string ToJson(const Value& v, int indent) {
  std::string out;
  try {
    ToJsonImpl(v, indent, 0, &out);
  } catch (const JinjaError& e) {
    return "null";
  }
  return out;
}

// ---------------------------------------------------------------- lexer

namespace {

enum class TT { kName, kInt, kFloat, kString, kOp, kEnd };

struct Token {
  TT type = TT::kEnd;
  std::string text;
  int64_t i = 0;
  double f = 0;
};

std::vector<Token> LexExpr(const std::string& s, int line) {
  std::vector<Token> out;
  size_t p = 0;
  auto err = [&](const std::string& m) { Fail("line " + std::to_string(line) + ": " + m); };
  while (p < s.size()) {
    const char c = s[p];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++p;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t q = p;
      while (q < s.size() && (std::isalnum(static_cast<unsigned char>(s[q])) || s[q] == '_')) ++q;
      out.push_back({TT::kName, s.substr(p, q - p)});
      p = q;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t q = p;
      bool is_float = false;
      while (q < s.size() && (std::isdigit(static_cast<unsigned char>(s[q])) || s[q] == '_')) ++q;
      if (q + 1 < s.size() && s[q] == '.' && std::isdigit(static_cast<unsigned char>(s[q + 1]))) {
        is_float = true;
        ++q;
        while (q < s.size() && std::isdigit(static_cast<unsigned char>(s[q]))) ++q;
      }
      if (q < s.size() && (s[q] == 'e' || s[q] == 'E')) {
        size_t r = q + 1;
        if (r < s.size() && (s[r] == '+' || s[r] == '-')) ++r;
        if (r < s.size() && std::isdigit(static_cast<unsigned char>(s[r]))) {
          is_float = true;
          q = r;
          while (q < s.size() && std::isdigit(static_cast<unsigned char>(s[q]))) ++q;
        }
      }
      std::string num = s.substr(p, q - p);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      Token t;
      t.type = is_float ? TT::kFloat : TT::kInt;
      t.text = num;
      if (is_float)
        t.f = std::stod(num);
      else
        t.i = std::stoll(num);
      out.push_back(t);
      p = q;
      continue;
    }
    if (c == '\'' || c == '"') {
      std::string val;
      size_t q = p + 1;
      while (q < s.size() && s[q] != c) {
        if (s[q] == '\\' && q + 1 < s.size()) {
          const char e = s[q + 1];
          q += 2;
          switch (e) {
            case 'n':
              val += '\n';
              break;
            case 't':
              val += '\t';
              break;
            case 'r':
              val += '\r';
              break;
            case '\\':
              val += '\\';
              break;
            case '\'':
              val += '\'';
              break;
            case '"':
              val += '"';
              break;
            case '0':
              val += '\0';
              break;
            case 'b':
              val += '\b';
              break;
            case 'f':
              val += '\f';
              break;
            case 'u':
            case 'x': {
              const int n = e == 'u' ? 4 : 2;
              if (q + n > s.size()) err("bad escape in string");
              const uint32_t cp = static_cast<uint32_t>(std::stoul(s.substr(q, n), nullptr, 16));
              AppendUtf8(cp, &val);
              q += n;
              break;
            }
            case '\n':
              break;
            default:
              val += '\\';
              val += e;
          }
          continue;
        }
        val += s[q++];
      }
      if (q >= s.size()) err("unterminated string");
      out.push_back({TT::kString, val});
      p = q + 1;
      continue;
    }
    static const char* ops[] = {"==", "!=", "<=", ">=", "//", "**", "<", ">", "+", "-", "*", "/", "%",
                                "~",  "|",  ".",  ",",  ":",  "(",  ")", "[", "]", "{", "}", "="};
    bool matched = false;
    for (const char* op : ops) {
      const size_t n = std::strlen(op);
      if (s.compare(p, n, op) == 0) {
        out.push_back({TT::kOp, op});
        p += n;
        matched = true;
        break;
      }
    }
    if (!matched) err(std::string("unexpected character '") + c + "'");
  }
  out.push_back({TT::kEnd, ""});
  return out;
}

// ---------------------------------------------------------------- AST

struct Expr;
using ExprP = std::shared_ptr<Expr>;

struct Expr {
  enum class K {
    kLiteral,
    kName,
    kList,
    kDict,
    kTuple,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kUnary,
    kBinary,
    kAnd,
    kOr,
    kNot,
    kCond
  };
  K k;
  Value lit;
  std::string name;  // names, attributes, filters, tests, operators
  std::vector<ExprP> args;
  std::vector<std::pair<std::string, ExprP>> kwargs;
  bool negate = false;  // "is not"
  int line = 0;
};

}  // namespace

struct Template::Node {
  enum class K { kRoot, kText, kOutput, kIf, kFor, kSet, kSetBlock, kBreak, kContinue, kMacro, kBody };
  K k = K::kRoot;
  std::string text;
  ExprP expr;                                                                  // output, set value, for iterable
  std::vector<std::pair<ExprP, std::vector<std::shared_ptr<Node>>>> branches;  // if: (cond or null, body)
  std::vector<std::shared_ptr<Node>> body, else_body;
  std::vector<std::string> targets;                   // for / set names
  std::string ns_attr;                                // set ns.attr
  ExprP filter;                                       // for ... if filter
  std::vector<std::pair<std::string, ExprP>> params;  // macro parameters with defaults (null: none)
  int line = 0;
};

namespace {

using Node = Template::Node;
using NodeP = std::shared_ptr<Node>;

class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int line) : t_(std::move(toks)), line_(line) {}

  ExprP ParseExpression() { return ParseCond(); }
  // A comma-separated tuple without parentheses (for "set a, b = ..." values and for targets).
  ExprP ParseTupleOrExpr() {
    ExprP first = ParseExpression();
    if (!IsOp(",")) return first;
    auto t = Make(Expr::K::kTuple);
    t->args.push_back(first);
    while (Accept(",")) {
      if (AtEnd()) break;
      t->args.push_back(ParseExpression());
    }
    return t;
  }

  bool AtEnd() const { return t_[p_].type == TT::kEnd; }
  const Token& Peek(size_t ahead = 0) const { return t_[std::min(p_ + ahead, t_.size() - 1)]; }
  bool IsOp(const char* op) const { return t_[p_].type == TT::kOp && t_[p_].text == op; }
  bool IsName(const char* n) const { return t_[p_].type == TT::kName && t_[p_].text == n; }
  bool Accept(const char* op) {
    if (!IsOp(op)) return false;
    ++p_;
    return true;
  }
  bool AcceptName(const char* n) {
    if (!IsName(n)) return false;
    ++p_;
    return true;
  }
  void Expect(const char* op) {
    if (!Accept(op)) Err(std::string("expected '") + op + "', got '" + t_[p_].text + "'");
  }
  std::string ExpectName() {
    if (t_[p_].type != TT::kName) Err("expected a name, got '" + t_[p_].text + "'");
    return t_[p_++].text;
  }
  void ExpectEnd() {
    if (!AtEnd()) Err("unexpected '" + t_[p_].text + "'");
  }
  [[noreturn]] void Err(const std::string& m) const { Fail("line " + std::to_string(line_) + ": " + m); }

  // A name or a tuple of names: for targets.
  std::vector<std::string> ParseTargets() {
    std::vector<std::string> names;
    const bool paren = Accept("(");
    names.push_back(ExpectName());
    while (Accept(",")) names.push_back(ExpectName());
    if (paren) Expect(")");
    return names;
  }

  // The condition of "for ... if cond": an or-expression (no ternary).
  ExprP ParseOrExpr() { return ParseOr(); }

 private:
  ExprP Make(Expr::K k) {
    auto e = std::make_shared<Expr>();
    e->k = k;
    e->line = line_;
    return e;
  }

  ExprP ParseCond() {
    ExprP e = ParseOr();
    while (IsName("if")) {
      ++p_;
      auto c = Make(Expr::K::kCond);
      ExprP cond = ParseOr();
      ExprP other;
      if (AcceptName("else")) other = ParseCond();
      c->args = {cond, e, other};
      e = c;
    }
    return e;
  }
  ExprP ParseOr() {
    ExprP e = ParseAnd();
    while (AcceptName("or")) {
      auto o = Make(Expr::K::kOr);
      o->args = {e, ParseAnd()};
      e = o;
    }
    return e;
  }
  ExprP ParseAnd() {
    ExprP e = ParseNot();
    while (AcceptName("and")) {
      auto o = Make(Expr::K::kAnd);
      o->args = {e, ParseNot()};
      e = o;
    }
    return e;
  }
  ExprP ParseNot() {
    if (AcceptName("not")) {
      auto n = Make(Expr::K::kNot);
      n->args = {ParseNot()};
      return n;
    }
    return ParseCompare();
  }
  ExprP ParseCompare() {
    ExprP e = ParseMath1();
    for (;;) {
      std::string op;
      if (IsOp("==") || IsOp("!=") || IsOp("<") || IsOp("<=") || IsOp(">") || IsOp(">=")) {
        op = t_[p_++].text;
      } else if (IsName("in")) {
        ++p_;
        op = "in";
      } else if (IsName("not") && Peek(1).type == TT::kName && Peek(1).text == "in") {
        p_ += 2;
        op = "not in";
      } else {
        break;
      }
      auto b = Make(Expr::K::kBinary);
      b->name = op;
      b->args = {e, ParseMath1()};
      e = b;
    }
    return e;
  }
  ExprP ParseMath1() {
    ExprP e = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      auto b = Make(Expr::K::kBinary);
      b->name = t_[p_++].text;
      b->args = {e, ParseConcat()};
      e = b;
    }
    return e;
  }
  ExprP ParseConcat() {
    ExprP e = ParseMath2();
    while (IsOp("~")) {
      ++p_;
      auto b = Make(Expr::K::kBinary);
      b->name = "~";
      b->args = {e, ParseMath2()};
      e = b;
    }
    return e;
  }
  ExprP ParseMath2() {
    ExprP e = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      auto b = Make(Expr::K::kBinary);
      b->name = t_[p_++].text;
      b->args = {e, ParsePow()};
      e = b;
    }
    return e;
  }
  ExprP ParsePow() {
    ExprP e = ParseUnary(true);
    while (IsOp("**")) {
      ++p_;
      auto b = Make(Expr::K::kBinary);
      b->name = "**";
      b->args = {e, ParseUnary(true)};
      e = b;
    }
    return e;
  }
  ExprP ParseUnary(bool with_filter) {
    ExprP e;
    if (IsOp("-") || IsOp("+")) {
      auto u = Make(Expr::K::kUnary);
      u->name = t_[p_++].text;
      u->args = {ParseUnary(false)};
      e = u;
    } else {
      e = ParsePostfix(ParsePrimary());
    }
    if (with_filter) e = ParseFilterExpr(e);
    return e;
  }
  ExprP ParsePrimary() {
    const Token& t = t_[p_];
    if (t.type == TT::kString) {
      // Adjacent string literals concatenate, as in Python.
      std::string s;
      while (t_[p_].type == TT::kString) s += t_[p_++].text;
      auto e = Make(Expr::K::kLiteral);
      e->lit = Value::Str(s);
      return e;
    }
    if (t.type == TT::kInt || t.type == TT::kFloat) {
      ++p_;
      auto e = Make(Expr::K::kLiteral);
      e->lit = t.type == TT::kInt ? Value::Int(t.i) : Value::Float(t.f);
      return e;
    }
    if (t.type == TT::kName) {
      ++p_;
      auto e = Make(Expr::K::kLiteral);
      if (t.text == "true" || t.text == "True")
        e->lit = Value::Bool(true);
      else if (t.text == "false" || t.text == "False")
        e->lit = Value::Bool(false);
      else if (t.text == "none" || t.text == "None")
        e->lit = Value::None();
      else {
        e->k = Expr::K::kName;
        e->name = t.text;
      }
      return e;
    }
    if (Accept("(")) {
      if (Accept(")")) return Make(Expr::K::kTuple);
      ExprP e = ParseExpression();
      if (IsOp(",")) {
        auto tup = Make(Expr::K::kTuple);
        tup->args.push_back(e);
        while (Accept(",")) {
          if (IsOp(")")) break;
          tup->args.push_back(ParseExpression());
        }
        e = tup;
      }
      Expect(")");
      return e;
    }
    if (Accept("[")) {
      auto l = Make(Expr::K::kList);
      while (!IsOp("]")) {
        l->args.push_back(ParseExpression());
        if (!Accept(",")) break;
      }
      Expect("]");
      return l;
    }
    if (Accept("{")) {
      auto d = Make(Expr::K::kDict);
      while (!IsOp("}")) {
        ExprP k = ParseExpression();
        Expect(":");
        d->args.push_back(k);
        d->args.push_back(ParseExpression());
        if (!Accept(",")) break;
      }
      Expect("}");
      return d;
    }
    Err("unexpected '" + t.text + "'");
  }
  void ParseCallArgs(Expr* call) {
    while (!IsOp(")")) {
      if (t_[p_].type == TT::kName && Peek(1).type == TT::kOp && Peek(1).text == "=") {
        std::string k = t_[p_].text;
        p_ += 2;
        call->kwargs.emplace_back(k, ParseExpression());
      } else {
        call->args.push_back(ParseExpression());
      }
      if (!Accept(",")) break;
    }
    Expect(")");
  }
  ExprP ParsePostfix(ExprP e) {
    for (;;) {
      if (Accept(".")) {
        auto a = Make(Expr::K::kAttr);
        if (t_[p_].type == TT::kInt) {  // x.0
          a->k = Expr::K::kItem;
          auto lit = Make(Expr::K::kLiteral);
          lit->lit = Value::Int(t_[p_++].i);
          a->args = {e, lit};
        } else {
          a->name = ExpectName();
          a->args = {e};
        }
        e = a;
      } else if (Accept("[")) {
        ExprP start, stop, step;
        bool slice = false;
        if (!IsOp(":")) start = ParseExpression();
        if (Accept(":")) {
          slice = true;
          if (!IsOp(":") && !IsOp("]")) stop = ParseExpression();
          if (Accept(":")) {
            if (!IsOp("]")) step = ParseExpression();
          }
        }
        Expect("]");
        auto it = Make(slice ? Expr::K::kSlice : Expr::K::kItem);
        it->args = {e, start, stop, step};
        if (!slice) it->args.resize(2);
        e = it;
      } else if (Accept("(")) {
        auto c = Make(Expr::K::kCall);
        c->args.push_back(e);
        ParseCallArgs(c.get());
        e = c;
      } else {
        return e;
      }
    }
  }
  ExprP ParseFilterExpr(ExprP e) {
    for (;;) {
      if (Accept("|")) {
        auto f = Make(Expr::K::kFilter);
        f->name = ExpectName();
        f->args.push_back(e);
        if (Accept("(")) ParseCallArgs(f.get());
        e = f;
      } else if (IsName("is")) {
        ++p_;
        auto t = Make(Expr::K::kTest);
        t->negate = AcceptName("not");
        t->name = ExpectName();
        t->args.push_back(e);
        if (Accept("(")) {
          ParseCallArgs(t.get());
        } else {
          const Token& n = t_[p_];
          const bool arg = n.type == TT::kString || n.type == TT::kInt || n.type == TT::kFloat ||
                           (n.type == TT::kName && n.text != "and" && n.text != "or" && n.text != "else" &&
                            n.text != "if" && n.text != "is" && n.text != "in" && n.text != "not");
          if (arg) t->args.push_back(ParsePostfix(ParsePrimary()));
        }
        e = t;
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
};

// ---------------------------------------------------------------- template lexer and parser

struct Segment {
  enum class T { kText, kExpr, kStmt } type;
  std::string body;
  int line;
};

std::vector<Segment> Segments(std::string src) {
  // Jinja normalizes newlines and drops one trailing newline (keep_trailing_newline=False).
  std::string norm;
  for (size_t i = 0; i < src.size(); ++i) {
    if (src[i] == '\r') {
      norm += '\n';
      if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
    } else {
      norm += src[i];
    }
  }
  if (!norm.empty() && norm.back() == '\n') norm.pop_back();
  src = std::move(norm);

  std::vector<Segment> out;
  size_t p = 0;
  int line = 1;
  bool line_starting = true;
  bool strip_next = false;  // the previous tag ended with "-"
  auto count_lines = [](const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); };
  while (p <= src.size()) {
    size_t open = std::string::npos;
    for (size_t q = p; q + 1 < src.size(); ++q) {
      if (src[q] == '{' && (src[q + 1] == '{' || src[q + 1] == '%' || src[q + 1] == '#')) {
        open = q;
        break;
      }
    }
    std::string text = src.substr(p, open == std::string::npos ? std::string::npos : open - p);
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
      text.erase(0, k);
    }
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::T::kText, text, line});
      break;
    }
    const char kind = src[open + 1];
    const size_t inner = open + 2;
    char sign = 0;
    if (inner < src.size() && (src[inner] == '-' || src[inner] == '+')) sign = src[inner];
    if (sign == '-') {
      size_t k = text.size();
      while (k > 0 && std::isspace(static_cast<unsigned char>(text[k - 1]))) --k;
      text.erase(k);
    } else if (sign != '+' && kind != '{') {
      // lstrip_blocks: spaces and tabs between the start of the line and a block or comment tag.
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        bool ws = l_pos < text.size();
        for (size_t k = l_pos; k < text.size(); ++k) ws = ws && std::isspace(static_cast<unsigned char>(text[k]));
        if (ws) text.erase(l_pos);
      }
    }
    if (!text.empty()) out.push_back({Segment::T::kText, text, line});
    line += count_lines(src.substr(p, open - p));
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t body_start = inner + (sign ? 1 : 0);
    size_t end = src.find(close, body_start);
    if (kind != '#') {
      // Skip over string literals when looking for the closing delimiter.
      // and over brackets (as Jinja's lexer balances them: "{{ {'a': {}} }}").
      size_t q = body_start;
      char quote = 0;
      int depth = 0;
      end = std::string::npos;
      for (; q + 1 < src.size(); ++q) {
        if (quote) {
          if (src[q] == '\\')
            ++q;
          else if (src[q] == quote)
            quote = 0;
        } else if (src[q] == '\'' || src[q] == '"') {
          quote = src[q];
        } else if (depth == 0 && src.compare(q, 2, close) == 0) {
          end = q;
          break;
        } else if (src[q] == '(' || src[q] == '[' || src[q] == '{') {
          ++depth;
        } else if ((src[q] == ')' || src[q] == ']' || src[q] == '}') && depth > 0) {
          --depth;
        }
      }
    }
    if (end == std::string::npos) Fail("line " + std::to_string(line) + ": unclosed '{" + kind + "'");
    size_t body_end = end;
    strip_next = false;
    if (body_end > body_start && src[body_end - 1] == '-') {
      strip_next = true;
      --body_end;
    } else if (body_end > body_start && src[body_end - 1] == '+') {
      --body_end;
    }
    const std::string body = src.substr(body_start, body_end - body_start);
    const int tag_line = line;
    line += count_lines(src.substr(open, end + 2 - open));
    p = end + 2;
    line_starting = false;
    if (kind != '{' && !strip_next && p < src.size() && src[p] == '\n') {
      ++p;  // trim_blocks
      ++line;
      line_starting = true;
    }
    if (kind == '{')
      out.push_back({Segment::T::kExpr, body, tag_line});
    else if (kind == '%')
      out.push_back({Segment::T::kStmt, body, tag_line});
  }
  return out;
}

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> segs) : s_(std::move(segs)) {}

  NodeP ParseRoot() {
    auto root = std::make_shared<Node>();
    root->k = Node::K::kRoot;
    std::string stop;
    root->body = ParseBody({}, &stop);
    if (!stop.empty()) Fail("line " + std::to_string(s_[p_ - 1].line) + ": unexpected '" + stop + "'");
    return root;
  }

 private:
  static std::string FirstWord(const std::string& body) {
    size_t a = 0;
    while (a < body.size() && std::isspace(static_cast<unsigned char>(body[a]))) ++a;
    size_t b = a;
    while (b < body.size() && (std::isalnum(static_cast<unsigned char>(body[b])) || body[b] == '_')) ++b;
    return body.substr(a, b - a);
  }

  // Parses nodes until a statement whose first word is in `stops` (returned in *stop, consumed) or the end.
  std::vector<NodeP> ParseBody(const std::vector<std::string>& stops, std::string* stop) {
    std::vector<NodeP> nodes;
    stop->clear();
    while (p_ < s_.size()) {
      const Segment& seg = s_[p_];
      if (seg.type == Segment::T::kText) {
        auto n = std::make_shared<Node>();
        n->k = Node::K::kText;
        n->text = seg.body;
        nodes.push_back(n);
        ++p_;
        continue;
      }
      if (seg.type == Segment::T::kExpr) {
        ExprParser ep(LexExpr(seg.body, seg.line), seg.line);
        auto n = std::make_shared<Node>();
        n->k = Node::K::kOutput;
        n->expr = ep.ParseExpression();
        ep.ExpectEnd();
        nodes.push_back(n);
        ++p_;
        continue;
      }
      const std::string word = FirstWord(seg.body);
      if (std::find(stops.begin(), stops.end(), word) != stops.end()) {
        *stop = word;
        return nodes;
      }
      ++p_;
      nodes.push_back(ParseStatement(seg, word));
    }
    if (!stops.empty()) {
      Fail("unexpected end of template: missing '" + stops.back() + "'");
    }
    return nodes;
  }

  NodeP ParseStatement(const Segment& seg, const std::string& word) {
    ExprParser ep(LexExpr(seg.body, seg.line), seg.line);
    ep.ExpectName();  // the keyword
    auto n = std::make_shared<Node>();
    n->line = seg.line;
    std::string stop;
    if (word == "if") {
      n->k = Node::K::kIf;
      ExprP cond = ep.ParseExpression();
      ep.ExpectEnd();
      for (;;) {
        auto body = ParseBody({"elif", "else", "endif"}, &stop);
        n->branches.emplace_back(cond, std::move(body));
        const Segment& s = s_[p_++];
        if (stop == "endif") break;
        ExprParser ep2(LexExpr(s.body, s.line), s.line);
        ep2.ExpectName();
        if (stop == "elif") {
          cond = ep2.ParseExpression();
          ep2.ExpectEnd();
        } else {
          ep2.ExpectEnd();
          n->branches.emplace_back(nullptr, ParseBody({"endif"}, &stop));
          ++p_;
          break;
        }
      }
      return n;
    }
    if (word == "for") {
      n->k = Node::K::kFor;
      n->targets = ep.ParseTargets();
      if (!ep.AcceptName("in")) ep.Err("expected 'in' in for");
      n->expr = ep.ParseOrExpr();
      if (ep.AcceptName("if")) n->filter = ep.ParseOrExpr();
      ep.AcceptName("recursive");
      ep.ExpectEnd();
      n->body = ParseBody({"else", "endfor"}, &stop);
      ++p_;
      if (stop == "else") {
        n->else_body = ParseBody({"endfor"}, &stop);
        ++p_;
      }
      return n;
    }
    if (word == "set") {
      std::string first = ep.ExpectName();
      if (ep.Accept(".")) {
        n->ns_attr = ep.ExpectName();
      }
      n->targets.push_back(first);
      while (ep.Accept(",")) n->targets.push_back(ep.ExpectName());
      if (ep.Accept("=")) {
        n->k = Node::K::kSet;
        n->expr = ep.ParseTupleOrExpr();
        ep.ExpectEnd();
        return n;
      }
      n->k = Node::K::kSetBlock;
      if (ep.Accept("|")) {  // {% set x | filter %}: applied to the block's text
        auto f = std::make_shared<Expr>();
        f->k = Expr::K::kFilter;
        f->name = ep.ExpectName();
        n->filter = f;
      }
      ep.ExpectEnd();
      n->body = ParseBody({"endset"}, &stop);
      ++p_;
      return n;
    }
    if (word == "break" || word == "continue") {
      ep.ExpectEnd();
      n->k = word == "break" ? Node::K::kBreak : Node::K::kContinue;
      return n;
    }
    if (word == "macro") {
      n->k = Node::K::kMacro;
      n->text = ep.ExpectName();
      ep.Expect("(");
      while (!ep.IsOp(")")) {
        std::string param = ep.ExpectName();
        ExprP def;
        if (ep.Accept("=")) def = ep.ParseExpression();
        n->params.emplace_back(param, def);
        if (!ep.Accept(",")) break;
      }
      ep.Expect(")");
      ep.ExpectEnd();
      n->body = ParseBody({"endmacro"}, &stop);
      ++p_;
      return n;
    }
    if (word == "generation") {  // transformers' assistant-mask extension: render the body
      n->k = Node::K::kBody;
      n->body = ParseBody({"endgeneration"}, &stop);
      ++p_;
      return n;
    }
    ep.Err("unsupported statement '" + word + "'");
  }

  std::vector<Segment> s_;
  size_t p_ = 0;
};

// ---------------------------------------------------------------- interpreter

std::vector<uint32_t> CodePoints(const std::string& s) {
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) cps.push_back(NextCodePoint(s, &i));
  return cps;
}

std::string FromCodePoints(const std::vector<uint32_t>& cps, size_t a, size_t b) {
  std::string out;
  for (size_t i = a; i < b; ++i) AppendUtf8(cps[i], &out);
  return out;
}

bool IsPySpace(uint32_t c) {
  return c == ' ' || (c >= 9 && c <= 13) || c == 0x1C || c == 0x1D || c == 0x1E || c == 0x1F || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string PyStrip(const std::string& s, bool left, bool right, const Value* chars) {
  const std::vector<uint32_t> cps = CodePoints(s);
  std::vector<uint32_t> set;
  const bool custom = chars && chars->kind == Kind::kString;
  if (custom) set = CodePoints(chars->s);
  auto strip = [&](uint32_t c) { return custom ? std::find(set.begin(), set.end(), c) != set.end() : IsPySpace(c); };
  size_t a = 0, b = cps.size();
  if (left) {
    while (a < b && strip(cps[a])) ++a;
  }
  if (right) {
    while (b > a && strip(cps[b - 1])) --b;
  }
  return FromCodePoints(cps, a, b);
}

bool Equal(const Value& a, const Value& b) {
  auto num = [](const Value& v) { return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool; };
  auto as_double = [](const Value& v) {
    return v.kind == Kind::kFloat ? v.f : v.kind == Kind::kInt ? static_cast<double>(v.i) : (v.b ? 1.0 : 0.0);
  };
  if (num(a) && num(b)) {
    if (a.kind != Kind::kFloat && b.kind != Kind::kFloat) {
      const int64_t x = a.kind == Kind::kInt ? a.i : a.b, y = b.kind == Kind::kInt ? b.i : b.b;
      return x == y;
    }
    return as_double(a) == as_double(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.s == b.s;
    case Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!Equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    case Kind::kDict:
      if (a.dict == b.dict) return true;
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.Get(k);
        if (!o || !Equal(v, *o)) return false;
      }
      return true;
    case Kind::kFunction:
      return a.fn == b.fn;
    default:
      return false;
  }
}

std::string TypeName(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kFunction:
      return "function";
  }
  return "?";
}

// Elements a for loop or filter iterates: list items, dict keys, string characters.
List Iterate(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return {};
    case Kind::kList:
      return *v.list;
    case Kind::kDict: {
      List keys;
      for (const auto& [k, _] : *v.dict) keys.push_back(Value::Str(k));
      return keys;
    }
    case Kind::kString: {
      List chars;
      for (uint32_t c : CodePoints(v.s)) {
        std::string s;
        AppendUtf8(c, &s);
        chars.push_back(Value::Str(s));
      }
      return chars;
    }
    default:
      Fail("'" + TypeName(v) + "' object is not iterable");
  }
}

int Compare(const Value& a, const Value& b) {
  const bool an = a.kind == Kind::kInt || a.kind == Kind::kFloat || a.kind == Kind::kBool;
  const bool bn = b.kind == Kind::kInt || b.kind == Kind::kFloat || b.kind == Kind::kBool;
  if (an && bn) {
    const double x = a.kind == Kind::kFloat ? a.f : a.kind == Kind::kInt ? a.i : a.b;
    const double y = b.kind == Kind::kFloat ? b.f : b.kind == Kind::kInt ? b.i : b.b;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Kind::kString && b.kind == Kind::kString) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  Fail("'<' not supported between instances of '" + TypeName(a) + "' and '" + TypeName(b) + "'");
}

class Interpreter {
 public:
  explicit Interpreter(const Value& context) {
    scopes_.emplace_back();
    auto& g = scopes_.back();
    g["raise_exception"] = Value::Func([](const std::vector<Value>& a, const auto&) -> Result<Value> {
      return MakeError(ErrorCode::kInvalidArgument, "template raised: " + (a.empty() ? std::string() : ToString(a[0])));
    });
    g["strftime_now"] = Value::Func([](const std::vector<Value>& a, const auto&) -> Result<Value> {
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const std::string fmt = a.empty() ? "%Y-%m-%d" : ToString(a[0]);
      const size_t n = std::strftime(buf, sizeof(buf), fmt.c_str(), &tm);
      return Value::Str(std::string(buf, n));
    });
    g["range"] = Value::Func([](const std::vector<Value>& a, const auto&) -> Result<Value> {
      int64_t start = 0, stop = 0, step = 1;
      for (const Value& v : a) {
        if (v.kind != Kind::kInt) return MakeError(ErrorCode::kInvalidArgument, "range() expects integers");
      }
      if (a.size() == 1)
        stop = a[0].i;
      else if (a.size() >= 2) {
        start = a[0].i;
        stop = a[1].i;
        if (a.size() >= 3) step = a[2].i;
      }
      if (step == 0) return MakeError(ErrorCode::kInvalidArgument, "range() step must not be zero");
      List l;
      for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) l.push_back(Value::Int(x));
      return Value::MakeList(std::move(l));
    });
    g["namespace"] = Value::Func([](const std::vector<Value>& a, const auto& kw) -> Result<Value> {
      Value ns = Value::MakeDict();
      ns.is_namespace = true;
      if (!a.empty() && a[0].kind == Kind::kDict) {
        for (const auto& [k, v] : *a[0].dict) ns.Set(k, v);
      }
      for (const auto& [k, v] : kw) ns.Set(k, v);
      return ns;
    });
    g["dict"] = Value::Func([](const std::vector<Value>& a, const auto& kw) -> Result<Value> {
      Value d = Value::MakeDict();
      if (!a.empty() && a[0].kind == Kind::kDict) {
        for (const auto& [k, v] : *a[0].dict) d.Set(k, v);
      }
      for (const auto& [k, v] : kw) d.Set(k, v);
      return d;
    });
    if (context.kind == Kind::kDict) {
      for (const auto& [k, v] : *context.dict) g[k] = v;
    }
  }

  std::string Render(const std::vector<NodeP>& nodes) {
    std::string out;
    Exec(nodes, &out);
    return out;
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value::Undefined();
  }

  Flow Exec(const std::vector<NodeP>& nodes, std::string* out) {
    for (const NodeP& n : nodes) {
      const Flow f = ExecNode(*n, out);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }

  Flow ExecNode(const Node& n, std::string* out) {
    switch (n.k) {
      case Node::K::kRoot:
      case Node::K::kBody:
        return Exec(n.body, out);
      case Node::K::kText:
        *out += n.text;
        return Flow::kNormal;
      case Node::K::kOutput:
        *out += ToString(Eval(*n.expr));
        return Flow::kNormal;
      case Node::K::kIf:
        for (const auto& [cond, body] : n.branches) {
          if (!cond || Eval(*cond).Truthy()) return Exec(body, out);
        }
        return Flow::kNormal;
      case Node::K::kFor:
        return ExecFor(n, out);
      case Node::K::kSet: {
        Value v = Eval(*n.expr);
        Assign(n, std::move(v));
        return Flow::kNormal;
      }
      case Node::K::kSetBlock: {
        std::string text;
        Exec(n.body, &text);
        Value v = Value::Str(text);
        if (n.filter) v = ApplyFilter(n.filter->name, {v}, {});
        Assign(n, std::move(v));
        return Flow::kNormal;
      }
      case Node::K::kBreak:
        return Flow::kBreak;
      case Node::K::kContinue:
        return Flow::kContinue;
      case Node::K::kMacro: {
        const Node* node = &n;
        scopes_.back()[n.text] =
            Value::Func([this, node](const std::vector<Value>& args,
                                     const std::vector<std::pair<std::string, Value>>& kw) -> Result<Value> {
              std::unordered_map<std::string, Value> scope;
              for (size_t i = 0; i < node->params.size(); ++i) {
                const auto& [name, def] = node->params[i];
                Value v;
                if (i < args.size())
                  v = args[i];
                else if (def)
                  v = Eval(*def);
                for (const auto& [k, val] : kw) {
                  if (k == name) v = val;
                }
                scope[name] = v;
              }
              scopes_.push_back(std::move(scope));
              std::string text;
              Exec(node->body, &text);
              scopes_.pop_back();
              return Value::Str(text);
            });
        return Flow::kNormal;
      }
    }
    return Flow::kNormal;
  }

  void Assign(const Node& n, Value v) {
    if (!n.ns_attr.empty()) {
      Value ns = Lookup(n.targets[0]);
      if (ns.kind != Kind::kDict || !ns.is_namespace) {
        Fail("line " + std::to_string(n.line) + ": cannot assign attribute on non-namespace object");
      }
      ns.Set(n.ns_attr, std::move(v));  // shared dict: visible wherever the namespace is
      return;
    }
    if (n.targets.size() == 1) {
      scopes_.back()[n.targets[0]] = std::move(v);
      return;
    }
    const List items = Iterate(v);
    if (items.size() != n.targets.size()) Fail("line " + std::to_string(n.line) + ": wrong number of values to unpack");
    for (size_t i = 0; i < items.size(); ++i) scopes_.back()[n.targets[i]] = items[i];
  }

  void Bind(const std::vector<std::string>& targets, const Value& item, int line) {
    if (targets.size() == 1) {
      scopes_.back()[targets[0]] = item;
      return;
    }
    const List parts = Iterate(item);
    if (parts.size() != targets.size()) Fail("line " + std::to_string(line) + ": wrong number of values to unpack");
    for (size_t i = 0; i < parts.size(); ++i) scopes_.back()[targets[i]] = parts[i];
  }

  Flow ExecFor(const Node& n, std::string* out) {
    List items = Iterate(Eval(*n.expr));
    if (n.filter) {
      List kept;
      for (const Value& it : items) {
        scopes_.emplace_back();
        Bind(n.targets, it, n.line);
        if (Eval(*n.filter).Truthy()) kept.push_back(it);
        scopes_.pop_back();
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      Exec(n.else_body, out);
      return Flow::kNormal;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      scopes_.emplace_back();
      Value loop = Value::MakeDict();
      loop.Set("index", Value::Int(i + 1));
      loop.Set("index0", Value::Int(i));
      loop.Set("revindex", Value::Int(len - i));
      loop.Set("revindex0", Value::Int(len - i - 1));
      loop.Set("first", Value::Bool(i == 0));
      loop.Set("last", Value::Bool(i == len - 1));
      loop.Set("length", Value::Int(len));
      loop.Set("previtem", i > 0 ? items[i - 1] : Value::Undefined());
      loop.Set("nextitem", i + 1 < len ? items[i + 1] : Value::Undefined());
      loop.Set("depth", Value::Int(1));
      loop.Set("depth0", Value::Int(0));
      loop.Set("cycle", Value::Func([i](const std::vector<Value>& a, const auto&) -> Result<Value> {
                 if (a.empty()) return Value::Undefined();
                 return a[i % a.size()];
               }));
      scopes_.back()["loop"] = loop;
      Bind(n.targets, items[i], n.line);
      const Flow f = Exec(n.body, out);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  Value Call(const Value& f, const std::vector<Value>& args, const std::vector<std::pair<std::string, Value>>& kw,
             int line) {
    if (f.kind != Kind::kFunction)
      Fail("line " + std::to_string(line) + ": '" + TypeName(f) + "' object is not callable");
    Result<Value> r = (*f.fn)(args, kw);
    if (!r.ok()) Fail(r.error().message);
    return std::move(r).value();
  }

  // Bound methods of strings, dicts and lists (what templates call: message.content.strip(), d.items(), ...).
  Value Method(const Value& obj, const std::string& name, int line) {
    if (obj.kind == Kind::kString) {
      const std::string s = obj.s;
      auto fn = [this, s, name, line](const std::vector<Value>& a, const auto&) -> Result<Value> {
        return StringMethod(s, name, a, line);
      };
      static const char* kStr[] = {"strip", "lstrip", "rstrip",     "split",      "startswith", "endswith",
                                   "upper", "lower",  "title",      "capitalize", "replace",    "find",
                                   "count", "join",   "splitlines", "isdigit",    "isspace",    "isalpha"};
      for (const char* m : kStr) {
        if (name == m) return Value::Func(fn);
      }
      return Value::Undefined();
    }
    if (obj.kind == Kind::kDict && !obj.is_namespace) {
      const Value d = obj;
      if (name == "items") {
        return Value::Func([d](const std::vector<Value>&, const auto&) -> Result<Value> {
          List l;
          for (const auto& [k, v] : *d.dict) l.push_back(Value::MakeList({Value::Str(k), v}));
          return Value::MakeList(std::move(l));
        });
      }
      if (name == "keys" || name == "values") {
        const bool keys = name == "keys";
        return Value::Func([d, keys](const std::vector<Value>&, const auto&) -> Result<Value> {
          List l;
          for (const auto& [k, v] : *d.dict) l.push_back(keys ? Value::Str(k) : v);
          return Value::MakeList(std::move(l));
        });
      }
      if (name == "get") {
        return Value::Func([d](const std::vector<Value>& a, const auto&) -> Result<Value> {
          if (a.empty()) return MakeError(ErrorCode::kInvalidArgument, "get() needs a key");
          const Value* v = d.Get(ToString(a[0]));
          if (v) return *v;
          return a.size() > 1 ? a[1] : Value::None();
        });
      }
    }
    return Value::Undefined();
  }

  Result<Value> StringMethod(const std::string& s, const std::string& name, const std::vector<Value>& a, int line) {
    const Value* a0 = a.empty() ? nullptr : &a[0];
    if (name == "strip") return Value::Str(PyStrip(s, true, true, a0));
    if (name == "lstrip") return Value::Str(PyStrip(s, true, false, a0));
    if (name == "rstrip") return Value::Str(PyStrip(s, false, true, a0));
    if (name == "upper" || name == "lower") {
      std::string r = s;
      for (char& c : r)
        c = name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c));
      return Value::Str(r);
    }
    if (name == "title" || name == "capitalize") return ApplyFilter(name, {Value::Str(s)}, {});
    if (name == "startswith" || name == "endswith") {
      if (!a0 || a0->kind != Kind::kString) return MakeError(ErrorCode::kInvalidArgument, name + "() needs a string");
      const std::string& x = a0->s;
      const bool r = name == "startswith" ? s.compare(0, x.size(), x) == 0
                                          : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
      return Value::Bool(r);
    }
    if (name == "replace") {
      if (a.size() < 2) return MakeError(ErrorCode::kInvalidArgument, "replace() needs two arguments");
      return ApplyFilter("replace", {Value::Str(s), a[0], a[1]}, {});
    }
    if (name == "find" || name == "count") {
      if (!a0) return MakeError(ErrorCode::kInvalidArgument, name + "() needs an argument");
      const std::string x = ToString(*a0);
      if (name == "find") {
        const size_t p = s.find(x);
        return Value::Int(p == std::string::npos ? -1 : static_cast<int64_t>(CodePoints(s.substr(0, p)).size()));
      }
      int64_t c = 0;
      for (size_t p = s.find(x); p != std::string::npos && !x.empty(); p = s.find(x, p + x.size())) ++c;
      return Value::Int(c);
    }
    if (name == "join") {
      std::string r;
      List items = a0 ? Iterate(*a0) : List{};
      for (size_t i = 0; i < items.size(); ++i) r += (i ? s : "") + ToString(items[i]);
      return Value::Str(r);
    }
    if (name == "split" || name == "splitlines") {
      List parts;
      if (name == "split" && a0 && a0->kind == Kind::kString) {
        const std::string& sep = a0->s;
        if (sep.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty separator");
        int64_t max = a.size() > 1 && a[1].kind == Kind::kInt ? a[1].i : -1;
        size_t p = 0;
        for (;;) {
          const size_t q = s.find(sep, p);
          if (q == std::string::npos || max == 0) break;
          parts.push_back(Value::Str(s.substr(p, q - p)));
          p = q + sep.size();
          if (max > 0) --max;
        }
        parts.push_back(Value::Str(s.substr(p)));
      } else if (name == "splitlines") {
        std::string cur;
        for (size_t i = 0; i < s.size(); ++i) {
          if (s[i] == '\n' || s[i] == '\r') {
            parts.push_back(Value::Str(cur));
            cur.clear();
            if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
          } else {
            cur += s[i];
          }
        }
        if (!cur.empty()) parts.push_back(Value::Str(cur));
      } else {
        const std::vector<uint32_t> cps = CodePoints(s);
        size_t i = 0;
        while (i < cps.size()) {
          while (i < cps.size() && IsPySpace(cps[i])) ++i;
          size_t j = i;
          while (j < cps.size() && !IsPySpace(cps[j])) ++j;
          if (j > i) parts.push_back(Value::Str(FromCodePoints(cps, i, j)));
          i = j;
        }
      }
      return Value::MakeList(std::move(parts));
    }
    if (name == "isdigit" || name == "isspace" || name == "isalpha") {
      if (s.empty()) return Value::Bool(false);
      for (uint32_t c : CodePoints(s)) {
        const bool ok = name == "isdigit"   ? (c >= '0' && c <= '9')
                        : name == "isspace" ? IsPySpace(c)
                                            : std::isalpha(static_cast<int>(c < 128 ? c : 0)) != 0;
        if (!ok) return Value::Bool(false);
      }
      return Value::Bool(true);
    }
    return MakeError(ErrorCode::kInvalidArgument, "line " + std::to_string(line) + ": str has no method " + name);
  }

  Value GetAttr(const Value& obj, const std::string& name, int line) {
    if (obj.kind == Kind::kUndefined)
      Fail("line " + std::to_string(line) + ": undefined value has no attribute '" + name + "'");
    if (obj.kind == Kind::kDict) {
      if (const Value* v = obj.Get(name)) return *v;
    }
    return Method(obj, name, line);
  }

  Value GetItem(const Value& obj, const Value& key, int line) {
    if (obj.kind == Kind::kUndefined) Fail("line " + std::to_string(line) + ": undefined value is not subscriptable");
    if (obj.kind == Kind::kDict) {
      if (key.kind == Kind::kString) {
        if (const Value* v = obj.Get(key.s)) return *v;
        return Method(obj, key.s, line);
      }
      return Value::Undefined();
    }
    if ((obj.kind == Kind::kList || obj.kind == Kind::kString) && key.kind == Kind::kInt) {
      if (obj.kind == Kind::kList) {
        int64_t i = key.i < 0 ? key.i + static_cast<int64_t>(obj.list->size()) : key.i;
        if (i < 0 || i >= static_cast<int64_t>(obj.list->size())) return Value::Undefined();
        return (*obj.list)[i];
      }
      const std::vector<uint32_t> cps = CodePoints(obj.s);
      int64_t i = key.i < 0 ? key.i + static_cast<int64_t>(cps.size()) : key.i;
      if (i < 0 || i >= static_cast<int64_t>(cps.size())) return Value::Undefined();
      return Value::Str(FromCodePoints(cps, i, i + 1));
    }
    if (key.kind == Kind::kString) return GetAttr(obj, key.s, line);
    return Value::Undefined();
  }

  Value Slice(const Value& obj, const Value& start, const Value& stop, const Value& step, int line) {
    const bool is_str = obj.kind == Kind::kString;
    if (obj.kind != Kind::kList && !is_str) Fail("line " + std::to_string(line) + ": cannot slice " + TypeName(obj));
    const std::vector<uint32_t> cps = is_str ? CodePoints(obj.s) : std::vector<uint32_t>{};
    const int64_t n = is_str ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(obj.list->size());
    const int64_t st = step.kind == Kind::kInt ? step.i : 1;
    if (st == 0) Fail("line " + std::to_string(line) + ": slice step cannot be zero");
    auto norm = [n](const Value& v, int64_t def, bool neg_step) {
      if (v.kind != Kind::kInt) return def;
      int64_t x = v.i < 0 ? v.i + n : v.i;
      if (neg_step) return std::clamp<int64_t>(x, -1, n - 1);
      return std::clamp<int64_t>(x, 0, n);
    };
    const int64_t a = norm(start, st > 0 ? 0 : n - 1, st < 0), b = norm(stop, st > 0 ? n : -1, st < 0);
    List l;
    std::string s;
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
      if (is_str)
        AppendUtf8(cps[i], &s);
      else
        l.push_back((*obj.list)[i]);
    }
    return is_str ? Value::Str(s) : Value::MakeList(std::move(l));
  }

  Value Binary(const std::string& op, const Value& a, const Value& b, int line) {
    auto err = [&](const std::string& m) { Fail("line " + std::to_string(line) + ": " + m); };
    if (op == "==") return Value::Bool(Equal(a, b));
    if (op == "!=") return Value::Bool(!Equal(a, b));
    if (op == "in" || op == "not in") {
      bool r = false;
      if (b.kind == Kind::kString) {
        if (a.kind != Kind::kString) err("'in <string>' requires string as left operand");
        r = b.s.find(a.s) != std::string::npos;
      } else if (b.kind == Kind::kDict) {
        r = a.kind == Kind::kString && b.Get(a.s) != nullptr;
      } else if (b.kind == Kind::kList) {
        for (const Value& v : *b.list) r = r || Equal(a, v);
      } else if (b.kind == Kind::kUndefined) {
        err("argument of type 'Undefined' is not iterable");
      } else {
        err("argument of type '" + TypeName(b) + "' is not iterable");
      }
      return Value::Bool(op == "in" ? r : !r);
    }
    if (op == "~") return Value::Str(ToString(a) + ToString(b));
    if (a.kind == Kind::kUndefined || b.kind == Kind::kUndefined) err("undefined value in '" + op + "'");
    if (op == "<") return Value::Bool(Compare(a, b) < 0);
    if (op == "<=") return Value::Bool(Compare(a, b) <= 0);
    if (op == ">") return Value::Bool(Compare(a, b) > 0);
    if (op == ">=") return Value::Bool(Compare(a, b) >= 0);
    const bool ints =
        (a.kind == Kind::kInt || a.kind == Kind::kBool) && (b.kind == Kind::kInt || b.kind == Kind::kBool);
    const bool nums = (a.kind == Kind::kInt || a.kind == Kind::kFloat || a.kind == Kind::kBool) &&
                      (b.kind == Kind::kInt || b.kind == Kind::kFloat || b.kind == Kind::kBool);
    auto ai = [](const Value& v) { return v.kind == Kind::kInt ? v.i : static_cast<int64_t>(v.b); };
    auto ad = [&](const Value& v) { return v.kind == Kind::kFloat ? v.f : static_cast<double>(ai(v)); };
    if (op == "+") {
      if (a.kind == Kind::kString && b.kind == Kind::kString) return Value::Str(a.s + b.s);
      if (a.kind == Kind::kList && b.kind == Kind::kList) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::MakeList(std::move(l));
      }
      if (ints) return Value::Int(ai(a) + ai(b));
      if (nums) return Value::Float(ad(a) + ad(b));
    } else if (op == "-") {
      if (ints) return Value::Int(ai(a) - ai(b));
      if (nums) return Value::Float(ad(a) - ad(b));
    } else if (op == "*") {
      if ((a.kind == Kind::kString && b.kind == Kind::kInt) || (a.kind == Kind::kInt && b.kind == Kind::kString)) {
        const std::string& str = a.kind == Kind::kString ? a.s : b.s;
        const int64_t times = a.kind == Kind::kInt ? a.i : b.i;
        std::string r;
        for (int64_t i = 0; i < times; ++i) r += str;
        return Value::Str(r);
      }
      if (ints) return Value::Int(ai(a) * ai(b));
      if (nums) return Value::Float(ad(a) * ad(b));
    } else if (op == "/") {
      if (nums) {
        if (ad(b) == 0) err("division by zero");
        return Value::Float(ad(a) / ad(b));
      }
    } else if (op == "//" || op == "%") {
      if (ints) {
        const int64_t x = ai(a), y = ai(b);
        if (y == 0) err("integer division or modulo by zero");
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          --q;
          r += y;
        }
        return Value::Int(op == "//" ? q : r);
      }
      if (nums) {
        const double x = ad(a), y = ad(b);
        if (y == 0) err("float division by zero");
        const double q = std::floor(x / y);
        return Value::Float(op == "//" ? q : x - q * y);
      }
    } else if (op == "**") {
      if (ints && ai(b) >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < ai(b); ++i) r *= ai(a);
        return Value::Int(r);
      }
      if (nums) return Value::Float(std::pow(ad(a), ad(b)));
    }
    err("unsupported operand types for " + op + ": '" + TypeName(a) + "' and '" + TypeName(b) + "'");
  }

  bool ApplyTest(const std::string& name, const Value& v, const std::vector<Value>& args, int line) {
    if (name == "defined") return v.defined();
    if (name == "undefined") return !v.defined();
    if (name == "none") return v.kind == Kind::kNone;
    if (name == "boolean") return v.kind == Kind::kBool;
    if (name == "true") return v.kind == Kind::kBool && v.b;
    if (name == "false") return v.kind == Kind::kBool && !v.b;
    if (name == "integer") return v.kind == Kind::kInt;
    if (name == "float") return v.kind == Kind::kFloat;
    if (name == "number") return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool;
    if (name == "string") return v.kind == Kind::kString;
    if (name == "mapping") return v.kind == Kind::kDict;
    if (name == "iterable") return v.kind == Kind::kList || v.kind == Kind::kDict || v.kind == Kind::kString;
    if (name == "sequence") return v.kind == Kind::kList || v.kind == Kind::kDict || v.kind == Kind::kString;
    if (name == "callable") return v.kind == Kind::kFunction;
    if (name == "odd" || name == "even") {
      if (v.kind != Kind::kInt) Fail("line " + std::to_string(line) + ": " + name + " needs an integer");
      return ((v.i % 2) != 0) == (name == "odd");
    }
    if (name == "lower" || name == "upper") {
      if (v.kind != Kind::kString) return false;
      for (char c : v.s) {
        if (name == "lower" ? std::isupper(static_cast<unsigned char>(c)) : std::islower(static_cast<unsigned char>(c)))
          return false;
      }
      return true;
    }
    if (args.empty()) Fail("line " + std::to_string(line) + ": unknown test '" + name + "' or missing argument");
    const Value& o = args[0];
    if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return Equal(v, o);
    if (name == "ne" || name == "!=") return !Equal(v, o);
    if (name == "lt" || name == "lessthan" || name == "<") return Compare(v, o) < 0;
    if (name == "le" || name == "<=") return Compare(v, o) <= 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return Compare(v, o) > 0;
    if (name == "ge" || name == ">=") return Compare(v, o) >= 0;
    if (name == "in") return Binary("in", v, o, line).b;
    if (name == "divisibleby") return v.kind == Kind::kInt && o.kind == Kind::kInt && o.i != 0 && v.i % o.i == 0;
    Fail("line " + std::to_string(line) + ": unknown test '" + name + "'");
  }

  static const Value* Kw(const std::vector<std::pair<std::string, Value>>& kw, const std::string& k) {
    for (const auto& [name, v] : kw) {
      if (name == k) return &v;
    }
    return nullptr;
  }

  Value AttrPath(const Value& v, const std::string& path, int line) {
    Value cur = v;
    size_t p = 0;
    while (p <= path.size()) {
      const size_t q = path.find('.', p);
      const std::string part = path.substr(p, q == std::string::npos ? std::string::npos : q - p);
      bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                 [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
      cur = digits ? GetItem(cur, Value::Int(std::stoll(part)), line)
                   : (cur.defined() ? GetItem(cur, Value::Str(part), line) : cur);
      if (q == std::string::npos) break;
      p = q + 1;
    }
    return cur;
  }

  Value ApplyFilter(const std::string& name, const std::vector<Value>& args,
                    const std::vector<std::pair<std::string, Value>>& kw, int line = 0) {
    auto err = [&](const std::string& m) { Fail("line " + std::to_string(line) + ": filter " + name + ": " + m); };
    const Value& v = args[0];
    const Value* a1 = args.size() > 1 ? &args[1] : nullptr;
    if (name == "trim" || name == "strip") {
      if (v.kind != Kind::kString) return Value::Str(PyStrip(ToString(v), true, true, a1));
      return Value::Str(PyStrip(v.s, true, true, a1));
    }
    if (name == "length" || name == "count") {
      if (v.kind == Kind::kString) return Value::Int(static_cast<int64_t>(CodePoints(v.s).size()));
      if (v.kind == Kind::kList) return Value::Int(static_cast<int64_t>(v.list->size()));
      if (v.kind == Kind::kDict) return Value::Int(static_cast<int64_t>(v.dict->size()));
      if (v.kind == Kind::kUndefined) return Value::Int(0);
      err("object of type '" + TypeName(v) + "' has no len()");
    }
    if (name == "upper" || name == "lower") {
      std::string r = ToString(v);
      for (char& c : r)
        c = name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c));
      return Value::Str(r);
    }
    if (name == "capitalize") {
      std::string r = ToString(v);
      for (size_t i = 0; i < r.size(); ++i)
        r[i] = i == 0 ? std::toupper(static_cast<unsigned char>(r[i])) : std::tolower(static_cast<unsigned char>(r[i]));
      return Value::Str(r);
    }
    if (name == "title") {
      // Jinja's title: a word starts after whitespace or one of - ( { [ <; its first character is upper-cased and
      // the rest lower-cased.
      std::string r = ToString(v);
      bool start = true;
      for (char& c : r) {
        const unsigned char u = static_cast<unsigned char>(c);
        const bool sep = std::isspace(u) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        if (sep) {
          start = true;
          continue;
        }
        c = start ? std::toupper(u) : std::tolower(u);
        start = false;
      }
      return Value::Str(r);
    }
    if (name == "tojson") {
      int indent = -1;
      const Value* ind = Kw(kw, "indent");
      if (!ind && a1) ind = a1;
      if (ind && ind->kind == Kind::kInt) indent = static_cast<int>(ind->i);
      std::string out;
      ToJsonImpl(v, indent, 0, &out);
      return Value::Str(out);
    }
    if (name == "string") return Value::Str(ToString(v));
    if (name == "int") {
      if (v.kind == Kind::kInt) return v;
      if (v.kind == Kind::kFloat) return Value::Int(static_cast<int64_t>(v.f));
      if (v.kind == Kind::kBool) return Value::Int(v.b);
      try {
        return Value::Int(std::stoll(ToString(v)));
      } catch (...) {
        return a1 ? *a1 : Value::Int(0);
      }
    }
    if (name == "float") {
      if (v.kind == Kind::kFloat) return v;
      if (v.kind == Kind::kInt) return Value::Float(static_cast<double>(v.i));
      try {
        return Value::Float(std::stod(ToString(v)));
      } catch (...) {
        return a1 ? *a1 : Value::Float(0);
      }
    }
    if (name == "abs") {
      if (v.kind == Kind::kInt) return Value::Int(v.i < 0 ? -v.i : v.i);
      if (v.kind == Kind::kFloat) return Value::Float(std::fabs(v.f));
      err("bad operand type");
    }
    if (name == "default" || name == "d") {
      const bool boolean = (args.size() > 2 && args[2].Truthy()) || (Kw(kw, "boolean") && Kw(kw, "boolean")->Truthy());
      if (!v.defined() || (boolean && !v.Truthy())) return a1 ? *a1 : Value::Str("");
      return v;
    }
    if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
      if (name == "safe") return v;
      std::string r;
      for (char c : ToString(v)) {
        switch (c) {
          case '&':
            r += "&amp;";
            break;
          case '<':
            r += "&lt;";
            break;
          case '>':
            r += "&gt;";
            break;
          case '"':
            r += "&#34;";
            break;
          case '\'':
            r += "&#39;";
            break;
          default:
            r += c;
        }
      }
      return Value::Str(r);
    }
    if (name == "list") return Value::MakeList(Iterate(v));
    if (name == "first" || name == "last") {
      List l = Iterate(v);
      if (l.empty()) return Value::Undefined();
      return name == "first" ? l.front() : l.back();
    }
    if (name == "reverse") {
      if (v.kind == Kind::kString) {
        std::vector<uint32_t> cps = CodePoints(v.s);
        std::reverse(cps.begin(), cps.end());
        return Value::Str(FromCodePoints(cps, 0, cps.size()));
      }
      List l = Iterate(v);
      std::reverse(l.begin(), l.end());
      return Value::MakeList(std::move(l));
    }
    if (name == "join") {
      const std::string sep = a1 ? ToString(*a1) : (Kw(kw, "d") ? ToString(*Kw(kw, "d")) : "");
      const Value* attr = Kw(kw, "attribute");
      std::string r;
      List l = Iterate(v);
      for (size_t i = 0; i < l.size(); ++i)
        r += (i ? sep : "") + ToString(attr ? AttrPath(l[i], ToString(*attr), line) : l[i]);
      return Value::Str(r);
    }
    if (name == "replace") {
      if (args.size() < 3) err("needs two arguments");
      const std::string s = ToString(v), from = ToString(args[1]), to = ToString(args[2]);
      int64_t count = args.size() > 3 && args[3].kind == Kind::kInt ? args[3].i : -1;
      std::string r;
      if (from.empty()) {
        // Python inserts `to` between every character (and at both ends).
        const std::vector<uint32_t> cps = CodePoints(s);
        r = to;
        for (size_t i = 0; i < cps.size(); ++i) {
          AppendUtf8(cps[i], &r);
          r += to;
        }
        return Value::Str(r);
      }
      size_t p = 0;
      for (;;) {
        const size_t q = s.find(from, p);
        if (q == std::string::npos || count == 0) break;
        r += s.substr(p, q - p) + to;
        p = q + from.size();
        if (count > 0) --count;
      }
      r += s.substr(p);
      return Value::Str(r);
    }
    if (name == "items") {
      if (v.kind != Kind::kDict) err("expects a mapping");
      List l;
      for (const auto& [k, x] : *v.dict) l.push_back(Value::MakeList({Value::Str(k), x}));
      return Value::MakeList(std::move(l));
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
      const bool attr = name == "selectattr" || name == "rejectattr";
      const bool select = name == "selectattr" || name == "select";
      size_t k = 1;
      std::string attr_name;
      if (attr) {
        if (args.size() < 2) err("needs an attribute name");
        attr_name = ToString(args[k++]);
      }
      std::string test = args.size() > k ? ToString(args[k++]) : "";
      std::vector<Value> test_args(args.begin() + std::min(k, args.size()), args.end());
      List out;
      for (const Value& item : Iterate(v)) {
        const Value x = attr ? AttrPath(item, attr_name, line) : item;
        const bool ok = test.empty() ? x.Truthy() : ApplyTest(test, x, test_args, line);
        if (ok == select) out.push_back(item);
      }
      return Value::MakeList(std::move(out));
    }
    if (name == "map") {
      List out;
      const Value* attr = Kw(kw, "attribute");
      for (const Value& item : Iterate(v)) {
        if (attr) {
          Value x = AttrPath(item, ToString(*attr), line);
          if (!x.defined() && Kw(kw, "default")) x = *Kw(kw, "default");
          out.push_back(x);
        } else {
          if (!a1) err("needs a filter name or attribute=");
          std::vector<Value> fargs = {item};
          fargs.insert(fargs.end(), args.begin() + 2, args.end());
          out.push_back(ApplyFilter(ToString(*a1), fargs, {}, line));
        }
      }
      return Value::MakeList(std::move(out));
    }
    if (name == "unique") {
      List out;
      for (const Value& item : Iterate(v)) {
        bool seen = false;
        for (const Value& o : out) seen = seen || Equal(o, item);
        if (!seen) out.push_back(item);
      }
      return Value::MakeList(std::move(out));
    }
    if (name == "sort" || name == "dictsort") {
      List l = name == "dictsort"
                   ? ApplyFilter("items", {v}, {}, line).list ? *ApplyFilter("items", {v}, {}, line).list : List{}
                   : Iterate(v);
      const bool reverse = Kw(kw, "reverse") && Kw(kw, "reverse")->Truthy();
      const Value* attr = Kw(kw, "attribute");
      std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) {
        const Value kx = name == "dictsort" ? (*x.list)[0] : attr ? AttrPath(x, ToString(*attr), line) : x;
        const Value ky = name == "dictsort" ? (*y.list)[0] : attr ? AttrPath(y, ToString(*attr), line) : y;
        return reverse ? Compare(ky, kx) < 0 : Compare(kx, ky) < 0;
      });
      return Value::MakeList(std::move(l));
    }
    if (name == "indent") {
      const int64_t width = a1 && a1->kind == Kind::kInt ? a1->i : (Kw(kw, "width") ? Kw(kw, "width")->i : 4);
      const bool first = (args.size() > 2 && args[2].Truthy()) || (Kw(kw, "first") && Kw(kw, "first")->Truthy());
      const std::string pad(static_cast<size_t>(width), ' ');
      const std::string s = ToString(v);
      std::string r;
      bool line_start = first;
      for (size_t i = 0; i < s.size(); ++i) {
        if (line_start && s[i] != '\n') r += pad;
        line_start = false;
        r += s[i];
        if (s[i] == '\n') line_start = true;
      }
      return Value::Str(r);
    }
    if (name == "round") {
      const double x = v.kind == Kind::kFloat ? v.f : v.kind == Kind::kInt ? static_cast<double>(v.i) : 0;
      const int64_t prec = a1 && a1->kind == Kind::kInt ? a1->i : 0;
      const double m = std::pow(10.0, static_cast<double>(prec));
      return Value::Float(std::nearbyint(x * m) / m);
    }
    if (name == "wordcount")
      return Value::Int(static_cast<int64_t>(StringMethod(ToString(v), "split", {}, line)->list->size()));
    err("unknown filter");
  }

  Value Eval(const Expr& e) {
    switch (e.k) {
      case Expr::K::kLiteral:
        return e.lit;
      case Expr::K::kName:
        return Lookup(e.name);
      case Expr::K::kList:
      case Expr::K::kTuple: {
        List l;
        for (const ExprP& x : e.args) l.push_back(Eval(*x));
        return Value::MakeList(std::move(l));
      }
      case Expr::K::kDict: {
        Value d = Value::MakeDict();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) d.Set(ToString(Eval(*e.args[i])), Eval(*e.args[i + 1]));
        return d;
      }
      case Expr::K::kAttr:
        return GetAttr(Eval(*e.args[0]), e.name, e.line);
      case Expr::K::kItem:
        return GetItem(Eval(*e.args[0]), Eval(*e.args[1]), e.line);
      case Expr::K::kSlice: {
        auto opt = [&](const ExprP& x) { return x ? Eval(*x) : Value::None(); };
        return Slice(Eval(*e.args[0]), opt(e.args[1]), opt(e.args[2]), opt(e.args[3]), e.line);
      }
      case Expr::K::kCall: {
        // Some filters are called like functions in templates only as filters; a name that is not defined but
        // is a known callable global is looked up by Lookup.
        const Value f = Eval(*e.args[0]);
        std::vector<Value> args;
        for (size_t i = 1; i < e.args.size(); ++i) args.push_back(Eval(*e.args[i]));
        std::vector<std::pair<std::string, Value>> kw;
        for (const auto& [k, x] : e.kwargs) kw.emplace_back(k, Eval(*x));
        if (f.kind == Kind::kUndefined) {
          std::string what = e.args[0]->k == Expr::K::kName   ? e.args[0]->name
                             : e.args[0]->k == Expr::K::kAttr ? e.args[0]->name
                                                              : "value";
          Fail("line " + std::to_string(e.line) + ": '" + what + "' is undefined or not callable");
        }
        return Call(f, args, kw, e.line);
      }
      case Expr::K::kFilter: {
        std::vector<Value> args;
        for (const ExprP& x : e.args) args.push_back(Eval(*x));
        std::vector<std::pair<std::string, Value>> kw;
        for (const auto& [k, x] : e.kwargs) kw.emplace_back(k, Eval(*x));
        return ApplyFilter(e.name, args, kw, e.line);
      }
      case Expr::K::kTest: {
        const Value v = Eval(*e.args[0]);
        std::vector<Value> args;
        for (size_t i = 1; i < e.args.size(); ++i) args.push_back(Eval(*e.args[i]));
        const bool r = ApplyTest(e.name, v, args, e.line);
        return Value::Bool(e.negate ? !r : r);
      }
      case Expr::K::kUnary: {
        const Value v = Eval(*e.args[0]);
        if (v.kind == Kind::kInt) return Value::Int(e.name == "-" ? -v.i : v.i);
        if (v.kind == Kind::kFloat) return Value::Float(e.name == "-" ? -v.f : v.f);
        Fail("line " + std::to_string(e.line) + ": bad operand type for unary " + e.name + ": '" + TypeName(v) + "'");
      }
      case Expr::K::kBinary:
        return Binary(e.name, Eval(*e.args[0]), Eval(*e.args[1]), e.line);
      case Expr::K::kAnd: {
        Value a = Eval(*e.args[0]);
        return a.Truthy() ? Eval(*e.args[1]) : a;
      }
      case Expr::K::kOr: {
        Value a = Eval(*e.args[0]);
        return a.Truthy() ? a : Eval(*e.args[1]);
      }
      case Expr::K::kNot:
        return Value::Bool(!Eval(*e.args[0]).Truthy());
      case Expr::K::kCond:
        if (Eval(*e.args[0]).Truthy()) return Eval(*e.args[1]);
        return e.args[2] ? Eval(*e.args[2]) : Value::Undefined();
    }
    return Value::Undefined();
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
};

}  // namespace

Template::Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
Template::~Template() = default;

Result<Template> Template::Parse(const std::string& source) {
  try {
    Template t;
    TemplateParser p(Segments(source));
    t.root_ = p.ParseRoot();
    return t;
  } catch (const JinjaError& e) {
    return MakeError(ErrorCode::kInvalidArgument, "template: " + e.message);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument, std::string("template: ") + e.what());
  }
}

Result<std::string> Template::Render(const Value& context) const {
  try {
    Interpreter in(context);
    return in.Render(root_->body);
  } catch (const JinjaError& e) {
    return MakeError(ErrorCode::kInvalidArgument, e.message);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kInvalidArgument, std::string("template: ") + e.what());
  }
}

}  // namespace bigplan::text::jinja
