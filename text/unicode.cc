#include "text/unicode.h"

#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <array>
#include <vector>

namespace bigplan::text {

int Utf8SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

namespace {

// Allowed range of the second byte of a sequence starting with `lead` (Unicode Table 3-7).
void SecondByteRange(unsigned char lead, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead == 0xE0)
    *lo = 0xA0;
  else if (lead == 0xED)
    *hi = 0x9F;
  else if (lead == 0xF0)
    *lo = 0x90;
  else if (lead == 0xF4)
    *hi = 0x8F;
}

// Length of the valid sequence at s[i], or -(bytes of the maximal invalid subpart) (at least 1).
int Scan(std::string_view s, size_t i) {
  const unsigned char lead = static_cast<unsigned char>(s[i]);
  if (lead < 0x80) return 1;
  const int need = Utf8SequenceLength(lead);
  if (need == 1) return -1;
  unsigned char lo, hi;
  SecondByteRange(lead, &lo, &hi);
  int got = 1;
  while (got < need) {
    if (i + got >= s.size()) return -got;
    const unsigned char c = static_cast<unsigned char>(s[i + got]);
    const unsigned char l = got == 1 ? lo : 0x80, h = got == 1 ? hi : 0xBF;
    if (c < l || c > h) return -got;
    ++got;
  }
  return need;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const int n = Scan(s, i);
    if (n < 0) return false;
    i += n;
  }
  return true;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t NextCodePoint(std::string_view s, size_t* i) {
  const unsigned char c = static_cast<unsigned char>(s[*i]);
  int n = Utf8SequenceLength(c);
  if (*i + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  *i += n;
  return cp;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int n = Scan(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += -n;
    }
  }
  return out;
}

size_t CompleteUtf8Prefix(std::string_view bytes) {
  // A sequence at the end that is a valid but unfinished prefix may still complete.
  const size_t start = bytes.size() >= 3 ? bytes.size() - 3 : 0;
  for (size_t i = start; i < bytes.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    const int need = Utf8SequenceLength(c);
    if (need > 1 && i + need > bytes.size()) {
      const int n = Scan(bytes, i);
      if (n == -static_cast<int>(bytes.size() - i)) return i;  // every byte so far fits: wait for the rest
    }
  }
  return bytes.size();
}

namespace {

struct ByteMaps {
  std::array<std::string, 256> to_unicode;
  std::vector<int> to_byte;  // indexed by code point < 512
  ByteMaps() : to_byte(512, -1) {
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
    std::array<bool, 256> direct{};
    for (int b : bs) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = direct[b] ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      AppendUtf8(cp, &to_unicode[b]);
      to_byte[cp] = b;
    }
  }
};

const ByteMaps& Maps() {
  static const ByteMaps maps;
  return maps;
}

}  // namespace

const std::string& ByteToUnicode(unsigned char b) { return Maps().to_unicode[b]; }

int UnicodeToByte(uint32_t cp) { return cp < 512 ? Maps().to_byte[cp] : -1; }

Result<std::string> Normalize(std::string_view s, NormalForm form) {
  if (s.empty()) return std::string();
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* norm = nullptr;
  switch (form) {
    case NormalForm::kNFC:
      norm = unorm2_getNFCInstance(&err);
      break;
    case NormalForm::kNFD:
      norm = unorm2_getNFDInstance(&err);
      break;
    case NormalForm::kNFKC:
      norm = unorm2_getNFKCInstance(&err);
      break;
    case NormalForm::kNFKD:
      norm = unorm2_getNFKDInstance(&err);
      break;
  }
  if (U_FAILURE(err)) return MakeError(ErrorCode::kInternal, std::string("ICU normalizer: ") + u_errorName(err));
  int32_t len16 = 0;
  u_strFromUTF8(nullptr, 0, &len16, s.data(), static_cast<int32_t>(s.size()), &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) err = U_ZERO_ERROR;
  std::u16string src(len16, u'\0');
  u_strFromUTF8(reinterpret_cast<UChar*>(src.data()), len16, nullptr, s.data(), static_cast<int32_t>(s.size()), &err);
  if (U_FAILURE(err)) return MakeError(ErrorCode::kInvalidArgument, "text is not valid UTF-8");
  std::u16string dst(len16 * 3 + 16, u'\0');
  int32_t n = unorm2_normalize(norm, reinterpret_cast<const UChar*>(src.data()), len16,
                               reinterpret_cast<UChar*>(dst.data()), static_cast<int32_t>(dst.size()), &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) {
    err = U_ZERO_ERROR;
    dst.assign(n, u'\0');
    n = unorm2_normalize(norm, reinterpret_cast<const UChar*>(src.data()), len16, reinterpret_cast<UChar*>(dst.data()),
                         n, &err);
  }
  if (U_FAILURE(err)) return MakeError(ErrorCode::kInternal, std::string("ICU normalize: ") + u_errorName(err));
  int32_t len8 = 0;
  u_strToUTF8(nullptr, 0, &len8, reinterpret_cast<const UChar*>(dst.data()), n, &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) err = U_ZERO_ERROR;
  std::string out(len8, '\0');
  u_strToUTF8(out.data(), len8, nullptr, reinterpret_cast<const UChar*>(dst.data()), n, &err);
  if (U_FAILURE(err)) return MakeError(ErrorCode::kInternal, std::string("ICU to UTF-8: ") + u_errorName(err));
  return out;
}

}  // namespace bigplan::text
