// tokenizer.json (Hugging Face `tokenizers`): the encode pipeline is the Rust library's, step for step —
// added-token extraction on the raw text, normalization, added-token extraction on the normalized pieces,
// pre-tokenization into pieces, the model per piece, then the post-processor. Offsets are not tracked except for
// the one fact Metaspace's prepend_scheme "first" needs (does a piece start at the original text's offset 0).

#include "text/hf_tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "text/regex.h"
#include "text/unicode.h"

namespace bigplan::text {
namespace {

using json = nlohmann::json;

// A piece of the text on its way through the pipeline.
struct Piece {
  std::string s;
  bool first = false;  // starts at offset 0 of the original text
  int64_t id = -1;     // an added token's id (the piece is final), else -1
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// (start, end, is_match) covering the whole string, as the Rust Pattern::find_matches returns them.
struct Span {
  size_t start, end;
  bool match;
};

std::vector<Span> SpansFromMatches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches,
                                   bool invert) {
  std::vector<Span> out;
  if (s.empty()) return {{0, 0, false}};
  size_t prev = 0;
  for (auto [a, b] : matches) {
    if (prev != a) out.push_back({prev, a, invert});
    out.push_back({a, b, !invert});
    prev = b;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), invert});
  return out;
}

// Rust's `impl Pattern for Fn(char) -> bool`: every matching character alone, non-matching runs together.
std::vector<Span> SpansFromCharPredicate(std::string_view s, const std::function<bool(uint32_t)>& pred) {
  if (s.empty()) return {{0, 0, false}};
  std::vector<Span> out;
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t b = i;
    const uint32_t cp = NextCodePoint(s, &i);
    if (pred(cp)) {
      if (last < b) out.push_back({last, b, false});
      out.push_back({b, i, true});
      last = i;
    }
  }
  if (s.size() > last) out.push_back({last, s.size(), false});
  return out;
}

void SplitPiece(const Piece& p, std::vector<Span> spans, Behavior behavior, std::vector<Piece>* out) {
  std::vector<std::pair<Span, bool>> splits;  // span, remove
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Span& s : spans) splits.push_back({s, false});
      break;
    case Behavior::kRemoved:
      for (const Span& s : spans) splits.push_back({s, s.match});
      break;
    case Behavior::kContiguous: {
      bool prev = false;
      for (const Span& s : spans) {
        if (s.match == prev && !splits.empty())
          splits.back().first.end = s.end;
        else
          splits.push_back({s, false});
        prev = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool prev = false;
      for (const Span& s : spans) {
        if (s.match && !prev && !splits.empty())
          splits.back().first.end = s.end;
        else
          splits.push_back({s, false});
        prev = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool prev = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !prev && !splits.empty())
          splits.back().first.start = it->start;
        else
          splits.push_back({*it, false});
        prev = it->match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const auto& [span, remove] : splits) {
    if (remove || span.end <= span.start) continue;
    out->push_back({p.s.substr(span.start, span.end - span.start), p.first && span.start == 0, -1});
  }
}

bool IsWhitespace(uint32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)); }

bool IsNumeric(uint32_t cp) {
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

// Rust regex \w: alphabetic, marks, decimal digits, connector punctuation, join controls.
bool IsWordChar(uint32_t cp) {
  if (u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_ALPHABETIC)) return true;
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION || cp == 0x200C || cp == 0x200D;
}

uint32_t LastCodePoint(std::string_view s) {
  size_t i = s.size();
  do {
    --i;
  } while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80);
  return NextCodePoint(s, &i);
}

uint32_t FirstCodePoint(std::string_view s) {
  size_t i = 0;
  return NextCodePoint(s, &i);
}

std::string ReplaceAll(std::string_view s, const Regex& re, const std::string& content) {
  std::string out;
  size_t prev = 0;
  for (auto [a, b] : re.FindAll(s)) {
    out.append(s.substr(prev, a - prev));
    out += content;
    prev = b;
  }
  out.append(s.substr(prev));
  return out;
}

Error Corrupt(const std::string& name, const std::string& what) {
  return MakeError(ErrorCode::kCorrupt, name + ": " + what);
}

Error Unsupported(const std::string& name, const std::string& what) {
  return MakeError(ErrorCode::kUnsupported, name + ": " + what);
}

