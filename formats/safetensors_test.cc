#include "formats/safetensors.h"

#include <sys/stat.h>

#include <time.h>

#include <chrono>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "formats/test_util.h"

namespace bigplan {
namespace {

using testing::NewTempDir;
using testing::SafetensorsBytes;
using testing::SafetensorsBytesWithLength;
using testing::WriteFileOrDie;

// A valid header: a (F32 [2,2]) at [0,16), b (BF16 [3]) at [16,22), c (I8 []) at [22,23), e (U8 [0]) empty.
const char* kHeader =
    R"({"__metadata__":{"format":"pt","note":"hi"},)"
    R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},)"
    R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("c":{"dtype":"I8","shape":[],"data_offsets":[22,23]},)"
    R"("e":{"dtype":"U8","shape":[0],"data_offsets":[23,23]}})";

std::string Data23() {
  std::string d(23, '\0');
  for (int i = 0; i < 23; ++i) d[i] = static_cast<char>(i + 1);
  return d;
}

Result<SafetensorsHeader> Parse(const std::string& bytes, const std::string& source = "t.safetensors") {
  return ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), bytes.size(), source);
}

// Parses a header with the given JSON and `data_size` zero bytes of data; expects an error.
Error ParseError(const std::string& json, size_t data_size = 64) {
  auto r = Parse(SafetensorsBytes(json, std::string(data_size, '\0')));
  EXPECT_FALSE(r.ok()) << json;
  return r.ok() ? Error{} : r.error();
}

void ExpectMentions(const Error& e, const std::string& what) {
  EXPECT_NE(e.message.find(what), std::string::npos) << "\"" << e.message << "\" should mention \"" << what << "\"";
}

TEST(SafetensorsTest, ParsesValidHeader) {
  std::string bytes = SafetensorsBytes(kHeader, Data23());
  auto h = Parse(bytes);
  ASSERT_TRUE(h.ok()) << h.error().ToString();
  const uint64_t n = std::strlen(kHeader);
  EXPECT_EQ(h->header_length, n);
  EXPECT_EQ(h->data_start, 8 + n);
  EXPECT_EQ(h->file_size, bytes.size());
  EXPECT_EQ(h->metadata.size(), 2u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  ASSERT_EQ(h->tensors.size(), 4u);
  // Sorted by offset.
  EXPECT_EQ(h->tensors[0].name, "a");
  EXPECT_EQ(h->tensors[1].name, "b");
  EXPECT_EQ(h->tensors[2].name, "c");
  EXPECT_EQ(h->tensors[3].name, "e");

  const TensorInfo* a = h->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->offset, 8 + n);
  EXPECT_EQ(a->size_bytes, 16u);
  EXPECT_EQ(a->numel(), 4);
  const TensorInfo* b = h->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(b->offset, 8 + n + 16);
  EXPECT_EQ(b->size_bytes, 6u);
  const TensorInfo* c = h->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->shape.empty());
  EXPECT_EQ(c->numel(), 1);
  const TensorInfo* e = h->Find("e");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->numel(), 0);
  EXPECT_EQ(e->size_bytes, 0u);
  EXPECT_EQ(h->Find("zzz"), nullptr);
  EXPECT_EQ(h->Find("__metadata__"), nullptr);

  // Find also works on a hand-built header without name_order.
  SafetensorsHeader manual;
  manual.tensors = h->tensors;
  EXPECT_EQ(manual.Find("c")->name, "c");
  EXPECT_EQ(manual.Find("x"), nullptr);
}

TEST(SafetensorsTest, OpensFileAndReadsTensorBytes) {
  std::string dir = NewTempDir("st");
  std::string path = dir + "/ok.safetensors";
  WriteFileOrDie(path, SafetensorsBytes(kHeader, Data23()));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  EXPECT_EQ(f->path(), path);
  auto b = f->TensorData("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(*b), 6), Data23().substr(16, 6));
  auto e = f->TensorData("e");
  ASSERT_TRUE(e.ok());
  auto missing = f->TensorData("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  ExpectMentions(missing.error(), path);
  ExpectMentions(missing.error(), "nope");

  std::string raw;
  auto h = ReadSafetensorsHeader(path, &raw);
  ASSERT_TRUE(h.ok()) << h.error().ToString();
  EXPECT_EQ(raw.size(), h->data_start);
  EXPECT_EQ(h->tensors.size(), 4u);
  EXPECT_EQ(h->Find("a")->offset, f->header().Find("a")->offset);
}

TEST(SafetensorsTest, PaddedHeaderAndEmptyHeader) {
  // Writers pad the header with spaces to align the data section.
  std::string padded = std::string(R"({"x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})") + "      ";
  auto h = Parse(SafetensorsBytes(padded, "ab"));
  ASSERT_TRUE(h.ok()) << h.error().ToString();
  EXPECT_EQ(h->tensors.size(), 1u);
  auto empty = Parse(SafetensorsBytes("{}", ""));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->tensors.empty());
  // Extra bytes after the last tensor are tolerated.
  EXPECT_TRUE(Parse(SafetensorsBytes(padded, "abcdef")).ok());
}

