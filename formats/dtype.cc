#include "formats/dtype.h"

#include <string>

namespace bigplan {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t bytes;
  bool floating;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4, true},     {DType::kF16, "F16", 2, true},         {DType::kBF16, "BF16", 2, true},
    {DType::kF64, "F64", 8, true},     {DType::kI64, "I64", 8, false},        {DType::kI32, "I32", 4, false},
    {DType::kI16, "I16", 2, false},    {DType::kI8, "I8", 1, false},          {DType::kU8, "U8", 1, false},
    {DType::kBool, "BOOL", 1, false},  {DType::kF8E4M3, "F8_E4M3", 1, true}, {DType::kF8E5M2, "F8_E5M2", 1, true},
};

const DTypeEntry* Lookup(DType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return &e;
  }
  return nullptr;
}

}  // namespace

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return MakeError(ErrorCode::kUnsupported,
                   "unsupported dtype \"" + std::string(name) +
                       "\" (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL F8_E4M3 F8_E5M2)");
}

const char* DTypeString(DType dtype) {
  const DTypeEntry* e = Lookup(dtype);
  return e ? e->name : "INVALID";
}

size_t DTypeBytes(DType dtype) {
  const DTypeEntry* e = Lookup(dtype);
  return e ? e->bytes : 0;
}

bool IsFloatingPoint(DType dtype) {
  const DTypeEntry* e = Lookup(dtype);
  return e ? e->floating : false;
}

}  // namespace bigplan