std::string TypeOf(const json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// A "pattern" field: {"String": "..."} or {"Regex": "..."}.
Result<Regex> ParsePattern(const json& j, const std::string& name, const std::string& where) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) return Regex::Literal(j["String"]);
  if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    auto r = Regex::Compile(j["Regex"]);
    if (!r.ok()) return Corrupt(name, where + ": " + r.error().message);
    return r;
  }
  return Corrupt(name, where + ": pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

std::string StrField(const json& j, const char* key, const std::string& def = "") {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : def;
}

bool BoolField(const json& j, const char* key, bool def) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : def;
}

// ---- normalizers ----

using NormalizerFn = std::function<Result<std::string>(std::string_view)>;

Status ParseNormalizer(const json& j, const std::string& name, std::vector<NormalizerFn>* out) {
  if (j.is_null()) return Status::Ok();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      return Corrupt(name, "normalizer Sequence without normalizers");
    for (const json& n : j["normalizers"]) BIGPLAN_RETURN_IF_ERROR(ParseNormalizer(n, name, out));
    return Status::Ok();
  }
  static const std::unordered_map<std::string, NormalForm> forms = {
      {"NFC", NormalForm::kNFC}, {"NFD", NormalForm::kNFD}, {"NFKC", NormalForm::kNFKC}, {"NFKD", NormalForm::kNFKD}};
  if (auto it = forms.find(type); it != forms.end()) {
    const NormalForm f = it->second;
    out->push_back([f](std::string_view s) { return Normalize(s, f); });
    return Status::Ok();
  }
  if (type == "Lowercase") {
    out->push_back([](std::string_view s) -> Result<std::string> {
      std::string r;
      for (size_t i = 0; i < s.size();) AppendUtf8(static_cast<uint32_t>(u_tolower(NextCodePoint(s, &i))), &r);
      return r;
    });
    return Status::Ok();
  }
  if (type == "Prepend") {
    const std::string pre = StrField(j, "prepend");
    out->push_back(
        [pre](std::string_view s) -> Result<std::string> { return s.empty() ? std::string() : pre + std::string(s); });
    return Status::Ok();
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return Corrupt(name, "normalizer Replace without pattern");
    BIGPLAN_ASSIGN_OR_RETURN(Regex re, ParsePattern(j["pattern"], name, "normalizer Replace"));
    auto shared = std::make_shared<Regex>(std::move(re));
    const std::string content = StrField(j, "content");
    out->push_back(
        [shared, content](std::string_view s) -> Result<std::string> { return ReplaceAll(s, *shared, content); });
    return Status::Ok();
  }
  if (type == "Strip") {
    const bool left = BoolField(j, "strip_left", true), right = BoolField(j, "strip_right", true);
    out->push_back([left, right](std::string_view s) -> Result<std::string> {
      size_t a = 0, b = s.size();
      if (left) {
        while (a < b) {
          size_t i = a;
          if (!IsWhitespace(NextCodePoint(s, &i))) break;
          a = i;
        }
      }
      if (right) {
        while (b > a) {
          std::string_view t = s.substr(a, b - a);
          const uint32_t cp = LastCodePoint(t);
          if (!IsWhitespace(cp)) break;
          std::string tmp;
          AppendUtf8(cp, &tmp);
          b -= tmp.size();
        }
      }
      return std::string(s.substr(a, b - a));
    });
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    out->push_back([](std::string_view s) -> Result<std::string> {
      std::string r;
      for (unsigned char c : s) r += ByteToUnicode(c);
      return r;
    });
    return Status::Ok();
  }
  return Unsupported(name, "normalizer \"" + type + "\" is not supported");
}

// ---- pre-tokenizers ----

// Splits every non-final piece.
using PreTokenizerFn = std::function<void(const Piece&, std::vector<Piece>*)>;

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Result<Behavior> ParseBehavior(const json& j, const std::string& name) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return Corrupt(name, "pre-tokenizer Split: unknown behavior \"" + b + "\"");
}

PreTokenizerFn RegexSplitter(std::shared_ptr<Regex> re, Behavior behavior, bool invert) {
  return [re, behavior, invert](const Piece& p, std::vector<Piece>* out) {
    SplitPiece(p, SpansFromMatches(p.s, re->FindAll(p.s), invert), behavior, out);
  };
}

