#include "formats/checkpoint.h"

#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "formats/test_util.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

using testing::NewTempDir;
using testing::SafetensorsBytes;
using testing::WriteFileOrDie;

// A shard of U8 tensors [size] laid out back to back; each tensor's bytes are its first letter.
std::string Shard(const std::vector<std::pair<std::string, int>>& tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  std::string data;
  for (const auto& [name, size] : tensors) {
    header += ",\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(size) + "],\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + size) + "]}";
    data += std::string(size, name[0]);
  }
  header += "}";
  return SafetensorsBytes(header, data);
}

void ExpectMentions(const Error& e, const std::string& what) {
  EXPECT_NE(e.message.find(what), std::string::npos) << "\"" << e.message << "\" should mention \"" << what << "\"";
}

const char* kHfIndex = R"({"metadata":{"total_size":10},"weight_map":{
  "a.weight":"model-00001-of-00002.safetensors",
  "b.weight":"model-00001-of-00002.safetensors",
  "c.weight":"model-00002-of-00002.safetensors"}})";

std::string MakeHfCheckpoint() {
  std::string dir = NewTempDir("hf");
  WriteFileOrDie(dir + "/model-00001-of-00002.safetensors", Shard({{"a.weight", 3}, {"b.weight", 4}}));
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", Shard({{"c.weight", 3}}));
  WriteFileOrDie(dir + "/model.safetensors.index.json", kHfIndex);
  return dir;
}

void ExpectHfTensors(const Checkpoint& c) {
  ASSERT_EQ(c.tensors().size(), 3u);
  EXPECT_EQ(c.tensors()[0].name, "a.weight");
  EXPECT_EQ(c.tensors()[1].name, "b.weight");
  EXPECT_EQ(c.tensors()[2].name, "c.weight");
  ASSERT_EQ(c.shard_paths().size(), 2u);
  EXPECT_NE(c.shard_paths()[0].find(c.fingerprint().shards[0].file_name), std::string::npos);
  const TensorLocation* b = c.Find("b.weight");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->shard, 0u);
  EXPECT_EQ(b->dtype, DType::kU8);
  EXPECT_EQ(b->shape, std::vector<int64_t>{4});
  EXPECT_EQ(b->size_bytes, 4u);
  // The absolute offset points at the tensor's bytes.
  std::string bytes = testing::ReadFileOrDie(c.shard_paths()[0]);
  EXPECT_EQ(bytes.substr(b->offset, 4), "bbbb");
  const TensorLocation* cc = c.Find("c.weight");
  ASSERT_NE(cc, nullptr);
  EXPECT_EQ(cc->shard, 1u);
  EXPECT_EQ(testing::ReadFileOrDie(c.shard_paths()[1]).substr(cc->offset, 3), "ccc");
  EXPECT_EQ(c.Find("zzz"), nullptr);
  EXPECT_EQ(c.total_bytes(), 10u);
}

