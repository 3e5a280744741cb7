// libFuzzer target: config.json import (planner/hf_import.h) on arbitrary bytes. Any text is refused with an error
// whose message starts with the source name, or yields a description that validates, whose sliding-window flags
// match its layers, and that round-trips through the description format.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "planner/hf_import.h"
#include "planner/model_desc.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = bigplan::ImportHfConfigText(text, {}, "fuzz/config.json");
  if (!m.ok()) {
    if (m.error().message.rfind("fuzz/config.json", 0) != 0) std::abort();
    return 0;
  }
  if (!m->Validate().ok()) std::abort();
  const auto& c = m->config;
  if (c.sliding_window == 0 ? !c.sliding_window_layers.empty() : c.sliding_window_layers.size() != c.num_layers) {
    std::abort();
  }
  auto back = bigplan::ModelDescription::Parse(m->ToJson(-1), "again");
  if (!back.ok() || !(back->config == m->config)) std::abort();
  return 0;
}