Status ParsePreTokenizer(const json& j, const std::string& name, std::vector<PreTokenizerFn>* out) {
  if (j.is_null()) return Status::Ok();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      return Corrupt(name, "pre-tokenizer Sequence without pretokenizers");
    for (const json& p : j["pretokenizers"]) BIGPLAN_RETURN_IF_ERROR(ParsePreTokenizer(p, name, out));
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    const bool prefix = BoolField(j, "add_prefix_space", true);
    const bool use_regex = BoolField(j, "use_regex", true);
    std::shared_ptr<Regex> re;
    if (use_regex) {
      auto r = Regex::Compile(kGpt2Pattern);
      if (!r.ok()) return r.error();
      re = std::make_shared<Regex>(std::move(*r));
    }
    out->push_back([prefix, re](const Piece& in, std::vector<Piece>* o) {
      Piece p = in;
      if (prefix && (p.s.empty() || p.s[0] != ' ')) p.s.insert(0, " ");
      std::vector<Piece> parts;
      if (re)
        SplitPiece(p, SpansFromMatches(p.s, re->FindAll(p.s), false), Behavior::kIsolated, &parts);
      else if (!p.s.empty())
        parts.push_back(p);
      for (Piece& q : parts) {
        std::string mapped;
        mapped.reserve(q.s.size() * 2);
        for (unsigned char c : q.s) mapped += ByteToUnicode(c);
        q.s = std::move(mapped);
        o->push_back(std::move(q));
      }
    });
    return Status::Ok();
  }
  if (type == "Split") {
    if (!j.contains("pattern")) return Corrupt(name, "pre-tokenizer Split without pattern");
    BIGPLAN_ASSIGN_OR_RETURN(Regex re, ParsePattern(j["pattern"], name, "pre-tokenizer Split"));
    BIGPLAN_ASSIGN_OR_RETURN(Behavior b, ParseBehavior(j.value("behavior", json()), name));
    out->push_back(RegexSplitter(std::make_shared<Regex>(std::move(re)), b, BoolField(j, "invert", false)));
    return Status::Ok();
  }
  if (type == "Metaspace") {
    const std::string rep = StrField(j, "replacement", "\xE2\x96\x81");
    std::string scheme = StrField(j, "prepend_scheme", "always");
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      scheme = "never";
    }
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return Corrupt(name, "pre-tokenizer Metaspace: unknown prepend_scheme \"" + scheme + "\"");
    }
    const bool split = BoolField(j, "split", true);
    if (rep.empty()) return Corrupt(name, "pre-tokenizer Metaspace: empty replacement");
    size_t k = 0;
    const uint32_t rep_cp = NextCodePoint(rep, &k);
    out->push_back([rep, rep_cp, scheme, split](const Piece& in, std::vector<Piece>* o) {
      Piece p = in;
      std::string r;
      for (char c : p.s) {
        if (c == ' ')
          r += rep;
        else
          r += c;
      }
      p.s = std::move(r);
      const bool starts = p.s.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == "always" || (scheme == "first" && p.first))) p.s.insert(0, rep);
      if (!split) {
        if (!p.s.empty()) o->push_back(std::move(p));
        return;
      }
      SplitPiece(p, SpansFromCharPredicate(p.s, [rep_cp](uint32_t cp) { return cp == rep_cp; }),
                 Behavior::kMergedWithNext, o);
    });
    return Status::Ok();
  }
  if (type == "Digits") {
    const Behavior b = BoolField(j, "individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous;
    out->push_back(
        [b](const Piece& p, std::vector<Piece>* o) { SplitPiece(p, SpansFromCharPredicate(p.s, IsNumeric), b, o); });
    return Status::Ok();
  }
  if (type == "Whitespace") {
    auto r = Regex::Compile(R"(\w+|[^\w\s]+)");
    if (!r.ok()) return r.error();
    auto re = std::make_shared<Regex>(std::move(*r));
    out->push_back([re](const Piece& p, std::vector<Piece>* o) {
      SplitPiece(p, SpansFromMatches(p.s, re->FindAll(p.s), true), Behavior::kRemoved, o);
    });
    return Status::Ok();
  }
  if (type == "WhitespaceSplit") {
    out->push_back([](const Piece& p, std::vector<Piece>* o) {
      SplitPiece(p, SpansFromCharPredicate(p.s, IsWhitespace), Behavior::kRemoved, o);
    });
    return Status::Ok();
  }
  return Unsupported(name, "pre-tokenizer \"" + type + "\" is not supported");
}

// ---- decoders ----

using DecoderFn = std::function<std::vector<std::string>(std::vector<std::string>)>;