TEST(SafetensorsTest, TruncatedFileAtEveryCutPoint) {
  std::string dir = NewTempDir("trunc");
  std::string full = SafetensorsBytes(kHeader, Data23());
  const size_t n = std::strlen(kHeader);
  for (size_t cut : {size_t{0}, size_t{1}, size_t{4}, size_t{7}, size_t{8}, size_t{9}, 8 + n / 2, 8 + n - 1, 8 + n,
                     8 + n + 1, 8 + n + 16, full.size() - 1}) {
    std::string path = dir + "/cut" + std::to_string(cut) + ".safetensors";
    WriteFileOrDie(path, full.substr(0, cut));
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << "cut at " << cut;
    EXPECT_EQ(f.error().code, ErrorCode::kCorrupt) << f.error().ToString();
    ExpectMentions(f.error(), path);
    auto h = ReadSafetensorsHeader(path);
    ASSERT_FALSE(h.ok()) << "cut at " << cut;
    EXPECT_EQ(h.error().code, ErrorCode::kCorrupt) << h.error().ToString();
    if (cut > 8 + n) ExpectMentions(f.error(), "tensor \"");  // a tensor runs past the end
  }
}

TEST(SafetensorsTest, HeaderLengthBeyondEof) {
  auto r = Parse(SafetensorsBytesWithLength(1000, "{}", ""));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  ExpectMentions(r.error(), "t.safetensors");
  ExpectMentions(r.error(), "header length 1000");
  // The largest 64-bit value must not wrap around.
  auto huge = Parse(SafetensorsBytesWithLength(UINT64_MAX, "{}", ""));
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.error().code, ErrorCode::kCorrupt);
}

TEST(SafetensorsTest, HeaderLengthAboveLimit) {
  // The limit is checked before the file size, so no 100 MB file is needed.
  auto r = Parse(SafetensorsBytesWithLength(kMaxSafetensorsHeaderBytes + 1, "{}", ""));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  ExpectMentions(r.error(), "exceeds the limit");
}

TEST(SafetensorsTest, PrefixTooShort) {
  std::string full = SafetensorsBytes(kHeader, Data23());
  auto r = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(full.data()), 20, full.size(), "p");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  auto r2 = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(full.data()), 4, full.size(), "p");
  ASSERT_FALSE(r2.ok());
}

TEST(SafetensorsTest, BadJson) {
  for (const char* json : {"", "{", "{\"a\":", "not json", "{\"a\":{\"dtype\":\"F32\",}}", "\xff\xfe"}) {
    Error e = ParseError(json);
    EXPECT_EQ(e.code, ErrorCode::kCorrupt) << json;
    ExpectMentions(e, "t.safetensors");
  }
}

TEST(SafetensorsTest, NonObjectHeader) {
  for (const char* json : {"[]", "[1,2]", "\"str\"", "42", "null", "true"}) {
    Error e = ParseError(json);
    EXPECT_EQ(e.code, ErrorCode::kCorrupt) << json;
    ExpectMentions(e, "not an object");
  }
}

TEST(SafetensorsTest, UnknownDtype) {
  Error e = ParseError(R"({"w":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}})");
  EXPECT_EQ(e.code, ErrorCode::kUnsupported);
  ExpectMentions(e, "t.safetensors");
  ExpectMentions(e, "\"w\"");
  ExpectMentions(e, "F7");
}

TEST(SafetensorsTest, SizeMismatch) {
  Error e = ParseError(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "\"w\"");
  ExpectMentions(e, "need 24");
  // A zero-sized shape with a non-empty range.
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"F32","shape":[0,3],"data_offsets":[0,4]}})").code, ErrorCode::kCorrupt);
}

TEST(SafetensorsTest, HugeShapeOverflow) {
  // numel overflows 64 bits; must not wrap to a small number that matches the range.
  Error e = ParseError(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}})");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "\"w\"");
  ExpectMentions(e, "overflow");
  // numel fits but numel * 8 bytes does not.
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})").code,
            ErrorCode::kCorrupt);
  // Dimension larger than int64.
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})").code,
            ErrorCode::kCorrupt);
  // Wrapping product with a zero later is still size 0 and valid.
  EXPECT_TRUE(Parse(SafetensorsBytes(
                        R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", ""))
                  .ok());
}

TEST(SafetensorsTest, OffsetsOutsideData) {
  Error e = ParseError(R"({"w":{"dtype":"U8","shape":[8],"data_offsets":[60,68]}})", 64);
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "\"w\"");
  ExpectMentions(e, "past the data section");
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}})").code,
            ErrorCode::kCorrupt);  // begin > end
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})").code, ErrorCode::kCorrupt);
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})").code, ErrorCode::kCorrupt);
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})").code, ErrorCode::kCorrupt);
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0.0,1.0]}})").code, ErrorCode::kCorrupt);
}

