// tp::AllReduce on CUDA devices 0 and 1 (and on every device when there are 3 or more): sums against a host
// reference summed in float32 in rank order and rounded the same way, bit-identical on every rank; back-to-back
// calls of changing sizes, some in place; CUDA graphs replayed between eager calls; Abort and Reset; Create's and
// Launch's refusals. Every test skips with fewer than 2 CUDA devices.
#include "executor/tp_comm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace bigplan::tp {
namespace {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

#define REQUIRE_GPUS(k)                                                                                          \
  do {                                                                                                           \
    const int have = DeviceCount();                                                                              \
    if (have < (k)) GTEST_SKIP() << "needs at least " << (k) << " CUDA devices; this machine has " << have;     \
  } while (0)

// ---- host elements: values held as their bits (uint16 for bf16/f16, uint32 for f32) in uint32 ----

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t ToBits(DType t, float f) {  // round to nearest even (no NaNs here)
  switch (t) {
    case DType::kBF16: {
      const uint32_t u = FloatBits(f);
      return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    }
    case DType::kF16: {
      const _Float16 h = static_cast<_Float16>(f);
      uint16_t b;
      std::memcpy(&b, &h, 2);
      return b;
    }
    case DType::kF32: return FloatBits(f);
  }
  return 0;
}
float FromBits(DType t, uint32_t b) {
  switch (t) {
    case DType::kBF16: return BitsFloat(b << 16);
    case DType::kF16: {
      const uint16_t s = static_cast<uint16_t>(b);
      _Float16 h;
      std::memcpy(&h, &s, 2);
      return static_cast<float>(h);
    }
    case DType::kF32: return BitsFloat(b);
  }
  return 0;
}
const char* Name(DType t) { return t == DType::kBF16 ? "bf16" : t == DType::kF16 ? "f16" : "f32"; }

// n random values of dtype t (|x| < 8, varied exponents) as the bytes the device holds.
std::vector<uint8_t> RandomBytes(DType t, int64_t n, std::mt19937& rng) {
  const int eb = ElementBytes(t);
  std::vector<uint8_t> out(static_cast<size_t>(n * eb));
  std::uniform_real_distribution<float> mant(-1.f, 1.f);
  std::uniform_int_distribution<int> ex(-6, 3);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = ToBits(t, std::ldexp(mant(rng), ex(rng)));
    std::memcpy(out.data() + i * eb, &b, eb);
  }
  return out;
}
uint32_t ElementAt(DType t, const std::vector<uint8_t>& bytes, int64_t i) {
  uint32_t b = 0;
  std::memcpy(&b, bytes.data() + i * ElementBytes(t), ElementBytes(t));
  return b;
}
// The sum over ranks in rank order, in float32 from rank 0's value, rounded once.
std::vector<uint8_t> Reference(DType t, const std::vector<std::vector<uint8_t>>& ins, int64_t n) {
  const int eb = ElementBytes(t);
  std::vector<uint8_t> out(static_cast<size_t>(n * eb));
  for (int64_t i = 0; i < n; ++i) {
    float s = FromBits(t, ElementAt(t, ins[0], i));
    for (size_t r = 1; r < ins.size(); ++r) s += FromBits(t, ElementAt(t, ins[r], i));
    const uint32_t b = ToBits(t, s);
    std::memcpy(out.data() + i * eb, &b, eb);
  }
  return out;
}
// The index of the first element where a and b differ over n elements, or -1.
int64_t FirstDiff(DType t, const std::vector<uint8_t>& a, const std::vector<uint8_t>& b, int64_t n) {
  const int eb = ElementBytes(t);
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(a.data() + i * eb, b.data() + i * eb, eb) != 0) return i;
  }
  return -1;
}

// ---- a group with one non-blocking stream and a few device buffers per rank ----

struct Rank {
  int device = 0;
  cudaStream_t stream = nullptr;
  std::vector<void*> buffers;
};