Status ParseDecoder(const json& j, const std::string& name, std::vector<DecoderFn>* out) {
  if (j.is_null()) return Status::Ok();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array()) return Corrupt(name, "decoder Sequence without decoders");
    for (const json& d : j["decoders"]) BIGPLAN_RETURN_IF_ERROR(ParseDecoder(d, name, out));
    return Status::Ok();
  }
  if (type == "ByteLevel") {
    out->push_back([](std::vector<std::string> toks) {
      std::string bytes;
      for (const std::string& t : toks) {
        std::string mapped;
        bool all = true;
        for (size_t i = 0; i < t.size();) {
          const int b = UnicodeToByte(NextCodePoint(t, &i));
          if (b < 0) {
            all = false;
            break;
          }
          mapped.push_back(static_cast<char>(b));
        }
        bytes += all ? mapped : t;
      }
      return std::vector<std::string>{Utf8Lossy(bytes)};
    });
    return Status::Ok();
  }
  if (type == "Metaspace") {
    const std::string rep = StrField(j, "replacement", "\xE2\x96\x81");
    std::string scheme = StrField(j, "prepend_scheme", "always");
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
      scheme = "never";
    }
    out->push_back([rep, scheme](std::vector<std::string> toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        std::string r;
        const std::string& t = toks[i];
        for (size_t k = 0; k < t.size();) {
          if (!rep.empty() && t.compare(k, rep.size(), rep) == 0) {
            if (!(i == 0 && scheme != "never")) r += ' ';
            k += rep.size();
          } else {
            r += t[k++];
          }
        }
        toks[i] = std::move(r);
      }
      return toks;
    });
    return Status::Ok();
  }
  if (type == "Replace") {
    if (!j.contains("pattern")) return Corrupt(name, "decoder Replace without pattern");
    BIGPLAN_ASSIGN_OR_RETURN(Regex re, ParsePattern(j["pattern"], name, "decoder Replace"));
    auto shared = std::make_shared<Regex>(std::move(re));
    const std::string content = StrField(j, "content");
    out->push_back([shared, content](std::vector<std::string> toks) {
      for (std::string& t : toks) t = ReplaceAll(t, *shared, content);
      return toks;
    });
    return Status::Ok();
  }
  if (type == "ByteFallback") {
    out->push_back([](std::vector<std::string> toks) {
      std::vector<std::string> r;
      std::string pending;
      auto flush = [&] {
        if (pending.empty()) return;
        if (IsValidUtf8(pending)) {
          r.push_back(pending);
        } else {
          for (size_t k = 0; k < pending.size(); ++k) r.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
      };
      for (std::string& t : toks) {
        int byte = -1;
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
          auto hex = [](char c) {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
          };
          const int hi = hex(t[3]), lo = hex(t[4]);
          if (hi >= 0 && lo >= 0) byte = hi * 16 + lo;
        }
        if (byte >= 0) {
          pending.push_back(static_cast<char>(byte));
        } else {
          flush();
          r.push_back(std::move(t));
        }
      }
      flush();
      return r;
    });
    return Status::Ok();
  }
  if (type == "Fuse") {
    out->push_back([](std::vector<std::string> toks) {
      std::string all;
      for (const std::string& t : toks) all += t;
      return std::vector<std::string>{all};
    });
    return Status::Ok();
  }
  if (type == "Strip") {
    const std::string content = StrField(j, "content", " ");
    size_t k = 0;
    const uint32_t c = content.empty() ? 0 : NextCodePoint(content, &k);
    const int64_t start = j.value("start", 0), stop = j.value("stop", 0);
    out->push_back([c, start, stop](std::vector<std::string> toks) {
      for (std::string& t : toks) {
        std::vector<uint32_t> cps;
        for (size_t i = 0; i < t.size();) cps.push_back(NextCodePoint(t, &i));
        size_t a = 0, b = cps.size();
        for (int64_t i = 0; i < start && i < static_cast<int64_t>(cps.size()); ++i) {
          if (cps[i] != c) break;
          a = i + 1;
        }
        for (int64_t i = 0; i < stop && i < static_cast<int64_t>(cps.size()); ++i) {
          const size_t idx = cps.size() - i - 1;
          if (cps[idx] != c) break;
          b = idx;
        }
        std::string r;
        for (size_t i = a; i < b; ++i) AppendUtf8(cps[i], &r);
        t = std::move(r);
      }
      return toks;
    });
    return Status::Ok();
  }
  return Unsupported(name, "decoder \"" + type + "\" is not supported");
}

// ---- post-processors ----

using PostFn = std::function<std::vector<int64_t>(std::vector<int64_t>)>;