TEST(SafetensorsTest, Overlapping) {
  Error e = ParseError(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                       R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "overlap");
  ExpectMentions(e, "\"a\"");
  ExpectMentions(e, "\"b\"");
  // Contained range.
  EXPECT_EQ(ParseError(R"({"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                       R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})")
                .code,
            ErrorCode::kCorrupt);
  // Identical ranges.
  EXPECT_EQ(ParseError(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})")
                .code,
            ErrorCode::kCorrupt);
  // Adjacent ranges and empty tensors inside another's range are fine.
  EXPECT_TRUE(Parse(SafetensorsBytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                     R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                                     R"("z":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})",
                                     std::string(8, 'x')))
                  .ok());
}

TEST(SafetensorsTest, NegativeOrBadShape) {
  Error e = ParseError(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "\"w\"");
  ExpectMentions(e, "negative");
  for (const char* json : {R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})",
                           R"({"w":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})",
                           R"({"w":{"dtype":"U8","shape":4,"data_offsets":[0,4]}})",
                           R"({"w":{"dtype":"U8","data_offsets":[0,4]}})",
                           R"({"w":{"shape":[4],"data_offsets":[0,4]}})",
                           R"({"w":{"dtype":"U8","shape":[4]}})",
                           R"({"w":{"dtype":7,"shape":[4],"data_offsets":[0,4]}})",
                           R"({"w":[1,2,3]})"}) {
    Error err = ParseError(json);
    EXPECT_EQ(err.code, ErrorCode::kCorrupt) << json;
    ExpectMentions(err, "\"w\"");
  }
}

TEST(SafetensorsTest, DuplicateNames) {
  Error e = ParseError(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  ExpectMentions(e, "duplicate");
  ExpectMentions(e, "\"w\"");
  // Duplicate keys inside an entry are rejected too.
  EXPECT_EQ(ParseError(R"({"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})").code,
            ErrorCode::kCorrupt);
}

TEST(SafetensorsTest, BadMetadata) {
  EXPECT_EQ(ParseError(R"({"__metadata__":{"a":1}})").code, ErrorCode::kCorrupt);
  EXPECT_EQ(ParseError(R"({"__metadata__":[1]})").code, ErrorCode::kCorrupt);
  EXPECT_TRUE(Parse(SafetensorsBytes(R"({"__metadata__":{}})", "")).ok());
}

TEST(SafetensorsTest, MissingFileAndEmptyFile) {
  std::string dir = NewTempDir("missing");
  auto f = SafetensorsFile::Open(dir + "/nope.safetensors");
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, ErrorCode::kNotFound);
  ExpectMentions(f.error(), "nope.safetensors");
  auto h = ReadSafetensorsHeader(dir + "/nope.safetensors");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, ErrorCode::kNotFound);

  WriteFileOrDie(dir + "/empty.safetensors", "");
  auto e = SafetensorsFile::Open(dir + "/empty.safetensors");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code, ErrorCode::kCorrupt);
}

}  // namespace
}  // namespace bigplan

namespace bigplan {
namespace {

// 100k zero-size tensors in one header: parsing is linear in the header's size (it took 88 s when nlohmann's
// callback parser rescanned the top-level object at the end of every entry).
TEST(SafetensorsTest, HundredThousandTensorsParseFast) {
  std::string json = "{";
  for (int i = 0; i < 100000; ++i) {
    if (i) json += ",";
    json += "\"model.t" + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  }
  json += "}";
  const std::string dir = NewTempDir("many");
  WriteFileOrDie(dir + "/many.safetensors", SafetensorsBytes(json, ""));
  // CPU time of this thread: the bound is about the parser's work, not about how busy the machine is.
  auto cpu_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
  };
  const double start = cpu_seconds();
  auto h = ReadSafetensorsHeader(dir + "/many.safetensors");
  const double s = cpu_seconds() - start;
  ASSERT_TRUE(h.ok()) << h.error().ToString();
  EXPECT_EQ(h->tensors.size(), 100000u);
  EXPECT_NE(h->Find("model.t99999"), nullptr);
  EXPECT_LT(s, 2.0) << "100k-tensor header took " << s << " s";
}

TEST(SafetensorsTest, DeeplyNestedHeaderIsRefused) {
  std::string json = "{\"__metadata__\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  auto r = Parse(SafetensorsBytes(json, ""));
  ASSERT_FALSE(r.ok());
  ExpectMentions(r.error(), "nested deeper than");
}

TEST(SafetensorsTest, FifoShardIsRefusedWithoutBlocking) {
  const std::string dir = NewTempDir("fifo");
  const std::string p = dir + "/model.safetensors";
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  auto h = ReadSafetensorsHeader(p);
  ASSERT_FALSE(h.ok());
  ExpectMentions(h.error(), p + ": not a regular file (it is a FIFO");
  auto f = SafetensorsFile::Open(p);
  ASSERT_FALSE(f.ok());
  ExpectMentions(f.error(), "FIFO");
}

}  // namespace
}  // namespace bigplan