TEST(CheckpointTest, HuggingFaceIndexDirectoryAndFile) {
  std::string dir = MakeHfCheckpoint();
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ExpectHfTensors(*c);
  EXPECT_EQ(c->directory(), dir);
  EXPECT_EQ(c->index_path(), dir + "/model.safetensors.index.json");

  auto by_file = Checkpoint::Open(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(by_file.ok()) << by_file.error().ToString();
  ExpectHfTensors(*by_file);
  EXPECT_EQ(by_file->fingerprint().digest, c->fingerprint().digest);
}

TEST(CheckpointTest, Fingerprint) {
  std::string dir = MakeHfCheckpoint();
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  const CheckpointFingerprint& fp = c->fingerprint();
  ASSERT_EQ(fp.shards.size(), 2u);
  std::string expected_input;
  for (size_t i = 0; i < 2; ++i) {
    std::string bytes = testing::ReadFileOrDie(c->shard_paths()[i]);
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<uint8_t>(bytes[k]);
    EXPECT_EQ(fp.shards[i].size_bytes, bytes.size());
    EXPECT_EQ(fp.shards[i].header_digest, Sha256Hex(bytes.data(), 8 + n));
    expected_input += fp.shards[i].file_name + "\n" + std::to_string(fp.shards[i].size_bytes) + "\n" +
                      fp.shards[i].header_digest + "\n";
  }
  EXPECT_EQ(fp.shards[0].file_name, "model-00001-of-00002.safetensors");
  EXPECT_EQ(fp.digest, Sha256Hex(expected_input));

  // Same bytes elsewhere: same digest. A changed header: different digest.
  std::string other = MakeHfCheckpoint();
  auto c2 = Checkpoint::Open(other);
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(c2->fingerprint().digest, fp.digest);
  WriteFileOrDie(other + "/model-00002-of-00002.safetensors", Shard({{"c.weight", 4}}));
  auto c3 = Checkpoint::Open(other);
  ASSERT_TRUE(c3.ok()) << c3.error().ToString();
  EXPECT_NE(c3->fingerprint().digest, fp.digest);
  EXPECT_EQ(c3->fingerprint().shards[0].header_digest, fp.shards[0].header_digest);
}

TEST(CheckpointTest, FlatIndex) {
  std::string dir = NewTempDir("flat");
  WriteFileOrDie(dir + "/s1.safetensors", Shard({{"a.weight", 3}, {"b.weight", 4}}));
  WriteFileOrDie(dir + "/s2.safetensors", Shard({{"c.weight", 3}}));
  WriteFileOrDie(dir + "/index.json",
                 R"({"a.weight":"s1.safetensors","b.weight":"s1.safetensors","c.weight":"s2.safetensors"})");
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ExpectHfTensors(*c);
  EXPECT_EQ(c->index_path(), dir + "/index.json");
  auto f = Checkpoint::Open(dir + "/index.json");
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  ExpectHfTensors(*f);
}

TEST(CheckpointTest, OtherIndexNameAndPreference) {
  std::string dir = NewTempDir("other");
  WriteFileOrDie(dir + "/model-00001-of-00002.safetensors", Shard({{"a.weight", 3}, {"b.weight", 4}}));
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", Shard({{"c.weight", 3}}));
  WriteFileOrDie(dir + "/diffusion_pytorch_model.safetensors.index.json", kHfIndex);
  // A flat index.json that disagrees would fail; it must be ignored in favour of *.safetensors.index.json.
  WriteFileOrDie(dir + "/index.json", R"({"x":"missing.safetensors"})");
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ExpectHfTensors(*c);
  EXPECT_EQ(c->index_path(), dir + "/diffusion_pytorch_model.safetensors.index.json");

  // model.safetensors.index.json wins over other index names.
  WriteFileOrDie(dir + "/model.safetensors.index.json", kHfIndex);
  WriteFileOrDie(dir + "/diffusion_pytorch_model.safetensors.index.json", "garbage");
  auto c2 = Checkpoint::Open(dir);
  ASSERT_TRUE(c2.ok()) << c2.error().ToString();
  EXPECT_EQ(c2->index_path(), dir + "/model.safetensors.index.json");
}

TEST(CheckpointTest, SeveralIndexesAreAmbiguous) {
  std::string dir = NewTempDir("ambiguous");
  WriteFileOrDie(dir + "/a.safetensors.index.json", kHfIndex);
  WriteFileOrDie(dir + "/b.safetensors.index.json", kHfIndex);
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kInvalidArgument);
  ExpectMentions(c.error(), "a.safetensors.index.json");
}

TEST(CheckpointTest, DirectoryWithoutIndex) {
  std::string dir = NewTempDir("noindex");
  WriteFileOrDie(dir + "/model-00001-of-00002.safetensors", Shard({{"a.weight", 3}, {"b.weight", 4}}));
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", Shard({{"c.weight", 3}}));
  // An index.json of another kind (Accelerate's offload index) is ignored.
  WriteFileOrDie(dir + "/index.json", R"({"a.weight":{"dtype":"float32","shape":[3]}})");
  WriteFileOrDie(dir + "/README.md", "not a shard");
  auto c = Checkpoint::Open(dir);
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  ExpectHfTensors(*c);
  EXPECT_EQ(c->index_path(), "");
}

TEST(CheckpointTest, SingleFile) {
  std::string dir = NewTempDir("single");
  WriteFileOrDie(dir + "/model.safetensors", Shard({{"a.weight", 3}, {"b.weight", 4}}));
  auto c = Checkpoint::Open(dir + "/model.safetensors");
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->tensors().size(), 2u);
  EXPECT_EQ(c->directory(), dir);
  EXPECT_EQ(c->fingerprint().shards.size(), 1u);
  EXPECT_EQ(c->fingerprint().shards[0].file_name, "model.safetensors");
  EXPECT_EQ(c->total_bytes(), 7u);
}

TEST(CheckpointTest, MissingPathAndEmptyDirectory) {
  std::string dir = NewTempDir("empty");
  auto missing = Checkpoint::Open(dir + "/nothing");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  ExpectMentions(missing.error(), "nothing");
  auto empty = Checkpoint::Open(dir);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().code, ErrorCode::kNotFound);
  ExpectMentions(empty.error(), dir);
}

TEST(CheckpointTest, ShardMissing) {
  std::string dir = MakeHfCheckpoint();
  std::filesystem::remove(dir + "/model-00002-of-00002.safetensors");
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kNotFound);
  ExpectMentions(c.error(), "model.safetensors.index.json");
  ExpectMentions(c.error(), "model-00002-of-00002.safetensors");
  ExpectMentions(c.error(), "c.weight");
}