Status ParsePostProcessor(const json& j, const std::string& name, std::vector<PostFn>* out) {
  if (j.is_null()) return Status::Ok();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array())
      return Corrupt(name, "post-processor Sequence without processors");
    for (const json& p : j["processors"]) BIGPLAN_RETURN_IF_ERROR(ParsePostProcessor(p, name, out));
    return Status::Ok();
  }
  if (type == "ByteLevel") return Status::Ok();  // offsets only
  if (type == "TemplateProcessing") {
    if (!j.contains("single") || !j["single"].is_array()) return Corrupt(name, "TemplateProcessing without single");
    std::unordered_map<std::string, std::vector<int64_t>> specials;
    if (j.contains("special_tokens") && j["special_tokens"].is_object()) {
      for (const auto& [k, v] : j["special_tokens"].items()) {
        std::vector<int64_t> ids;
        if (v.contains("ids") && v["ids"].is_array()) {
          for (const json& id : v["ids"]) ids.push_back(id.get<int64_t>());
        }
        specials[k] = ids;
      }
    }
    // Items: -1 marks the sequence, otherwise a run of special ids.
    std::vector<std::vector<int64_t>> items;
    std::vector<bool> is_seq;
    for (const json& item : j["single"]) {
      if (item.contains("Sequence")) {
        items.push_back({});
        is_seq.push_back(true);
      } else if (item.contains("SpecialToken")) {
        const std::string id = StrField(item["SpecialToken"], "id");
        auto it = specials.find(id);
        if (it == specials.end())
          return Corrupt(name, "TemplateProcessing: special token \"" + id + "\" not in special_tokens");
        items.push_back(it->second);
        is_seq.push_back(false);
      } else {
        return Corrupt(name, "TemplateProcessing: unknown item " + item.dump());
      }
    }
    out->push_back([items, is_seq](std::vector<int64_t> ids) {
      std::vector<int64_t> r;
      for (size_t i = 0; i < items.size(); ++i) {
        if (is_seq[i])
          r.insert(r.end(), ids.begin(), ids.end());
        else
          r.insert(r.end(), items[i].begin(), items[i].end());
      }
      return r;
    });
    return Status::Ok();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    if (!j.contains("cls") || !j.contains("sep") || !j["cls"].is_array() || !j["sep"].is_array() ||
        j["cls"].size() != 2 || j["sep"].size() != 2) {
      return Corrupt(name, type + ": cls and sep must be [token, id]");
    }
    const int64_t cls = j["cls"][1].get<int64_t>(), sep = j["sep"][1].get<int64_t>();
    out->push_back([cls, sep](std::vector<int64_t> ids) {
      ids.insert(ids.begin(), cls);
      ids.push_back(sep);
      return ids;
    });
    return Status::Ok();
  }
  return Unsupported(name, "post-processor \"" + type + "\" is not supported");
}

