#include "support/units.h"

#include <cctype>
#include <cstdio>
#include <string>

namespace bigplan {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Error Invalid(std::string_view text, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "invalid byte size \"" + std::string(text) + "\": " + why +
                       " (expected e.g. 10GiB, 10GB, 512MiB, 4KB or 123)");
}

}  // namespace

Result<uint64_t> ParseByteSize(std::string_view text) {
  size_t i = 0, n = text.size();
  while (i < n && IsSpace(text[i])) ++i;
  while (n > i && IsSpace(text[n - 1])) --n;
  if (i == n) return Invalid(text, "empty");

  // Number: digits [ '.' digits ].
  using u128 = unsigned __int128;
  u128 mantissa = 0;
  int int_digits = 0, frac_digits = 0;
  while (i < n && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (mantissa > (u128(1) << 100)) return Invalid(text, "too large");
    mantissa = mantissa * 10 + u128(text[i] - '0');
    ++int_digits;
    ++i;
  }
  if (i < n && text[i] == '.') {
    ++i;
    while (i < n && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (frac_digits < 18) {  // further digits cannot change the result by a whole byte below 2^64
        mantissa = mantissa * 10 + u128(text[i] - '0');
        ++frac_digits;
      }
      ++i;
    }
    if (frac_digits == 0) return Invalid(text, "missing digits after the decimal point");
  }
  if (int_digits == 0) return Invalid(text, "no number");
  while (i < n && IsSpace(text[i])) ++i;

  const std::string unit = Lower(text.substr(i, n - i));
  uint64_t multiplier = 0;
  if (unit.empty() || unit == "b" || unit == "byte" || unit == "bytes") multiplier = 1;
  else if (unit == "kib") multiplier = 1ull << 10;
  else if (unit == "mib") multiplier = 1ull << 20;
  else if (unit == "gib") multiplier = 1ull << 30;
  else if (unit == "tib") multiplier = 1ull << 40;
  else if (unit == "kb") multiplier = 1000ull;
  else if (unit == "mb") multiplier = 1000ull * 1000;
  else if (unit == "gb") multiplier = 1000ull * 1000 * 1000;
  else if (unit == "tb") multiplier = 1000ull * 1000 * 1000 * 1000;
  else return Invalid(text, "unknown unit \"" + std::string(text.substr(i, n - i)) + "\"");

  u128 divisor = 1;
  for (int k = 0; k < frac_digits; ++k) divisor *= 10;
  if (multiplier == 1 && frac_digits > 0 && mantissa % divisor != 0) {
    return Invalid(text, "a byte count must be a whole number");
  }
  // mantissa < 2^104 and multiplier <= 2^40 could overflow 128 bits; bound the mantissa first.
  if (mantissa / divisor > u128(UINT64_MAX)) return Invalid(text, "does not fit in 64 bits");
  u128 value = mantissa * u128(multiplier) / divisor;
  if (value > u128(UINT64_MAX)) return Invalid(text, "does not fit in 64 bits");
  return static_cast<uint64_t>(value);
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit + 1 < 6) {
    value /= 1024.0;
    ++unit;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", value, kUnits[unit]);
  return buf;
}

}  // namespace bigplan