class Group {
 public:
  // Creates the group over `devices` and, per rank, a stream and `buffers` buffers of `buffer_bytes`.
  void Init(const std::vector<int>& devices, int64_t max_elements, int buffers, int64_t buffer_bytes) {
    std::string error;
    ASSERT_EQ(AllReduce::Create(devices, max_elements, &ar_, &error), cudaSuccess) << error;
    ASSERT_NE(ar_, nullptr);
    ranks_.resize(devices.size());
    for (size_t r = 0; r < devices.size(); ++r) {
      Rank& k = ranks_[r];
      k.device = devices[r];
      CUDA_OK(cudaSetDevice(k.device));
      CUDA_OK(cudaStreamCreateWithFlags(&k.stream, cudaStreamNonBlocking));
      for (int i = 0; i < buffers; ++i) {
        void* p = nullptr;
        CUDA_OK(cudaMalloc(&p, buffer_bytes));
        k.buffers.push_back(p);
      }
    }
  }
  ~Group() {
    for (Rank& k : ranks_) {
      cudaSetDevice(k.device);
      if (k.stream != nullptr) cudaStreamSynchronize(k.stream);
      for (void* p : k.buffers) cudaFree(p);
      if (k.stream != nullptr) cudaStreamDestroy(k.stream);
    }
    ar_.reset();
  }
  AllReduce& ar() { return *ar_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  Rank& rank(int r) { return ranks_[r]; }
  char* buf(int r, int i, int64_t byte_offset = 0) { return static_cast<char*>(ranks_[r].buffers[i]) + byte_offset; }

  void Upload(int r, void* dst, const std::vector<uint8_t>& bytes) {
    CUDA_OK(cudaSetDevice(ranks_[r].device));
    CUDA_OK(cudaMemcpyAsync(dst, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, ranks_[r].stream));
  }
  void Download(int r, const void* src, std::vector<uint8_t>* bytes) {
    CUDA_OK(cudaSetDevice(ranks_[r].device));
    CUDA_OK(cudaMemcpyAsync(bytes->data(), src, bytes->size(), cudaMemcpyDeviceToHost, ranks_[r].stream));
  }
  void Launch(int r, DType t, const void* in, void* out, int64_t n) {
    CUDA_OK(cudaSetDevice(ranks_[r].device));
    CUDA_OK(ar_->Launch(r, t, in, out, n, ranks_[r].stream));
  }
  void SyncAll() {
    for (Rank& k : ranks_) {
      CUDA_OK(cudaSetDevice(k.device));
      CUDA_OK(cudaStreamSynchronize(k.stream));
    }
  }

 private:
  std::unique_ptr<AllReduce> ar_;
  std::vector<Rank> ranks_;
};

// One call on every rank: uploads random inputs at in_offset[r] bytes into buffer 0 (or, in place, buffer 1), runs
// it, and checks every rank's output against the reference and against rank 0's output.
void CheckSum(Group& g, DType t, int64_t n, std::mt19937& rng, bool in_place, const std::vector<int64_t>& offsets) {
  const int N = g.size();
  const int eb = ElementBytes(t);
  std::vector<std::vector<uint8_t>> ins(N);
  for (int r = 0; r < N; ++r) ins[r] = RandomBytes(t, n, rng);
  const std::vector<uint8_t> want = Reference(t, ins, n);
  for (int r = 0; r < N; ++r) {
    char* in = g.buf(r, in_place ? 1 : 0, offsets[r]);
    char* out = g.buf(r, 1, offsets[r]);
    g.Upload(r, in, ins[r]);
    if (!in_place) {
      CUDA_OK(cudaMemsetAsync(out, 0xff, n * eb, g.rank(r).stream));  // stale output cannot pass
    }
  }
  for (int r = 0; r < N; ++r) g.Launch(r, t, g.buf(r, in_place ? 1 : 0, offsets[r]), g.buf(r, 1, offsets[r]), n);
  std::vector<std::vector<uint8_t>> got(N, std::vector<uint8_t>(n * eb));
  for (int r = 0; r < N; ++r) g.Download(r, g.buf(r, 1, offsets[r]), &got[r]);
  g.SyncAll();
  for (int r = 0; r < N; ++r) {
    const int64_t d = FirstDiff(t, got[r], want, n);
    ASSERT_EQ(d, -1) << Name(t) << " n=" << n << " rank " << r << (in_place ? " in place" : "") << " offset "
                     << offsets[r] << ": element " << d << " is " << FromBits(t, ElementAt(t, got[r], d))
                     << ", want " << FromBits(t, ElementAt(t, want, d));
    ASSERT_EQ(FirstDiff(t, got[r], got[0], n), -1) << "rank " << r << " differs from rank 0";
  }
  ASSERT_FALSE(g.ar().Failed());
}

constexpr int64_t kBig = 4096 * 512 + 3;
const int64_t kSizes[] = {1, 7, 8, 4095, 4096, 4097, 65536, kBig};

TEST(TpAllReduce, SumsTwoRanks) {
  REQUIRE_GPUS(2);
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init({0, 1}, kBig, 2, kBig * 4 + 64));
  std::mt19937 rng(1);
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int64_t n : kSizes) {
      ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, false, {0, 0}));
      ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, true, {0, 0}));
    }
    // Unaligned pointers (element-aligned only) take the scalar path; one rank aligned and one not still match.
    for (int64_t n : {int64_t{4097}, int64_t{65536 + 5}}) {
      ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, false, {4, 4}));
      ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, false, {0, 4}));
      ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, true, {4, 0}));
    }
  }
}

