#include "formats/guarded_copy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "formats/mapped_file.h"
#include "formats/test_util.h"

namespace bigplan {
namespace {

constexpr size_t kSize = 1 << 20;

// A 1 MiB file of a repeating pattern, mapped, then truncated to 4 KiB: pages past the first are gone.
struct Shrunk {
  std::string path;
  MappedFile file;
};

Shrunk MapThenTruncate(const std::string& tag) {
  Shrunk s;
  s.path = testing::NewTempDir(tag) + "/shard.safetensors";
  std::string bytes(kSize, '\0');
  for (size_t i = 0; i < kSize; ++i) bytes[i] = static_cast<char>(i * 7);
  testing::WriteFileOrDie(s.path, bytes);
  auto f = MappedFile::Open(s.path);
  EXPECT_TRUE(f.ok());
  s.file = std::move(*f);
  EXPECT_EQ(::truncate(s.path.c_str(), 4096), 0);
  return s;
}

TEST(GuardedCopyTest, CopiesIntactBytes) {
  Shrunk s = MapThenTruncate("intact");
  std::vector<uint8_t> out(4096);
  ASSERT_TRUE(GuardedCopy(out.data(), s.file.data(), 4096, s.path).ok());
  EXPECT_EQ(std::memcmp(out.data(), s.file.data(), 4096), 0);
  EXPECT_EQ(out[3], static_cast<uint8_t>(21));
  EXPECT_TRUE(GuardedCopy(out.data(), s.file.data(), 0, s.path).ok());
}

TEST(GuardedCopyTest, TruncatedMappingGivesAnErrorNotSigbus) {
  Shrunk s = MapThenTruncate("trunc");
  std::vector<uint8_t> out(kSize);
  Status st = GuardedCopy(out.data(), s.file.data() + 512 * 1024, 64 * 1024, s.path);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kIo);
  EXPECT_NE(st.error().message.find(s.path + ": the file shrank while it was being read: no data at byte 0 of a "
                                             "65536-byte read"),
            std::string::npos)
      << st.error().message;
  // A read across the new end fails at the first missing page; the mask is restored, so it works again and again.
  for (int i = 0; i < 3; ++i) {
    Status again = GuardedCopy(out.data(), s.file.data(), 3 * 4096, s.path);
    ASSERT_FALSE(again.ok());
    EXPECT_NE(again.error().message.find("no data at byte 4096 of a 12288-byte read"), std::string::npos)
        << again.error().message;
  }
}

TEST(GuardedCopyTest, WorksOnOtherThreads) {
  Shrunk s = MapThenTruncate("threads");
  std::vector<std::thread> threads;
  std::vector<int> failed(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> out(8192);
      for (int i = 0; i < 50; ++i) failed[t] += !GuardedCopy(out.data(), s.file.data() + 8192, 8192, s.path).ok();
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failed) EXPECT_EQ(f, 50);
}

TEST(GuardedCopyTest, ProtectedMappingReadsZerosAndReportsDamage) {
  Shrunk s = MapThenTruncate("region");
  s.file.ProtectFromTruncation();
  EXPECT_TRUE(s.file.CheckIntact().ok());
  EXPECT_TRUE(CheckMappedRegions().ok());
  // An unguarded read in place (as a kernel would): no crash, zeros, and the damage is recorded.
  volatile const uint8_t* p = s.file.data();
  uint64_t sum = 0;
  for (size_t i = 8192; i < 3 * 4096; ++i) sum += p[i];
  EXPECT_EQ(sum, 0u);
  EXPECT_EQ(p[5], static_cast<uint8_t>(35));  // the intact first page is untouched
  Status st = s.file.CheckIntact();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find(s.path + ": the file shrank while it was in use (byte 8192 of its mapping"),
            std::string::npos)
      << st.error().message;
  EXPECT_FALSE(CheckMappedRegions().ok());
  // Releasing the mapping unregisters it.
  s.file = MappedFile();
  EXPECT_TRUE(CheckMappedRegions().ok());
}

TEST(GuardedCopyTest, GuardedCopyMarksAProtectedRegionDamaged) {
  Shrunk s = MapThenTruncate("mark");
  s.file.ProtectFromTruncation();
  std::vector<uint8_t> out(4096);
  EXPECT_FALSE(GuardedCopy(out.data(), s.file.data() + 65536, 4096, s.path).ok());
  EXPECT_FALSE(s.file.CheckIntact().ok());
}

TEST(GuardedCopyDeathTest, UnrelatedSigbusStillKills) {
  // A SIGBUS outside any guarded copy or registered region keeps its default action.
  EXPECT_DEATH(
      {
        Shrunk s = MapThenTruncate("death");
        std::vector<uint8_t> out(4096);
        (void)GuardedCopy(out.data(), s.file.data(), 16, s.path);  // installs the handler
        volatile const uint8_t* p = s.file.data();
        (void)p[65536];
      },
      "");
}

}  // namespace
}  // namespace bigplan
