// libFuzzer target: the model-description parser. Any text must either be refused with an error, or parse into a
// description that validates, whose canonical JSON parses back to an equal description with the same digest.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "planner/model_desc.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = bigplan::ModelDescription::Parse(text, "fuzz");
  if (!parsed.ok()) return 0;
  if (!parsed->Validate().ok()) {
    std::fprintf(stderr, "Parse accepted a description that Validate refuses: %s\n",
                 parsed->Validate().error().ToString().c_str());
    std::abort();
  }
  const std::string canonical = parsed->ToJson(-1);
  auto again = bigplan::ModelDescription::Parse(canonical, "canonical");
  if (!again.ok()) {
    std::fprintf(stderr, "canonical JSON does not parse: %s\n", again.error().ToString().c_str());
    std::abort();
  }
  if (!(*again == *parsed) || again->Digest() != parsed->Digest()) {
    std::fprintf(stderr, "canonical JSON round trip changed the description\n");
    std::abort();
  }
  // Lookups on whatever names the input had.
  for (const auto& b : parsed->blocks) {
    (void)parsed->FindBlockIndex(b.name);
    for (const auto& t : b.tied) (void)parsed->FindParam(t);
  }
  (void)parsed->TotalParamBytes();
  return 0;
}