TEST(TpAllReduce, SumsAllDevices) {
  REQUIRE_GPUS(2);
  const int count = std::min(DeviceCount(), kMaxRanks);
  if (count < 3) GTEST_SKIP() << "only 2 CUDA devices: SumsTwoRanks covers them";
  std::vector<int> devices;
  for (int d = 0; d < count; ++d) devices.push_back(d);
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init(devices, kBig, 2, kBig * 4 + 64));
  std::mt19937 rng(2);
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (int64_t n : kSizes) ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, n, rng, n % 2 == 1, std::vector<int64_t>(count)));
  }
}

// 2000 calls in batches of 20 enqueued back to back (no host synchronization inside a batch), sizes changing from
// call to call (grids of 1 to 32 blocks), every third call in place; every output checked after its batch.
TEST(TpAllReduce, ManyCallsBackToBack) {
  REQUIRE_GPUS(2);
  constexpr int kSlots = 20;
  constexpr int64_t kSlot = 1 << 17;
  const int64_t sizes[] = {1, 4097, 131072, 8, 70001, 33, 4096, 12345};
  const DType t = DType::kBF16;
  const int eb = ElementBytes(t);
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init({0, 1}, kSlot, 2 * kSlots, kSlot * eb));
  std::mt19937 rng(3);
  std::vector<std::vector<std::vector<uint8_t>>> ins(kSlots);  // [slot][rank]
  for (int s = 0; s < kSlots; ++s) {
    for (int r = 0; r < 2; ++r) {
      ins[s].push_back(RandomBytes(t, kSlot, rng));
      g.Upload(r, g.buf(r, s), ins[s][r]);
    }
  }
  g.SyncAll();
  int calls = 0;
  for (int batch = 0; batch < 100; ++batch) {
    struct Call {
      int slot;
      int64_t n;
      bool in_place;
    };
    std::vector<Call> plan;
    for (int j = 0; j < kSlots; ++j, ++calls) {
      plan.push_back({(j + batch) % kSlots, sizes[(j + 3 * batch) % 8], calls % 3 == 0});
    }
    for (const Call& c : plan) {
      for (int r = 0; r < 2; ++r) {
        char* in = g.buf(r, c.slot);
        char* out = g.buf(r, kSlots + c.slot);
        if (c.in_place) {
          CUDA_OK(cudaSetDevice(g.rank(r).device));
          CUDA_OK(cudaMemcpyAsync(out, in, c.n * eb, cudaMemcpyDeviceToDevice, g.rank(r).stream));
          in = out;
        }
        g.Launch(r, t, in, out, c.n);
      }
    }
    // Each slot's output is last written by the slot's last call in this batch: check those.
    std::vector<int64_t> last_n(kSlots, 0);
    for (const Call& c : plan) last_n[c.slot] = c.n;
    for (int s = 0; s < kSlots; ++s) {
      if (last_n[s] == 0) continue;
      const int64_t n = last_n[s];
      const std::vector<uint8_t> want = Reference(t, ins[s], n);
      std::vector<std::vector<uint8_t>> got(2, std::vector<uint8_t>(n * eb));
      for (int r = 0; r < 2; ++r) g.Download(r, g.buf(r, kSlots + s), &got[r]);
      g.SyncAll();
      for (int r = 0; r < 2; ++r) {
        ASSERT_EQ(FirstDiff(t, got[r], want, n), -1) << "batch " << batch << " slot " << s << " n=" << n << " rank " << r;
      }
    }
  }
  EXPECT_EQ(calls, 2000);
  EXPECT_FALSE(g.ar().Failed());
}

