// SHA-256 (FIPS 180-4), for checkpoint fingerprints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bigplan {

// Incremental hashing: Update any number of times, then HexDigest (after which the object is finalized;
// further Update calls are ignored until Reset).
class Sha256 {
 public:
  Sha256() { Reset(); }
  // A hasher that never uses the CPU's SHA extensions (the portable code), for cross-checking.
  static Sha256 Portable() {
    Sha256 h;
    h.portable_ = true;
    return h;
  }
  void Reset();
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // The 32-byte digest.
  void Digest(uint8_t out[32]);
  // Lowercase hex of the digest (64 characters).
  std::string HexDigest();

 private:
  bool portable_ = false;                       // never use SHA-NI (tests compare both paths)
  void Block(const uint8_t* p);                  // one block, portable code
  void Blocks(const uint8_t* p, size_t blocks);  // SHA-NI when the CPU has it, else Block()
  void Finalize();

  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_len_ = 0;
  bool finalized_ = false;
};

// Lowercase hex SHA-256 of [data, data + n).
std::string Sha256Hex(const void* data, size_t n);
inline std::string Sha256Hex(std::string_view s) { return Sha256Hex(s.data(), s.size()); }

}  // namespace bigplan
