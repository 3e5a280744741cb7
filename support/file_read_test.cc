#include "support/file_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace bigplan {
namespace {

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
}

bool Mentions(const Error& e, const std::string& s) { return e.message.find(s) != std::string::npos; }

TEST(FileReadTest, ReadsARegularFile) {
  const std::string p = TmpPath("plain.json");
  WriteFile(p, "{\"a\": 1}");
  auto r = ReadBoundedFile(p, kConfigFile);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(*r, "{\"a\": 1}");
  auto b = ReadBoundedFileBytes(p, kConfigFile);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->size(), 8u);
}

TEST(FileReadTest, EmptyFileIsEmpty) {
  const std::string p = TmpPath("empty");
  WriteFile(p, "");
  auto r = ReadBoundedFile(p, kConfigFile);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

TEST(FileReadTest, MissingFileIsNotFound) {
  auto r = ReadBoundedFile(TmpPath("does-not-exist"), kConfigFile);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(Mentions(r.error(), "does-not-exist"));
}

TEST(FileReadTest, FifoIsRefusedWithoutBlocking) {
  const std::string p = TmpPath("pipe");
  ::unlink(p.c_str());
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  const auto start = std::chrono::steady_clock::now();
  auto r = ReadBoundedFile(p, kConfigFile);
  auto shard = RegularFile::Open(p);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kIo);
  EXPECT_TRUE(Mentions(r.error(), p)) << r.error().message;
  EXPECT_TRUE(Mentions(r.error(), "FIFO")) << r.error().message;
  ASSERT_FALSE(shard.ok());
  EXPECT_TRUE(Mentions(shard.error(), "FIFO"));
  EXPECT_LT(s, 1.0);
}

TEST(FileReadTest, DevZeroIsRefused) {
  auto r = ReadBoundedFile("/dev/zero", kPlanFile);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r.error(), "/dev/zero: not a regular file (it is a character device)")) << r.error().message;
}

TEST(FileReadTest, DirectoryIsRefused) {
  const char* dir = std::getenv("TEST_TMPDIR");
  auto r = ReadBoundedFile(dir ? dir : "/tmp", kConfigFile);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r.error(), "is a directory")) << r.error().message;
}

TEST(FileReadTest, SparseHugeFileIsRefusedBeforeReading) {
  const std::string p = TmpPath("sparse");
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, off_t{20} << 30), 0);  // 20 GiB, no blocks
  ::close(fd);
  const auto start = std::chrono::steady_clock::now();
  for (const FileKind* kind : {&kConfigFile, &kIndexFile, &kPlanFile, &kProfileFile, &kDeviceMapFile}) {
    auto r = ReadBoundedFile(p, *kind);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
    EXPECT_TRUE(Mentions(r.error(), p + ": 21474836480 bytes is more than the limit of " +
                                        std::to_string(kind->max_bytes) + " bytes for a " + kind->name))
        << r.error().message;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  ::unlink(p.c_str());
}

TEST(FileReadTest, CapIsExact) {
  const FileKind tiny{"tiny thing", 10};
  const std::string p = TmpPath("ten");
  WriteFile(p, "0123456789");
  auto r = ReadBoundedFile(p, tiny);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->size(), 10u);
  WriteFile(p, "0123456789A");
  auto r2 = ReadBoundedFile(p, tiny);
  ASSERT_FALSE(r2.ok());
  EXPECT_TRUE(Mentions(r2.error(), "11 bytes is more than the limit of 10 bytes for a tiny thing"));
}

TEST(FileReadTest, RegularFileReportsSize) {
  const std::string p = TmpPath("sized");
  WriteFile(p, "abc");
  auto f = RegularFile::Open(p);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->size(), 3u);
  EXPECT_GE(f->fd(), 0);
  RegularFile moved = std::move(*f);
  EXPECT_EQ(moved.size(), 3u);
  char c;
  EXPECT_EQ(::pread(moved.fd(), &c, 1, 1), 1);
  EXPECT_EQ(c, 'b');
}

}  // namespace
}  // namespace bigplan