// Each rank's stream captured into its own graph (several calls, one in place after a copy), the graphs replayed
// 100 times with eager calls between them, inputs changed every 10 replays; every output checked.
TEST(TpAllReduce, GraphReplaysBetweenEagerCalls) {
  REQUIRE_GPUS(2);
  const DType t = DType::kBF16;
  const int eb = ElementBytes(t);
  struct Call {
    int64_t n;
    bool in_place;
  };
  const std::vector<Call> graph_calls = {{4097, false}, {7, false}, {65536, true}, {300001, false}};
  constexpr int64_t kMax = 300001;
  const int kCalls = static_cast<int>(graph_calls.size());
  // Buffers: per graph call an input (i) and an output (kCalls + i); the eager call uses 2 kCalls and 2 kCalls + 1.
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init({0, 1}, kMax, 2 * kCalls + 2, kMax * eb));
  std::vector<cudaGraphExec_t> execs(2, nullptr);
  for (int r = 0; r < 2; ++r) {
    Rank& k = g.rank(r);
    CUDA_OK(cudaSetDevice(k.device));
    CUDA_OK(cudaStreamBeginCapture(k.stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < kCalls; ++i) {
      char* in = g.buf(r, i);
      char* out = g.buf(r, kCalls + i);
      if (graph_calls[i].in_place) {
        CUDA_OK(cudaMemcpyAsync(out, in, graph_calls[i].n * eb, cudaMemcpyDeviceToDevice, k.stream));
        in = out;
      }
      CUDA_OK(g.ar().Launch(r, t, in, out, graph_calls[i].n, k.stream));
    }
    cudaGraph_t graph = nullptr;
    CUDA_OK(cudaStreamEndCapture(k.stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&execs[r], graph, 0));
    CUDA_OK(cudaGraphDestroy(graph));
  }
  std::mt19937 rng(4);
  std::vector<std::vector<std::vector<uint8_t>>> ins(kCalls);  // [call][rank]
  for (int it = 0; it < 100; ++it) {
    if (it % 10 == 0) {
      for (int i = 0; i < kCalls; ++i) {
        ins[i].clear();
        for (int r = 0; r < 2; ++r) {
          ins[i].push_back(RandomBytes(t, graph_calls[i].n, rng));
          g.Upload(r, g.buf(r, i), ins[i][r]);
        }
      }
    }
    const int64_t eager_n = it % 2 == 0 ? 4096 * 3 + 1 : 9;
    std::vector<std::vector<uint8_t>> eager_in;
    for (int r = 0; r < 2; ++r) {
      eager_in.push_back(RandomBytes(t, eager_n, rng));
      g.Upload(r, g.buf(r, 2 * kCalls), eager_in[r]);
      CUDA_OK(cudaSetDevice(g.rank(r).device));
      for (int i = 0; i < kCalls; ++i) {
        CUDA_OK(cudaMemsetAsync(g.buf(r, kCalls + i), 0xff, graph_calls[i].n * eb, g.rank(r).stream));
      }
    }
    // eager, graph, eager: the counter carries across replays and eager calls.
    for (int r = 0; r < 2; ++r) g.Launch(r, t, g.buf(r, 2 * kCalls), g.buf(r, 2 * kCalls + 1), eager_n);
    for (int r = 0; r < 2; ++r) {
      CUDA_OK(cudaSetDevice(g.rank(r).device));
      CUDA_OK(cudaGraphLaunch(execs[r], g.rank(r).stream));
    }
    for (int r = 0; r < 2; ++r) g.Launch(r, t, g.buf(r, 2 * kCalls + 1), g.buf(r, 2 * kCalls + 1), eager_n);
    std::vector<std::vector<std::vector<uint8_t>>> got(kCalls + 1);
    for (int i = 0; i <= kCalls; ++i) {
      const int64_t n = i < kCalls ? graph_calls[i].n : eager_n;
      for (int r = 0; r < 2; ++r) {
        got[i].emplace_back(n * eb);
        g.Download(r, g.buf(r, i < kCalls ? kCalls + i : 2 * kCalls + 1), &got[i][r]);
      }
    }
    g.SyncAll();
    for (int i = 0; i < kCalls; ++i) {
      const std::vector<uint8_t> want = Reference(t, ins[i], graph_calls[i].n);
      for (int r = 0; r < 2; ++r) {
        ASSERT_EQ(FirstDiff(t, got[i][r], want, graph_calls[i].n), -1)
            << "replay " << it << " call " << i << " rank " << r;
      }
    }
    // The eager pair: sum, then the sum of the sums in place (each rank's input is the same first sum).
    const std::vector<uint8_t> first = Reference(t, eager_in, eager_n);
    const std::vector<uint8_t> want = Reference(t, {first, first}, eager_n);
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(FirstDiff(t, got[kCalls][r], want, eager_n), -1) << "replay " << it << " eager, rank " << r;
    }
  }
  EXPECT_FALSE(g.ar().Failed());
  for (int r = 0; r < 2; ++r) {
    CUDA_OK(cudaSetDevice(g.rank(r).device));
    CUDA_OK(cudaGraphExecDestroy(execs[r]));
  }
}

