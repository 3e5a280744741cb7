// libFuzzer target: the checkpoint index parser (Hugging Face weight_map or flat {"tensor": "file"}) on
// arbitrary bytes.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "formats/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto index = bigplan::ParseIndexJson(text, "fuzz.index.json");
  if (index.ok()) {
    for (const auto& [tensor, file] : *index) {
      // Accepted names are relative and stay inside the index's directory.
      if (file.empty() || file[0] == '/' || file == ".." || file.rfind("../", 0) == 0) std::abort();
      if (file.find('\0') != std::string::npos) std::abort();
      if (!bigplan::CheckShardNameContained(file, tensor, "again").ok()) std::abort();
    }
  } else if (index.error().code != bigplan::ErrorCode::kCorrupt ||
             index.error().message.rfind("fuzz.index.json", 0) != 0) {
    std::abort();
  }
  return 0;
}