TEST(CheckpointTest, TensorListedButAbsent) {
  std::string dir = MakeHfCheckpoint();
  WriteFileOrDie(dir + "/model-00001-of-00002.safetensors", Shard({{"a.weight", 3}}));
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kNotFound);
  ExpectMentions(c.error(), "b.weight");
  ExpectMentions(c.error(), "model-00001-of-00002.safetensors");
}

TEST(CheckpointTest, TensorInTwoShards) {
  std::string dir = NewTempDir("two");
  WriteFileOrDie(dir + "/s1.safetensors", Shard({{"a.weight", 3}, {"x.weight", 2}}));
  WriteFileOrDie(dir + "/s2.safetensors", Shard({{"x.weight", 2}}));
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kMismatch);
  ExpectMentions(c.error(), "x.weight");
  ExpectMentions(c.error(), "s1.safetensors");
  ExpectMentions(c.error(), "s2.safetensors");

  // With an index too.
  WriteFileOrDie(dir + "/model.safetensors.index.json",
                 R"({"weight_map":{"a.weight":"s1.safetensors","x.weight":"s2.safetensors"}})");
  auto ci = Checkpoint::Open(dir);
  ASSERT_FALSE(ci.ok());
  EXPECT_EQ(ci.error().code, ErrorCode::kMismatch);
  ExpectMentions(ci.error(), "x.weight");
}

TEST(CheckpointTest, ShardHoldsUnlistedTensor) {
  std::string dir = MakeHfCheckpoint();
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", Shard({{"c.weight", 3}, {"extra.bias", 2}}));
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kMismatch);
  ExpectMentions(c.error(), "extra.bias");
  ExpectMentions(c.error(), "model-00002-of-00002.safetensors");
}

TEST(CheckpointTest, TensorInShardOtherThanListed) {
  std::string dir = MakeHfCheckpoint();
  WriteFileOrDie(dir + "/model-00001-of-00002.safetensors", Shard({{"a.weight", 3}}));
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", Shard({{"b.weight", 4}, {"c.weight", 3}}));
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kMismatch);
  ExpectMentions(c.error(), "b.weight");
}

TEST(CheckpointTest, CorruptShardNamesFile) {
  std::string dir = MakeHfCheckpoint();
  std::string bytes = Shard({{"c.weight", 3}});
  WriteFileOrDie(dir + "/model-00002-of-00002.safetensors", bytes.substr(0, bytes.size() - 1));
  auto c = Checkpoint::Open(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, ErrorCode::kCorrupt);
  ExpectMentions(c.error(), "model-00002-of-00002.safetensors");
  ExpectMentions(c.error(), "c.weight");
}

TEST(CheckpointTest, IndexErrors) {
  struct Case {
    const char* json;
    const char* mention;
  };
  const Case cases[] = {
      {R"({"weight_map":{"a.weight":"s1.safetensors",})", "malformed"},
      {"[]", "not an object"},
      {R"({"weight_map":["a"]})", "weight_map"},
      {R"({"weight_map":{"a.weight":3}})", "a.weight"},
      {R"({"weight_map":{"a.weight":""}})", "a.weight"},
      {R"({"a.weight":{"file":"s1.safetensors"}})", "a.weight"},
      {R"({"weight_map":{"a.weight":"s1.safetensors","a.weight":"s2.safetensors"}})", "a.weight"},
  };
  for (const Case& k : cases) {
    std::string dir = NewTempDir("badindex");
    WriteFileOrDie(dir + "/s1.safetensors", Shard({{"a.weight", 3}}));
    WriteFileOrDie(dir + "/model.safetensors.index.json", k.json);
    auto c = Checkpoint::Open(dir);
    ASSERT_FALSE(c.ok()) << k.json;
    EXPECT_EQ(c.error().code, ErrorCode::kCorrupt) << k.json;
    ExpectMentions(c.error(), "model.safetensors.index.json");
    ExpectMentions(c.error(), k.mention);
  }
}

TEST(CheckpointTest, ParseIndexJsonFromMemory) {
  auto hf = ParseIndexJson(kHfIndex, "mem");
  ASSERT_TRUE(hf.ok()) << hf.error().ToString();
  EXPECT_EQ(hf->size(), 3u);
  EXPECT_EQ(hf->at("c.weight"), "model-00002-of-00002.safetensors");
  auto flat = ParseIndexJson(R"({"x":"a.safetensors"})", "mem");
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ(flat->at("x"), "a.safetensors");
  auto empty = ParseIndexJson(R"({"weight_map":{}})", "mem");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  auto bad = ParseIndexJson("{", "mem");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(bad.error().message.rfind("mem", 0), 0u);
}

}  // namespace
}  // namespace bigplan