TEST(TpAllReduce, AbortReleasesALoneRank) {
  REQUIRE_GPUS(2);
  const DType t = DType::kF32;
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init({0, 1}, 1 << 16, 2, (1 << 16) * 4));
  EXPECT_FALSE(g.ar().Failed());
  // Rank 0 calls; rank 1 never does.
  g.Launch(0, t, g.buf(0, 0), g.buf(0, 1), 1 << 16);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CUDA_OK(cudaSetDevice(g.rank(0).device));
  EXPECT_EQ(cudaStreamQuery(g.rank(0).stream), cudaErrorNotReady) << "rank 0 finished without its peer";
  cudaGetLastError();
  const auto start = std::chrono::steady_clock::now();
  CUDA_OK(g.ar().Abort());
  CUDA_OK(cudaStreamSynchronize(g.rank(0).stream));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 5.0) << "Abort took " << seconds << " s to release the kernel";
  g.SyncAll();
  EXPECT_TRUE(g.ar().Failed());
  CUDA_OK(g.ar().Reset());
  EXPECT_FALSE(g.ar().Failed());
  std::mt19937 rng(5);
  ASSERT_NO_FATAL_FAILURE(CheckSum(g, t, 1 << 16, rng, false, {0, 0}));
  ASSERT_NO_FATAL_FAILURE(CheckSum(g, DType::kBF16, 4097, rng, true, {0, 0}));
}

TEST(TpAllReduce, CreateAndLaunchRefuseBadInput) {
  REQUIRE_GPUS(2);
  const auto refused = [](const std::vector<int>& devices, int64_t max_elements, const char* what) {
    std::unique_ptr<AllReduce> ar;
    std::string error;
    EXPECT_NE(AllReduce::Create(devices, max_elements, &ar, &error), cudaSuccess) << what;
    EXPECT_EQ(ar, nullptr) << what;
    EXPECT_FALSE(error.empty()) << what;
    std::printf("  %s: %s\n", what, error.c_str());
  };
  refused({0}, 1024, "one device");
  refused({0, 0}, 1024, "a duplicate device");
  refused({0, 1}, 0, "max_elements 0");
  refused({0, 1}, -5, "negative max_elements");
  refused({0, DeviceCount()}, 1024, "a device that does not exist");
  refused({0, 1, 2, 3, 4, 5, 6, 7, 8}, 1024, "nine devices");

  // Create and the destructor restore the caller's current device.
  {
    CUDA_OK(cudaSetDevice(1));
    std::unique_ptr<AllReduce> ar;
    std::string error;
    ASSERT_EQ(AllReduce::Create({0, 1}, 100, &ar, &error), cudaSuccess) << error;
    int current = -1;
    CUDA_OK(cudaGetDevice(&current));
    EXPECT_EQ(current, 1);
    CUDA_OK(cudaSetDevice(0));
    ar.reset();
    CUDA_OK(cudaGetDevice(&current));
    EXPECT_EQ(current, 0);
  }
  Group g;
  ASSERT_NO_FATAL_FAILURE(g.Init({0, 1}, 100, 2, 100 * 4));
  CUDA_OK(cudaSetDevice(0));
  const cudaStream_t s = g.rank(0).stream;
  EXPECT_EQ(g.ar().Launch(0, DType::kF32, g.buf(0, 0), g.buf(0, 1), 0, s), cudaErrorInvalidValue);
  EXPECT_EQ(g.ar().Launch(0, DType::kF32, g.buf(0, 0), g.buf(0, 1), 101, s), cudaErrorInvalidValue);
  EXPECT_EQ(g.ar().Launch(2, DType::kF32, g.buf(0, 0), g.buf(0, 1), 10, s), cudaErrorInvalidValue);
  EXPECT_EQ(g.ar().Launch(0, DType::kF32, nullptr, g.buf(0, 1), 10, s), cudaErrorInvalidValue);
  EXPECT_EQ(g.ar().Launch(1, DType::kF32, g.buf(1, 0), g.buf(1, 1), 10, g.rank(1).stream), cudaErrorInvalidDevice)
      << "device 0 is current, rank 1 is device 1";
  EXPECT_EQ(g.ar().size(), 2);
  EXPECT_EQ(g.ar().device(1), 1);
  EXPECT_EQ(g.ar().max_elements(), 100);
  // Nothing was launched: the group still matches calls.
  std::mt19937 rng(6);
  ASSERT_NO_FATAL_FAILURE(CheckSum(g, DType::kF32, 100, rng, false, {0, 0}));
}

}  // namespace
}  // namespace bigplan::tp
