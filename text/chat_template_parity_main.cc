// Renders the cases testdata/make_chat_cases.py wrote (templates x conversations, rendered by transformers) with
// the C++ chat templates and compares the text exactly; a case where the template raised must fail with the same
// message. Prints each mismatch with both texts; exits non-zero on any.
//
//   chat_template_parity CASES.json

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "text/chat_template.h"

using bigplan::text::ChatTemplate;
namespace jinja = bigplan::text::jinja;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: chat_template_parity CASES.json\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  nlohmann::ordered_json cases = nlohmann::ordered_json::parse(in, nullptr, false);
  if (cases.is_discarded()) {
    std::fprintf(stderr, "%s: not JSON\n", argv[1]);
    return 1;
  }
  int failures = 0, n = 0;
  for (const auto& c : cases) {
    ++n;
    const std::string name = c["name"];
    bigplan::Result<ChatTemplate> tpl = [&]() -> bigplan::Result<ChatTemplate> {
      if (c.contains("dir")) return ChatTemplate::Load(c["dir"].get<std::string>());
      auto special = jinja::Value::FromJson(c["special"].dump());
      return ChatTemplate::FromString(c["template"].get<std::string>(), *special, name);
    }();
    if (!tpl.ok()) {
      std::printf("FAIL %s: %s\n", name.c_str(), tpl.error().ToString().c_str());
      ++failures;
      continue;
    }
    const std::string tools = c.contains("tools") ? c["tools"].dump() : "";
    auto out = tpl->ApplyJson(c["messages"].dump(), c["add_generation_prompt"].get<bool>(), tools);
    if (c.contains("error")) {
      const std::string want = c["error"];
      if (out.ok()) {
        std::printf("FAIL %s: rendered, but transformers raised \"%s\"\n", name.c_str(), want.c_str());
        ++failures;
      } else if (out.error().message.find(want) == std::string::npos) {
        std::printf("FAIL %s: error \"%s\", want \"%s\"\n", name.c_str(), out.error().message.c_str(), want.c_str());
        ++failures;
      }
      continue;
    }
    const std::string want = c["expected"];
    if (!out.ok()) {
      std::printf("FAIL %s: %s\n", name.c_str(), out.error().ToString().c_str());
      ++failures;
    } else if (*out != want) {
      std::printf("FAIL %s:\n--- got\n%s\n--- want\n%s\n---\n", name.c_str(), out->c_str(), want.c_str());
      ++failures;
    }
  }
  std::printf("%s: %d cases, %d failures\n", failures ? "FAILED" : "PASSED", n, failures);
  return failures ? 1 : 0;
}
