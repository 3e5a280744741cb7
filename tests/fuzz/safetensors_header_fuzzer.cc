// libFuzzer target: the safetensors header parser on arbitrary bytes (the input is the whole file).
// Besides not crashing, an accepted header must satisfy every invariant the parser promises.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "formats/safetensors.h"

namespace {

void Require(bool cond) {
  if (!cond) std::abort();
}

void CheckAccepted(const bigplan::SafetensorsHeader& h, uint64_t size) {
  Require(h.file_size == size);
  Require(h.header_length <= bigplan::kMaxSafetensorsHeaderBytes);
  Require(h.data_start == 8 + h.header_length && h.data_start <= size);
  Require(h.name_order.size() == h.tensors.size());
  uint64_t prev_end = 0;
  std::string prev_name;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const bigplan::TensorInfo& t = h.tensors[i];
    Require(t.offset >= h.data_start && t.offset <= size && t.size_bytes <= size - t.offset);
    uint64_t numel = 1;
    bool zero = false;
    for (int64_t d : t.shape) {
      Require(d >= 0);
      if (d == 0) zero = true;
      else if (!zero) numel *= static_cast<uint64_t>(d);  // cannot overflow: size_bytes bounds it
    }
    Require(t.size_bytes == (zero ? 0 : numel * bigplan::DTypeBytes(t.dtype)));
    if (i > 0) Require(h.tensors[i - 1].offset <= t.offset);
    if (t.size_bytes > 0) {
      Require(t.offset >= prev_end);
      prev_end = t.offset + t.size_bytes;
    }
    Require(h.Find(t.name) == &t);
  }
  for (size_t i = 1; i < h.name_order.size(); ++i) {
    Require(h.tensors[h.name_order[i - 1]].name < h.tensors[h.name_order[i]].name);  // unique and sorted
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto whole = bigplan::ParseSafetensorsHeader(data, size, size, "fuzz.safetensors");
  if (whole.ok()) CheckAccepted(*whole, size);
  // Only part of the file given: must agree with the whole-file parse or ask for more bytes.
  if (size >= 8) {
    auto part = bigplan::ParseSafetensorsHeader(data, size / 2 < 8 ? 8 : size / 2, size, "fuzz.safetensors");
    if (part.ok()) {
      Require(whole.ok() && part->tensors.size() == whole->tensors.size());
    } else if (whole.ok()) {
      Require(part.error().code == bigplan::ErrorCode::kInvalidArgument);
    }
  }
  return 0;
}
