#include "support/sha256.h"

#include <string>

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace bigplan {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex(std::string_view("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string million(1000000, 'a');
  EXPECT_EQ(Sha256Hex(million.data(), million.size()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalMatchesOneShot) {
  std::string million(1000000, 'a');
  // Feed in irregular pieces that cross block boundaries.
  Sha256 h;
  size_t pos = 0, step = 1;
  while (pos < million.size()) {
    size_t n = std::min(step, million.size() - pos);
    h.Update(million.data() + pos, n);
    pos += n;
    step = step * 3 % 1001 + 1;
  }
  EXPECT_EQ(h.HexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  // Lengths around the padding boundary (55, 56, 63, 64, 65).
  for (size_t n : {55u, 56u, 63u, 64u, 65u, 119u, 120u, 128u}) {
    std::string s(n, 'x');
    Sha256 a;
    for (char c : s) a.Update(&c, 1);
    EXPECT_EQ(a.HexDigest(), Sha256Hex(s)) << n;
  }
}

TEST(Sha256Test, ResetStartsOver) {
  Sha256 h;
  h.Update("garbage");
  (void)h.HexDigest();
  h.Reset();
  h.Update("abc");
  EXPECT_EQ(h.HexDigest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, HardwareAndPortablePathsAgree) {
  std::mt19937 rng(7);
  std::vector<uint8_t> data(200000);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t len : {0, 1, 55, 56, 63, 64, 65, 127, 128, 1000, 4096, 65537, 200000}) {
    Sha256 fast;
    Sha256 portable = Sha256::Portable();
    // Uneven pieces exercise the buffered and the bulk paths.
    size_t at = 0, piece = 1;
    while (at < len) {
      const size_t n = std::min(piece, len - at);
      fast.Update(data.data() + at, n);
      portable.Update(data.data() + at, n);
      at += n;
      piece = piece * 3 + 1;
    }
    EXPECT_EQ(fast.HexDigest(), portable.HexDigest()) << len;
  }
}

}  // namespace
}  // namespace bigplan
