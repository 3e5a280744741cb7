#include "formats/mapped_file.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace bigplan {
namespace {

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

std::string WriteFile(const std::string& name, const std::string& bytes) {
  std::string path = TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(MappedFileTest, MapsWholeFileAndChecksViews) {
  std::string path = WriteFile("hello.bin", "hello world");
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  EXPECT_EQ(f->size(), 11u);
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f->data()), 11), "hello world");

  auto v = f->View(6, 5);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(*v), 5), "world");
  EXPECT_TRUE(f->View(11, 0).ok());
  EXPECT_TRUE(f->View(0, 11).ok());

  for (auto [off, len] : {std::pair<uint64_t, uint64_t>{6, 6}, {12, 0}, {0, 12}, {UINT64_MAX, 2},
                          {2, UINT64_MAX}, {UINT64_MAX - 1, 3}}) {
    auto bad = f->View(off, len);
    ASSERT_FALSE(bad.ok()) << off << " " << len;
    EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
    EXPECT_NE(bad.error().message.find(path), std::string::npos);
  }
  f->WillNeed(0, 100);  // best effort, clamps
  f->WillNeed(100, 1);
}

TEST(MappedFileTest, EmptyFile) {
  std::string path = WriteFile("empty.bin", "");
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->size(), 0u);
  EXPECT_EQ(f->data(), nullptr);
  EXPECT_TRUE(f->View(0, 0).ok());
  EXPECT_FALSE(f->View(0, 1).ok());
}

TEST(MappedFileTest, MissingAndDirectory) {
  auto missing = MappedFile::Open(TempDir() + "/does-not-exist.bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_NE(missing.error().message.find("does-not-exist.bin"), std::string::npos);

  auto dir = MappedFile::Open(TempDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().code, ErrorCode::kIo);
}

TEST(MappedFileTest, MoveTransfersOwnership) {
  std::string path = WriteFile("move.bin", "abcdef");
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok());
  MappedFile a = std::move(f).value();
  const uint8_t* p = a.data();
  MappedFile b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(a.size(), 0u);
  MappedFile c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), 6u);
  EXPECT_EQ(c.data()[5], 'f');
}

TEST(MappedFileTest, SizeIsTakenAtOpen) {
  // Truncating after open cannot be prevented, but a file that is short at open time is reported via View.
  std::string path = WriteFile("short.bin", std::string(100, 'x'));
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->View(50, 51).ok());
  EXPECT_TRUE(f->View(50, 50).ok());
}

}  // namespace
}  // namespace bigplan
