// Byte sizes as people write them ("10GiB", "512MB") and as we print them ("12.55 GiB").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "support/result.h"

namespace bigplan {

// Parses a byte size in Accelerate's units: binary "KiB", "MiB", "GiB", "TiB" (powers of 1024), decimal "KB",
// "MB", "GB", "TB" (powers of 1000), or plain bytes ("123", "123B", "123bytes"). Units are case-insensitive,
// whitespace around the number and unit is allowed, and the number may have a fractional part ("1.5GiB"; the
// result is rounded down to a whole byte). kInvalidArgument naming the string for anything else, for a
// fractional byte count and for values that do not fit in 64 bits.
Result<uint64_t> ParseByteSize(std::string_view text);

// "100 B" below 1 KiB, otherwise two decimals in the largest binary unit that keeps the value >= 1:
// "512.00 MiB", "12.55 GiB".
std::string FormatBytes(uint64_t bytes);

}  // namespace bigplan
