#include "formats/writer.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "formats/checkpoint.h"
#include "formats/test_util.h"

namespace bigplan {
namespace {

using testing::NewTempDir;
using testing::ReadFileOrDie;

float Bf16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F16ToFloat(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) v = mant ? NAN : INFINITY;
  else v = std::ldexp(1.0f + mant / 1024.0f, exp - 15);
  return (h & 0x8000) ? -v : v;
}

std::vector<WriteSpec> Specs() {
  return {
      {"model.embed_tokens.weight", {64, 32}, DType::kBF16},
      {"model.layers.0.input_layernorm.weight", {32}, DType::kBF16},
      {"model.layers.0.mlp.up_proj.weight", {96, 32}, DType::kF16},
      {"model.layers.0.mlp.down_proj.weight", {32, 96}, DType::kF32},
      {"transformer.ln_f.weight", {32}, DType::kF32},
      {"odd.bias", {7}, DType::kF16},  // not a multiple of 8 bytes
      {"counts", {5}, DType::kI64},
      {"mask", {13}, DType::kBool},
      {"fp8", {9}, DType::kF8E4M3},
      {"scalar", {}, DType::kF64},
      {"empty", {0, 4}, DType::kBF16},
      {"model.norm.weight", {32}, DType::kF16},
  };
}

TEST(WriterTest, RoundTripsThroughCheckpoint) {
  std::string dir = NewTempDir("writer");
  std::vector<WriteSpec> specs = Specs();
  WriterOptions opts;
  opts.seed = 42;
  opts.max_shard_bytes = 8000;  // several shards
  uint64_t last_done = 0, last_total = 0;
  int calls = 0;
  opts.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    last_done = done;
    last_total = total;
    ++calls;
  };
  auto names = WriteRandomCheckpoint(dir, specs, opts);
  ASSERT_TRUE(names.ok()) << names.error().ToString();
  ASSERT_GT(names->size(), 1u);
  EXPECT_EQ((*names)[0], "model-00001-of-0000" + std::to_string(names->size()) + ".safetensors");
  EXPECT_GE(calls, 1);
  EXPECT_EQ(last_done, last_total);

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().ToString();
  EXPECT_EQ(ckpt->index_path(), dir + "/model.safetensors.index.json");
  EXPECT_EQ(ckpt->tensors().size(), specs.size());
  EXPECT_EQ(ckpt->total_bytes(), last_total);

  auto index = nlohmann::json::parse(ReadFileOrDie(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), last_total);
  EXPECT_EQ(index["weight_map"].size(), specs.size());

  std::vector<std::string> files;
  for (const std::string& p : ckpt->shard_paths()) {
    files.push_back(ReadFileOrDie(p));
    uint64_t n = 0;
    for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<uint8_t>(files.back()[k]);
    EXPECT_EQ((8 + n) % 8, 0u) << "data section of " << p << " is not 8-aligned";
  }
  for (uint32_t i = 0; i < specs.size(); ++i) {
    const TensorLocation* loc = ckpt->Find(specs[i].name);
    ASSERT_NE(loc, nullptr) << specs[i].name;
    EXPECT_EQ(loc->dtype, specs[i].dtype);
    EXPECT_EQ(loc->shape, specs[i].shape);
    std::string expected(loc->size_bytes, '\0');
    GenerateTensorBytes(specs[i], i, 42, 0.02f, 0, loc->size_bytes, reinterpret_cast<uint8_t*>(expected.data()));
    EXPECT_EQ(files[loc->shard].substr(loc->offset, loc->size_bytes), expected) << specs[i].name;
  }
}

// Decodes tensor `i` of `specs` generated with `seed` as floats.
std::vector<float> Floats(const WriteSpec& spec, uint32_t i, uint64_t seed, float scale) {
  uint64_t numel = 1;
  for (int64_t d : spec.shape) numel *= d;
  const size_t bytes = DTypeBytes(spec.dtype);
  std::vector<uint8_t> raw(numel * bytes);
  GenerateTensorBytes(spec, i, seed, scale, 0, raw.size(), raw.data());
  std::vector<float> out(numel);
  for (uint64_t k = 0; k < numel; ++k) {
    if (spec.dtype == DType::kF32) {
      std::memcpy(&out[k], &raw[4 * k], 4);
    } else {
      uint16_t h = static_cast<uint16_t>(raw[2 * k] | (raw[2 * k + 1] << 8));
      out[k] = spec.dtype == DType::kBF16 ? Bf16ToFloat(h) : F16ToFloat(h);
    }
  }
  return out;
}