struct AddedToken {
  std::string content;  // what is matched (normalized for normalized tokens)
  int64_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest matching of a set of strings (the Rust AddedVocabulary's Aho-Corasick).
class TokenMatcher {
 public:
  void Add(const AddedToken* t) {
    if (!t->content.empty()) by_first_[static_cast<unsigned char>(t->content[0])].push_back(t);
  }
  void Finish() {
    for (auto& v : by_first_) {
      std::stable_sort(v.begin(), v.end(),
                       [](const AddedToken* a, const AddedToken* b) { return a->content.size() > b->content.size(); });
    }
  }
  bool empty() const {
    for (const auto& v : by_first_) {
      if (!v.empty()) return false;
    }
    return true;
  }
  // The longest token at `pos`, or null.
  const AddedToken* At(std::string_view s, size_t pos) const {
    for (const AddedToken* t : by_first_[static_cast<unsigned char>(s[pos])]) {
      if (s.compare(pos, t->content.size(), t->content) == 0) return t;
    }
    return nullptr;
  }

 private:
  std::vector<const AddedToken*> by_first_[256];
};

class HfTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> Parse(const std::string& text, const std::string& name);

  Result<std::vector<int64_t>> Encode(std::string_view text, bool add_special_tokens) const override;
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  std::optional<int64_t> TokenToId(std::string_view token) const override {
    auto it = added_by_content_.find(std::string(token));
    if (it != added_by_content_.end()) return it->second->id;
    auto v = vocab_.find(std::string(token));
    if (v != vocab_.end()) return v->second;
    return std::nullopt;
  }
  std::optional<std::string> IdToToken(int64_t id) const override {
    const std::string* t = Token(id);
    if (!t) return std::nullopt;
    return *t;
  }
  bool IsSpecial(int64_t id) const override { return special_ids_.count(id) > 0; }
  int64_t vocab_size() const override { return vocab_size_; }
  std::string kind() const override { return "tokenizer.json"; }

 private:
  const std::string* Token(int64_t id) const {
    auto a = added_by_id_.find(id);
    if (a != added_by_id_.end()) return &a->second->content_raw;
    if (id >= 0 && id < static_cast<int64_t>(id_to_token_.size()) && has_id_[id]) return &id_to_token_[id];
    return nullptr;
  }
  void SplitAdded(const Piece& p, const TokenMatcher& m, std::vector<Piece>* out) const;
  Status Bpe(const std::string& word, std::vector<int64_t>* out) const;

  struct Added {
    AddedToken tok;
    std::string content_raw;
  };
  std::vector<std::unique_ptr<Added>> added_;
  std::unordered_map<std::string, const AddedToken*> added_by_content_;
  std::unordered_map<int64_t, const Added*> added_by_id_;
  std::unordered_set<int64_t> special_ids_;
  TokenMatcher raw_matcher_, normalized_matcher_;

  std::vector<NormalizerFn> normalizers_;
  std::vector<PreTokenizerFn> pre_tokenizers_;
  std::vector<DecoderFn> decoders_;
  std::vector<PostFn> post_;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  int64_t vocab_size_ = 0;
  std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges_;  // (a, b) -> (rank, merged id)
  std::optional<int64_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string continuing_prefix_, end_suffix_;
  std::vector<int64_t> byte_ids_;  // <0xXX> ids for byte fallback (-1 where missing)
};

uint64_t PairKey(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

Result<std::unique_ptr<Tokenizer>> HfTokenizer::Parse(const std::string& text, const std::string& name) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt(name, "not a JSON object");
  auto t = std::make_unique<HfTokenizer>();
  const json& model = j.value("model", json());
  if (!model.is_object()) return Corrupt(name, "no \"model\" object");
  std::string mtype = TypeOf(model);
  if (mtype.empty() && model.contains("merges")) mtype = "BPE";
  if (mtype != "BPE") return Unsupported(name, "model type \"" + mtype + "\" is not supported (BPE only)");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0) {
    return Unsupported(name, "BPE dropout is not supported");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) return Corrupt(name, "model.vocab is not an object");
  int64_t max_id = -1;
  for (const auto& [k, v] : model["vocab"].items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) return Corrupt(name, "model.vocab[\"" + k + "\"] is not an id");
    t->vocab_[k] = v.get<int64_t>();
    max_id = std::max(max_id, v.get<int64_t>());
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      if (!a.contains("id") || !a.contains("content")) return Corrupt(name, "added_tokens entry without id/content");
      max_id = std::max(max_id, a["id"].get<int64_t>());
    }
  }
  t->id_to_token_.assign(max_id + 1, "");
  t->has_id_.assign(max_id + 1, false);
  for (const auto& [k, id] : t->vocab_) {
    t->id_to_token_[id] = k;
    t->has_id_[id] = true;
  }
  t->vocab_size_ = max_id + 1;

  t->unk_id_.reset();
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = t->vocab_.find(model["unk_token"].get<std::string>());
    if (it != t->vocab_.end()) t->unk_id_ = it->second;
  }
  t->fuse_unk_ = BoolField(model, "fuse_unk", false);
  t->byte_fallback_ = BoolField(model, "byte_fallback", false);
  t->ignore_merges_ = BoolField(model, "ignore_merges", false);
  t->continuing_prefix_ = StrField(model, "continuing_subword_prefix");
  t->end_suffix_ = StrField(model, "end_of_word_suffix");
  if (t->byte_fallback_) {
    t->byte_ids_.assign(256, -1);
    static const char* hex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const std::string code = std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
      auto it = t->vocab_.find(code);
      if (it != t->vocab_.end()) t->byte_ids_[b] = it->second;
    }
  }
  if (model.contains("merges") && model["merges"].is_array()) {
    uint32_t rank = 0;
    for (const json& m : model["merges"]) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) return Corrupt(name, "merge \"" + s + "\" is not \"a b\"");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        return Corrupt(name, "merge " + m.dump() + " is neither \"a b\" nor [a, b]");
      }
      auto ia = t->vocab_.find(a), ib = t->vocab_.find(b);
      if (ia == t->vocab_.end() || ib == t->vocab_.end())
        return Corrupt(name, "merge \"" + a + " " + b + "\": token not in vocab");
      const size_t plen = t->continuing_prefix_.size();
      const std::string merged = a + (b.size() >= plen ? b.substr(plen) : b);
      auto im = t->vocab_.find(merged);
      if (im == t->vocab_.end()) return Corrupt(name, "merge \"" + a + " " + b + "\": \"" + merged + "\" not in vocab");
      t->merges_[PairKey(ia->second, ib->second)] = {rank++, im->second};
    }
  }

  BIGPLAN_RETURN_IF_ERROR(ParseNormalizer(j.value("normalizer", json()), name, &t->normalizers_));
  BIGPLAN_RETURN_IF_ERROR(ParsePreTokenizer(j.value("pre_tokenizer", json()), name, &t->pre_tokenizers_));
  BIGPLAN_RETURN_IF_ERROR(ParseDecoder(j.value("decoder", json()), name, &t->decoders_));
  BIGPLAN_RETURN_IF_ERROR(ParsePostProcessor(j.value("post_processor", json()), name, &t->post_));

  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      auto add = std::make_unique<Added>();
      add->content_raw = a["content"].get<std::string>();
      add->tok.content = add->content_raw;
      add->tok.id = a["id"].get<int64_t>();
      add->tok.single_word = BoolField(a, "single_word", false);
      add->tok.lstrip = BoolField(a, "lstrip", false);
      add->tok.rstrip = BoolField(a, "rstrip", false);
      add->tok.normalized = BoolField(a, "normalized", true);
      add->tok.special = BoolField(a, "special", false);
      if (add->tok.normalized) {
        for (const NormalizerFn& n : t->normalizers_) {
          BIGPLAN_ASSIGN_OR_RETURN(add->tok.content, n(add->tok.content));
        }
      }
      if (add->tok.special) t->special_ids_.insert(add->tok.id);
      t->added_by_content_[add->content_raw] = &add->tok;
      t->added_by_id_[add->tok.id] = add.get();
      t->added_.push_back(std::move(add));
    }
    for (const auto& a : t->added_) (a->tok.normalized ? t->normalized_matcher_ : t->raw_matcher_).Add(&a->tok);
  }
  t->raw_matcher_.Finish();
  t->normalized_matcher_.Finish();
  return std::unique_ptr<Tokenizer>(std::move(t));
}

