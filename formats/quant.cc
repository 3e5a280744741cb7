#include "formats/quant.h"
#include <string>
namespace bigplan::quant {
Result<Format> ParseFormat(std::string_view name) {
  if (name == "bf16" || name == "none") return Format::kNone;
  if (name == "fp8") return Format::kFp8E4M3;
  if (name == "int8") return Format::kInt8;
  if (name == "int4") return Format::kInt4;
  return MakeError(ErrorCode::kInvalidArgument, "unknown weight format \"" + std::string(name) + "\"");
}
const char* FormatName(Format f) {
  switch (f) { case Format::kNone: return "bf16"; case Format::kFp8E4M3: return "fp8"; case Format::kInt8: return "int8"; case Format::kInt4: return "int4"; }
  return "?";
}
Result<int64_t> DefaultGroup(Format f, int64_t k) {
  if (f != Format::kInt4) return k;
  for (int64_t g : {128, 64, 32}) if (k % g == 0) return g;
  return MakeError(ErrorCode::kUnsupported, "int4 needs columns divisible by 32, got " + std::to_string(k));
}
Result<uint64_t> RowBytes(Format f, int64_t k, int64_t g) {
  if (k <= 0 || g <= 0 || k % g != 0) return MakeError(ErrorCode::kInvalidArgument, "bad group");
  const uint64_t groups = k / g;
  switch (f) {
    case Format::kNone: return MakeError(ErrorCode::kInvalidArgument, "not quantized");
    case Format::kFp8E4M3: case Format::kInt8: return uint64_t(k) + 4 * groups;
    case Format::kInt4: if (k % 2) return MakeError(ErrorCode::kInvalidArgument, "odd"); return uint64_t(k) / 2 + 4 * groups;
  }
  return MakeError(ErrorCode::kInvalidArgument, "bad format");
}
Result<uint64_t> TensorBytes(Format f, int64_t n, int64_t k, int64_t g) {
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t r, RowBytes(f, k, g));
  return r * uint64_t(n);
}
}  // namespace bigplan::quant
#include <cmath>
#include <cstring>
#include <vector>
#include <algorithm>
namespace bigplan::quant {
namespace {
float Src(const uint8_t* p, DType d) {
  if (d == DType::kF32) { float f; std::memcpy(&f, p, 4); return f; }
  uint16_t h; std::memcpy(&h, p, 2);
  if (d == DType::kBF16) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
  // f16
  uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023; float v;
  if (e == 0) v = std::ldexp(float(m), -24); else if (e == 31) v = m ? NAN : INFINITY; else v = std::ldexp(float(m | 1024), int(e) - 25);
  return s ? -v : v;
}
uint16_t ToBf16(float f) { uint32_t u; std::memcpy(&u, &f, 4); u += 0x7FFF + ((u >> 16) & 1); return uint16_t(u >> 16); }
float FromBf16(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
}
float Fp8E4M3ToFloat(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  float v = e == 0 ? std::ldexp(float(m), -9) : std::ldexp(float(8 + m), e - 10);
  if (e == 15 && m == 7) v = NAN;
  return s ? -v : v;
}
uint8_t FloatToFp8E4M3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7E;
  int best = 0; float bd = INFINITY;
  for (int c = 0; c < 0x7F; ++c) { float d = std::fabs(Fp8E4M3ToFloat(uint8_t(c)) - a); if (d < bd || (d == bd && (c & 1) == 0 && (best & 1))) { bd = d; best = c; } }
  return sign | uint8_t(best);
}
Status Quantize(std::span<const uint8_t> src, DType sd, int64_t n, int64_t k, Format f, int64_t g, std::span<uint8_t> dst, int) {
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t rb, RowBytes(f, k, g));
  const size_t es = DTypeBytes(sd);
  if (src.size() < size_t(n * k) * es || dst.size() < rb * n) return MakeError(ErrorCode::kInvalidArgument, "buffer sizes");
  std::vector<float> row(k);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = 0; j < k; ++j) { row[j] = Src(src.data() + (r * k + j) * es, sd); if (!std::isfinite(row[j])) return MakeError(ErrorCode::kInvalidArgument, "non-finite weight"); }
    uint8_t* out = dst.data() + r * rb;
    const int64_t groups = k / g;
    for (int64_t gi = 0; gi < groups; ++gi) {
      const float* w = row.data() + gi * g;
      if (f == Format::kInt4) {
        float lo = *std::min_element(w, w + g), hi = *std::max_element(w, w + g);
        float s = (hi - lo) / 15.f; float z = lo + 8 * s;
        uint16_t sb = ToBf16(s), zb = ToBf16(z); s = FromBf16(sb); z = FromBf16(zb);
        for (int64_t j = 0; j < g; ++j) {
          int q = s > 0 ? int(std::lround((w[j] - z) / s + 8)) : 8; q = std::clamp(q, 0, 15);
          const int64_t c = gi * g + j; uint8_t& byte = out[c / 2];
          if (c % 2 == 0) byte = uint8_t(q << 4); else byte |= uint8_t(q);
        }
        uint8_t* rec = out + k / 2 + gi * 4; std::memcpy(rec, &sb, 2); std::memcpy(rec + 2, &zb, 2);
      } else {
        float amax = 0; for (int64_t j = 0; j < g; ++j) amax = std::max(amax, std::fabs(w[j]));
        float s = amax == 0 ? 1.f : amax / (f == Format::kInt8 ? 127.f : 448.f);
        for (int64_t j = 0; j < g; ++j) {
          const int64_t c = gi * g + j;
          if (f == Format::kInt8) out[c] = uint8_t(int8_t(std::clamp<long>(std::lround(w[j] / s), -127, 127)));
          else out[c] = FloatToFp8E4M3(w[j] / s);
        }
        std::memcpy(out + k + gi * 4, &s, 4);
      }
    }
  }
  return Status::Ok();
}
Status Dequantize(std::span<const uint8_t>, Format, int64_t, int64_t, int64_t, std::span<float>) { return MakeError(ErrorCode::kUnsupported, "stub"); }
}  // namespace bigplan::quant
