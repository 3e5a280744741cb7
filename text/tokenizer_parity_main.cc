// Checks the C++ tokenizers against the cases testdata/make_tokenizer_cases.py wrote with the Python `tokenizers`
// package: encoding the whole mixed corpus and many short texts (with and without special tokens), decoding
// (with and without skipping special tokens, random ids included), and streaming decoding (the chunks add up to
// the full decode and never split a character). Prints every mismatch (the first few per family in full) and
// exits non-zero on any.
//
//   tokenizer_parity CASES_DIR

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace {

using bigplan::text::StreamDecoder;
using bigplan::text::Tokenizer;
using json = nlohmann::json;

std::string Join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s;
}

std::string Show(const std::string& s) {
  std::string r;
  for (unsigned char c : s) {
    if (c == '\n')
      r += "\\n";
    else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", c);
      r += b;
    } else {
      r += static_cast<char>(c);
    }
  }
  return r.size() > 300 ? r.substr(0, 300) + "..." : r;
}

// First index where two id lists differ.
size_t FirstDiff(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tokenizer_parity CASES_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  std::ifstream in(dir + "/cases.json");
  json cases = json::parse(in, nullptr, false);
  if (cases.is_discarded()) {
    std::fprintf(stderr, "%s/cases.json: not JSON\n", dir.c_str());
    return 1;
  }
  std::ifstream cin_(dir + "/" + cases["corpus"].get<std::string>(), std::ios::binary);
  std::stringstream ss;
  ss << cin_.rdbuf();
  const std::string corpus = ss.str();
  int failures = 0;
  for (const json& fam : cases["families"]) {
    const std::string name = fam["name"];
    auto tok = Tokenizer::Load(dir + "/" + fam["dir"].get<std::string>());
    if (!tok.ok()) {
      std::printf("FAIL %s: load: %s\n", name.c_str(), tok.error().ToString().c_str());
      ++failures;
      continue;
    }
    int fam_fail = 0;
    auto report = [&](const std::string& what) {
      if (fam_fail++ < 5) std::printf("FAIL %s: %s\n", name.c_str(), what.c_str());
    };
    const std::vector<int64_t> want = fam["corpus_ids"].get<std::vector<int64_t>>();
    auto got = (*tok)->Encode(corpus, true);
    if (!got.ok()) {
      report("encode corpus: " + got.error().ToString());
    } else if (*got != want) {
      const size_t d = FirstDiff(*got, want);
      report("corpus ids differ at " + std::to_string(d) + " of " + std::to_string(want.size()) + ": got ..." +
             Join(std::vector<int64_t>(got->begin() + d, got->begin() + std::min(got->size(), d + 8))) + " want ..." +
             Join(std::vector<int64_t>(want.begin() + d, want.begin() + std::min(want.size(), d + 8))));
    }
    if ((*tok)->Decode(want, false) != fam["corpus_decoded"].get<std::string>()) report("decode of the corpus ids");
    // Streaming the corpus ids: chunks add up, and none holds a replacement character (the text is valid).
    {
      StreamDecoder sd(**tok, false);
      std::string all;
      bool split = false;
      for (int64_t id : want) {
        const std::string c = sd.Next(id);
        if (c.find("\xEF\xBF\xBD") != std::string::npos) split = true;
        all += c;
      }
      all += sd.Finish();
      if (all != fam["corpus_decoded"].get<std::string>()) report("streamed decode of the corpus differs");
      if (split) report("streamed decode emitted a partial character");
    }
    size_t n_enc = 0, n_dec = 0;
    for (const json& c : fam["encode"]) {
      const std::string text = c["text"];
      const bool special = c["add_special"];
      const std::vector<int64_t> w = c["ids"].get<std::vector<int64_t>>();
      auto g = (*tok)->Encode(text, special);
      ++n_enc;
      if (!g.ok())
        report("encode \"" + Show(text) + "\": " + g.error().ToString());
      else if (*g != w)
        report("encode \"" + Show(text) + "\" (special " + std::to_string(special) + "): got " + Join(*g) + " want " +
               Join(w));
    }
    for (const json& c : fam["decode"]) {
      const std::vector<int64_t> ids = c["ids"].get<std::vector<int64_t>>();
      const bool skip = c["skip"];
      const std::string w = c["text"];
      const std::string g = (*tok)->Decode(ids, skip);
      ++n_dec;
      if (g != w)
        report("decode [" + Join(ids) + "] skip " + std::to_string(skip) + ": got \"" + Show(g) + "\" want \"" +
               Show(w) + "\"");
      StreamDecoder sd(**tok, skip);
      std::string all;
      for (int64_t id : ids) all += sd.Next(id);
      all += sd.Finish();
      if (all != w) report("streamed decode [" + Join(ids) + "]: got \"" + Show(all) + "\" want \"" + Show(w) + "\"");
    }
    std::printf("%s %s: corpus %zu bytes -> %zu ids, %zu encode cases, %zu decode cases, %d failures\n",
                fam_fail ? "FAIL" : "ok  ", name.c_str(), corpus.size(), want.size(), n_enc, n_dec, fam_fail);
    failures += fam_fail;
  }
  std::printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