TEST(WriterTest, ValueRanges) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    WriteSpec w{"layers.0.attn.q_proj.weight", {4096}, dtype};
    WriteSpec n{"layers.0.post_attention_layernorm.weight", {4096}, dtype};
    const float scale = 0.02f;
    std::vector<float> wv = Floats(w, 3, 7, scale);
    std::vector<float> nv = Floats(n, 4, 7, scale);
    double sum = 0, nsum = 0;
    float wmin = 1, wmax = -1;
    for (float v : wv) {
      ASSERT_TRUE(std::isfinite(v));
      EXPECT_LE(std::fabs(v), scale * 1.01f);
      sum += v;
      wmin = std::min(wmin, v);
      wmax = std::max(wmax, v);
    }
    // Near 1, BF16 rounds in steps of 2^-7.
    const float quantum = dtype == DType::kBF16 ? 0.0079f : 0.001f;
    for (float v : nv) {
      EXPECT_NEAR(v, 1.0f, scale + quantum);
      nsum += v;
    }
    EXPECT_NEAR(sum / wv.size(), 0.0, scale * 0.05) << DTypeString(dtype);
    EXPECT_LT(wmin, -scale * 0.9f);
    EXPECT_GT(wmax, scale * 0.9f);
    EXPECT_NEAR(nsum / nv.size(), 1.0, scale * 0.05);
  }
  // Small values become F16 subnormals correctly (no garbage exponents).
  WriteSpec tiny{"tiny", {4096}, DType::kF16};
  for (float v : Floats(tiny, 0, 1, 1e-5f)) EXPECT_LE(std::fabs(v), 1.01e-5f);
}

TEST(WriterTest, SubRangesMatchWholeTensor) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI8, DType::kBool, DType::kF64}) {
    WriteSpec spec{"t", {101}, dtype};
    const uint64_t size = 101 * DTypeBytes(dtype);
    std::vector<uint8_t> whole(size);
    GenerateTensorBytes(spec, 5, 9, 0.02f, 0, size, whole.data());
    for (uint64_t begin : {0ull, 1ull, 3ull, 8ull, 13ull}) {
      for (uint64_t len : {0ull, 1ull, 5ull, 8ull, 9ull, 40ull}) {
        if (begin + len > size) continue;
        std::vector<uint8_t> part(len + 1, 0xAB);
        GenerateTensorBytes(spec, 5, 9, 0.02f, begin, len, part.data());
        EXPECT_EQ(0, std::memcmp(part.data(), whole.data() + begin, len)) << begin << " " << len;
        EXPECT_EQ(part[len], 0xAB);  // no write past the range
      }
    }
    if (dtype == DType::kBool) {
      for (uint8_t b : whole) EXPECT_LE(b, 1);
    }
  }
}

TEST(WriterTest, DeterministicAcrossRunsAndThreads) {
  // One tensor larger than the 16 MiB write chunk, plus small ones around it.
  std::vector<WriteSpec> specs = {
      {"a.weight", {3, 5}, DType::kBF16},
      {"big.weight", {5, 1 << 20}, DType::kF32},
      {"c.weight", {17}, DType::kF16},
  };
  auto write = [&](uint64_t seed, int threads) {
    std::string dir = NewTempDir("det");
    WriterOptions opts;
    opts.seed = seed;
    opts.threads = threads;
    auto names = WriteRandomCheckpoint(dir, specs, opts);
    EXPECT_TRUE(names.ok()) << names.error().ToString();
    EXPECT_EQ(names->size(), 1u);
    EXPECT_EQ((*names)[0], "model.safetensors");
    return ReadFileOrDie(dir + "/model.safetensors");
  };
  std::string a = write(1, 1);
  std::string b = write(1, 4);
  std::string c = write(2, 3);
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(a == b);
  ASSERT_EQ(a.size(), c.size());
  EXPECT_FALSE(a == c);
  // Different seeds differ in nearly every word, not only somewhere.
  size_t same = 0;
  for (size_t i = a.size() - 4096; i < a.size(); ++i) same += a[i] == c[i];
  EXPECT_LT(same, 1024u);
}