namespace bigplan {
namespace {

using testing::NewTempDir;
using testing::WriteFileOrDie;

// A directory with a valid one-tensor shard and an index that names `shard_name` for it.
std::string IndexedDir(const std::string& tag, const std::string& shard_name) {
  const std::string dir = NewTempDir(tag);
  WriteFileOrDie(dir + "/model.safetensors.index.json",
                 "{\"weight_map\":{\"a.weight\":" + nlohmann::json(shard_name).dump() + "}}");
  return dir;
}

std::string OneTensorShard() {
  return testing::SafetensorsBytes(R"({"a.weight":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", "aaa");
}

TEST(CheckpointContainmentTest, TraversalAndAbsoluteNamesAreRefusedWithoutOpening) {
  // A readable file outside the model directory, holding a valid shard: it must not be used.
  const std::string outside = NewTempDir("outside");
  WriteFileOrDie(outside + "/model.safetensors", OneTensorShard());
  const std::string outside_rel = "../" + std::filesystem::path(outside).filename().string() + "/model.safetensors";
  struct Case {
    std::string name, why;
  } cases[] = {
      {"../../etc/passwd", "leaves the model directory"},
      {"/etc/passwd", "is an absolute path"},
      {outside + "/model.safetensors", "is an absolute path"},
      {outside_rel, "leaves the model directory"},
      {"sub/../../x.safetensors", "leaves the model directory"},
      {"..", "leaves the model directory"},
      {"sub/..", "names no file"},
      {std::string("a.safetensors") + '\0' + "/../../etc/passwd", "contains a NUL byte"},
  };
  for (const Case& c : cases) {
    const std::string dir = IndexedDir("trav", c.name);
    auto r = Checkpoint::Open(dir);
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << r.error().message;
    ExpectMentions(r.error(), dir + "/model.safetensors.index.json: tensor \"a.weight\": shard file name");
    ExpectMentions(r.error(), c.why);
    EXPECT_EQ(r.error().message.find("root:"), std::string::npos) << r.error().message;
  }
}

TEST(CheckpointContainmentTest, NamesInsideTheDirectoryAndSymlinksStayAllowed) {
  // sub/./x and sub/../y normalize inside; a symbolic link inside the directory pointing elsewhere (the HF cache's
  // snapshots -> blobs layout) is followed.
  const std::string blobs = NewTempDir("blobs");
  WriteFileOrDie(blobs + "/abc123", OneTensorShard());
  const std::string dir = IndexedDir("snap", "sub/../model.safetensors");
  std::filesystem::create_symlink(blobs + "/abc123", dir + "/model.safetensors");
  auto r = Checkpoint::Open(dir);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  ASSERT_NE(r->Find("a.weight"), nullptr);
}

TEST(CheckpointContainmentTest, CheckShardNameContained) {
  EXPECT_TRUE(CheckShardNameContained("model-00001-of-00002.safetensors", "t", "i").ok());
  EXPECT_TRUE(CheckShardNameContained("./a/b.safetensors", "t", "i").ok());
  EXPECT_TRUE(CheckShardNameContained("a/../b.safetensors", "t", "i").ok());
  EXPECT_FALSE(CheckShardNameContained("a/../../b.safetensors", "t", "i").ok());
  EXPECT_FALSE(CheckShardNameContained("/b.safetensors", "t", "i").ok());
  EXPECT_FALSE(CheckShardNameContained("a/", "t", "i").ok());
}

TEST(CheckpointTest, FifoIndexAndShardAreRefusedWithoutBlocking) {
  const std::string dir = NewTempDir("fifo_index");
  ASSERT_EQ(::mkfifo((dir + "/model.safetensors.index.json").c_str(), 0600), 0);
  auto r = Checkpoint::Open(dir + "/model.safetensors.index.json");
  ASSERT_FALSE(r.ok());
  ExpectMentions(r.error(), "model.safetensors.index.json: not a regular file (it is a FIFO");
  const std::string dir2 = IndexedDir("fifo_shard", "model.safetensors");
  ASSERT_EQ(::mkfifo((dir2 + "/model.safetensors").c_str(), 0600), 0);
  auto r2 = Checkpoint::Open(dir2);
  ASSERT_FALSE(r2.ok());
  ExpectMentions(r2.error(), "FIFO");
}

TEST(CheckpointTest, HugeSparseIndexIsRefusedBeforeReading) {
  const std::string dir = NewTempDir("sparse_index");
  const std::string p = dir + "/model.safetensors.index.json";
  WriteFileOrDie(p, "");
  std::filesystem::resize_file(p, uint64_t{20} << 30);
  auto r = Checkpoint::Open(dir);
  ASSERT_FALSE(r.ok());
  ExpectMentions(r.error(), p + ": 21474836480 bytes is more than the limit of");
  std::filesystem::remove(p);
}

}  // namespace
}  // namespace bigplan
