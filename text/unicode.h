// UTF-8 helpers shared by the tokenizers: validation, code point iteration, the lossy decoding Hugging Face
// tokenizers use (Rust's String::from_utf8_lossy), GPT-2's byte <-> character map, and Unicode normalization forms
// (ICU).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "support/result.h"

namespace bigplan::text {

// True when `s` is well-formed UTF-8 (no surrogates, no overlong forms, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view s);

// Byte length of the UTF-8 sequence that starts with `lead` (1 for a byte that cannot start one).
int Utf8SequenceLength(unsigned char lead);

// Appends the UTF-8 encoding of code point `cp`.
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the code point at s[*i] of valid UTF-8 and advances *i past it.
uint32_t NextCodePoint(std::string_view s, size_t* i);

// `bytes` as text; every maximal invalid subsequence becomes one U+FFFD (the Unicode "substitution of maximal
// subparts" practice, as Rust's String::from_utf8_lossy does).
std::string Utf8Lossy(std::string_view bytes);

// Length of the longest prefix of `bytes` that ends on a character boundary and is not followed by the start of a
// possibly incomplete sequence at the end: what a streaming decoder may emit now without splitting a character.
size_t CompleteUtf8Prefix(std::string_view bytes);

// GPT-2's reversible byte -> printable character map ("Ġ" for the space byte, ...), as UTF-8 strings.
const std::string& ByteToUnicode(unsigned char b);
// The inverse: the byte a mapped character stands for, or -1 if `cp` is not one of the 256 characters.
int UnicodeToByte(uint32_t cp);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };

// Unicode normalization of valid UTF-8 (ICU). kInternal if ICU refuses.
Result<std::string> Normalize(std::string_view s, NormalForm form);

}  // namespace bigplan::text