void HfTokenizer::SplitAdded(const Piece& p, const TokenMatcher& m, std::vector<Piece>* out) const {
  const std::string& s = p.s;
  if (m.empty() || s.empty()) {
    if (!s.empty()) out->push_back(p);
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < s.size()) {
    const AddedToken* t = m.At(s, pos);
    if (!t) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + t->content.size();
    pos = stop;  // the search continues after the match
    if (t->single_word) {
      const bool start_space = start == 0 || !IsWordChar(LastCodePoint(std::string_view(s).substr(0, start)));
      const bool stop_space = stop == s.size() || !IsWordChar(FirstCodePoint(std::string_view(s).substr(stop)));
      if (!start_space || !stop_space) continue;
    }
    if (t->lstrip) {
      size_t ns = start;
      while (ns > 0) {
        const std::string_view head = std::string_view(s).substr(0, ns);
        const uint32_t cp = LastCodePoint(head);
        if (!IsWhitespace(cp)) break;
        std::string tmp;
        AppendUtf8(cp, &tmp);
        ns -= tmp.size();
      }
      start = std::max(ns, start_offset);
    }
    if (t->rstrip) {
      while (stop < s.size()) {
        size_t i = stop;
        if (!IsWhitespace(NextCodePoint(s, &i))) break;
        stop = i;
      }
    }
    if (start_offset < start)
      out->push_back({s.substr(start_offset, start - start_offset), p.first && start_offset == 0, -1});
    out->push_back({s.substr(start, stop - start), p.first && start == 0, t->id});
    start_offset = stop;
  }
  if (start_offset < s.size()) out->push_back({s.substr(start_offset), p.first && start_offset == 0, -1});
}