TEST(WriterTest, IndexAlwaysWrittenForOneShard) {
  std::string dir = NewTempDir("one");
  WriterOptions opts;
  opts.file_prefix = "weights";
  auto names = WriteRandomCheckpoint(dir, {{"x.weight", {4, 4}, DType::kBF16}}, opts);
  ASSERT_TRUE(names.ok()) << names.error().ToString();
  EXPECT_EQ((*names)[0], "weights.safetensors");
  auto index = nlohmann::json::parse(ReadFileOrDie(dir + "/weights.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"]["x.weight"], "weights.safetensors");
  EXPECT_EQ(index["metadata"]["total_size"], 32);
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().ToString();
  EXPECT_EQ(ckpt->tensors().size(), 1u);
}

TEST(WriterTest, OversizedTensorGetsItsOwnShard) {
  std::string dir = NewTempDir("oversized");
  WriterOptions opts;
  opts.max_shard_bytes = 100;
  auto names = WriteRandomCheckpoint(
      dir, {{"a", {10}, DType::kU8}, {"b", {1000}, DType::kU8}, {"c", {10}, DType::kU8}, {"d", {10}, DType::kU8}},
      opts);
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->size(), 3u);  // [a], [b], [c, d]
  EXPECT_EQ((*names)[2], "model-00003-of-00003.safetensors");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.error().ToString();
  EXPECT_EQ(ckpt->Find("c")->shard, ckpt->Find("d")->shard);
}

TEST(WriterTest, RejectsBadSpecs) {
  std::string dir = NewTempDir("bad");
  WriterOptions opts;
  for (const std::vector<WriteSpec>& specs : std::vector<std::vector<WriteSpec>>{
           {{"a", {1}, DType::kF32}, {"a", {2}, DType::kF32}},
           {{"a", {-1}, DType::kF32}},
           {{"", {1}, DType::kF32}},
           {{"__metadata__", {1}, DType::kF32}},
           {{"a", {1ll << 40, 1ll << 40}, DType::kF32}},
           {{"bad\xff", {1}, DType::kF32}},
       }) {
    auto r = WriteRandomCheckpoint(dir, specs, opts);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument) << r.error().ToString();
  }
}

TEST(WriterTest, NormNames) {
  for (const char* n : {"model.norm.weight", "model.layers.3.input_layernorm.weight", "encoder.layernorm.weight",
                        "transformer.h.0.ln_1.weight", "transformer.ln_f.weight", "ln_f.weight", "norm.weight",
                        "rmsnorm.weight"}) {
    EXPECT_TRUE(IsNormWeightName(n)) << n;
  }
  for (const char* n : {"model.norm.bias", "lm_head.weight", "weight", "ln.weight", "q_proj.weight",
                        "model.normal_proj.weight", "kln_1.weight", "norm"}) {
    EXPECT_FALSE(IsNormWeightName(n)) << n;
  }
}

TEST(WriterTest, ParsesSpecs) {
  auto specs = ParseWriteSpecsJson(
      R"({"tensors":[{"name":"a","shape":[2,3],"dtype":"F16"},{"name":"b","shape":[]}]})", "spec.json");
  ASSERT_TRUE(specs.ok()) << specs.error().ToString();
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[0].dtype, DType::kF16);
  EXPECT_EQ((*specs)[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ((*specs)[1].dtype, DType::kBF16);
  for (const char* bad : {"{", "[]", R"({"tensors":{}})", R"({"tensors":[{"shape":[1]}]})",
                          R"({"tensors":[{"name":"a","shape":[-1]}]})", R"({"tensors":[{"name":"a"}]})",
                          R"({"tensors":[{"name":"a","shape":[1.5]}]})"}) {
    auto r = ParseWriteSpecsJson(bad, "spec.json");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
    EXPECT_EQ(r.error().message.rfind("spec.json", 0), 0u);
  }
  auto unknown = ParseWriteSpecsJson(R"({"tensors":[{"name":"a","shape":[1],"dtype":"Q4"}]})", "spec.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace bigplan