Status HfTokenizer::Bpe(const std::string& w, std::vector<int64_t>* out) const {
  if (w.empty()) return Status::Ok();
  if (ignore_merges_) {
    auto it = vocab_.find(w);
    if (it != vocab_.end()) {
      out->push_back(it->second);
      return Status::Ok();
    }
  }
  struct Sym {
    int64_t c;
    int prev, next;
    size_t len;
  };
  std::vector<Sym> syms;
  syms.reserve(w.size());
  auto add = [&](int64_t id, size_t len) {
    const int n = static_cast<int>(syms.size());
    syms.push_back({id, n - 1, -1, len});
    if (n > 0) syms[n - 1].next = n;
  };
  std::optional<std::pair<int64_t, size_t>> unk;
  for (size_t i = 0; i < w.size();) {
    const size_t b = i;
    NextCodePoint(w, &i);
    const size_t byte_len = i - b;
    std::string s = w.substr(b, byte_len);
    if (b != 0 && !continuing_prefix_.empty()) s = continuing_prefix_ + s;
    if (i == w.size() && !end_suffix_.empty()) s += end_suffix_;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (unk) {
        add(unk->first, unk->second);
        unk.reset();
      }
      add(it->second, byte_len);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : s) add(byte_ids_[c], 1);
        continue;
      }
    }
    if (!unk_id_) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "\"" + s + "\" is not in the vocabulary and the tokenizer has no unk_token");
    }
    if (unk && fuse_unk_) {
      unk->second += byte_len;
    } else {
      if (unk) add(unk->first, unk->second);
      unk = std::make_pair(*unk_id_, byte_len);
    }
  }
  if (unk) add(unk->first, unk->second);

  struct Merge {
    size_t pos;
    uint32_t rank;
    int64_t new_id;
    bool operator>(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Merge, std::vector<Merge>, std::greater<Merge>> queue;
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    auto it = merges_.find(PairKey(syms[i].c, syms[i + 1].c));
    if (it != merges_.end()) queue.push({i, it->second.first, it->second.second});
  }
  while (!queue.empty()) {
    const Merge top = queue.top();
    queue.pop();
    Sym& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int next_pos = cur.next;
    const Sym right = syms[next_pos];
    auto it = merges_.find(PairKey(cur.c, right.c));
    if (it == merges_.end() || it->second.second != top.new_id) continue;
    cur.c = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[next_pos].len = 0;
    if (right.next > -1 && right.next < static_cast<int>(syms.size()))
      syms[right.next].prev = static_cast<int>(top.pos);
    if (cur.prev >= 0) {
      auto p = merges_.find(PairKey(syms[cur.prev].c, cur.c));
      if (p != merges_.end()) queue.push({static_cast<size_t>(cur.prev), p->second.first, p->second.second});
    }
    if (cur.next >= 0 && cur.next < static_cast<int>(syms.size())) {
      auto n = merges_.find(PairKey(cur.c, syms[cur.next].c));
      if (n != merges_.end()) queue.push({top.pos, n->second.first, n->second.second});
    }
  }
  for (const Sym& s : syms) {
    if (s.len != 0) out->push_back(s.c);
  }
  return Status::Ok();
}

Result<std::vector<int64_t>> HfTokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  if (!IsValidUtf8(text)) return MakeError(ErrorCode::kInvalidArgument, "text is not valid UTF-8");
  std::vector<Piece> pieces;
  SplitAdded({std::string(text), true, -1}, raw_matcher_, &pieces);
  std::vector<Piece> normalized;
  for (Piece& p : pieces) {
    if (p.id >= 0) {
      normalized.push_back(std::move(p));
      continue;
    }
    for (const NormalizerFn& n : normalizers_) {
      BIGPLAN_ASSIGN_OR_RETURN(p.s, n(p.s));
    }
    SplitAdded(p, normalized_matcher_, &normalized);
  }
  pieces = std::move(normalized);
  for (const PreTokenizerFn& pre : pre_tokenizers_) {
    std::vector<Piece> next;
    next.reserve(pieces.size());
    for (Piece& p : pieces) {
      if (p.id >= 0)
        next.push_back(std::move(p));
      else
        pre(p, &next);
    }
    pieces = std::move(next);
  }
  std::vector<int64_t> ids;
  for (const Piece& p : pieces) {
    if (p.id >= 0)
      ids.push_back(p.id);
    else
      BIGPLAN_RETURN_IF_ERROR(Bpe(p.s, &ids));
  }
  if (add_special_tokens) {
    for (const PostFn& post : post_) ids = post(std::move(ids));
  }
  return ids;
}

std::string HfTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int64_t id : ids) {
    const std::string* t = Token(id);
    if (!t) continue;
    if (skip_special_tokens && IsSpecial(id)) continue;
    toks.push_back(*t);
  }
  if (decoders_.empty()) {
    std::string out;
    for (size_t i = 0; i < toks.size(); ++i) out += (i ? " " : "") + toks[i];
    return out;
  }
  for (const DecoderFn& d : decoders_) toks = d(std::move(toks));
  std::string out;
  for (const std::string& t : toks) out += t;
  return out;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> ParseTokenizerJson(const std::string& json_text, const std::string& name) {
  return HfTokenizer::Parse(json_text, name);
}

}  // namespace bigplan::text
