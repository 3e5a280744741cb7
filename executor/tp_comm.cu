// The one-shot all-reduce over peer memory (executor/tp_comm.h says what each function promises).
//
// Per device (rank d of N): recv[2 parities][N source ranks][slot] where rank s's call k stores its input into
// recv[k & 1][s] of every peer; ctrl = flags[kMaxBlocks][kMaxRanks] (flags[b][s] = the last epoch block b of rank s
// signalled to d), then the call counter, the done counter, the abort word and the failed word.
//
// One call of epoch e = counter + 1 (every rank counts its calls, so matching calls have the same epoch), grid G and
// the same partition of [0, n) into G slices on every rank (a function of n alone): block b
//   1. stores its slice of `in` into recv[e & 1][rank] of every peer (16-byte stores when in/out are aligned);
//   2. after __syncthreads, one thread per peer p: a system fence, then st.release.sys of e into p's flags[b][rank];
//   3. the same threads spin (ld.acquire.sys) until flags[b][p] >= e (a peer may be one call ahead and have written
//      e + 1 already), the abort or failed word is set, or kTimeoutSeconds pass (then they set the failed word);
//      __syncthreads;
//   4. out[i] = sum over r = 0..N-1 of (r == rank ? in[i] : recv[e & 1][r][i]) in float32, rounded once; the peers'
//      slots are read with ld.global.cg (L2, never a stale L1 line);
//   5. counts itself done; the last block resets the done counter and stores counter = e (every block read the counter
//      at its start, before its own increment of the done counter, so before the last block stores it).
//
// Why two parities are enough: rank d writes recv[e & 1] of peer p in call e. Peer p last read that parity in its
// call e - 2. Rank d entered call e only after its call e - 1 finished, and a block of that call finished waiting
// only after peer p had signalled e - 1 (or e), which p's call e - 1 does only after its call e - 2 has finished
// (stream order: the whole kernel). So p is done reading parity e & 1 before d writes it again. By the same argument
// a peer is at most one call ahead, so flags hold at most e + 1 while d waits for e, and ">= e" (in wrapping
// 32-bit arithmetic) is the right test. After waiting, blocks also store e into the peers' flags[j][rank] for
// j = b + G, b + 2G, ... < kMaxBlocks (plain stores: no call waits on those in this epoch, and a later call waits for
// a larger epoch), so a flag that a run of small grids leaves unused never falls 2^31 epochs behind, where the
// wrapping comparison would go wrong.
#include "executor/tp_comm.h"
#include "executor/pdl.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <set>

namespace bigplan::tp {
namespace {

constexpr int kThreads = 512;
constexpr int kFlagWords = kMaxBlocks * kMaxRanks;
constexpr int kCounter = kFlagWords;
constexpr int kDone = kFlagWords + 1;
constexpr int kAbort = kFlagWords + 2;
constexpr int kFailed = kFlagWords + 3;
constexpr int kCtrlWords = kFlagWords + 4;
constexpr uint64_t kTimeoutNs = static_cast<uint64_t>(kTimeoutSeconds) * 1000000000ull;

struct Params {
  char* recv[kMaxRanks];       // device p's receive buffers (p == rank: this device's)
  uint32_t* ctrl[kMaxRanks];   // device p's control words
  const void* in;
  void* out;
  int64_t n;
  int64_t slot_bytes;
  int rank;
  int nranks;
  int vec;  // in and out are 16-byte aligned
};

int Grid(int64_t n) {
  return static_cast<int>(std::min<int64_t>(kMaxBlocks, (n + kElementsPerBlock - 1) / kElementsPerBlock));
}

// ---- elements: Bits is the element's storage, F reads it as float, Store rounds a float to it ----

template <typename T>
struct Elem;
template <>
struct Elem<__nv_bfloat16> {
  using Bits = unsigned short;
  static __device__ __forceinline__ float F(Bits b) { return __bfloat162float(__ushort_as_bfloat16(b)); }
  static __device__ __forceinline__ Bits Round(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
};
template <>
struct Elem<__half> {
  using Bits = unsigned short;
  static __device__ __forceinline__ float F(Bits b) { return __half2float(__ushort_as_half(b)); }
  static __device__ __forceinline__ Bits Round(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
template <>
struct Elem<float> {
  using Bits = unsigned int;
  static __device__ __forceinline__ float F(Bits b) { return __uint_as_float(b); }
  static __device__ __forceinline__ Bits Round(float v) { return __float_as_uint(v); }
};

__device__ __forceinline__ void StoreRelease(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t LoadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint32_t LoadVolatile(const uint32_t* p) {
  return *reinterpret_cast<const volatile uint32_t*>(p);
}
__device__ __forceinline__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint64_t GlobalTimer() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) AllReduceKernel(Params p) {
  using E = Elem<T>;
  using Bits = typename E::Bits;
  constexpr int V = 16 / static_cast<int>(sizeof(Bits));  // elements per 16-byte vector
  __shared__ uint32_t epoch_shared;
  pdl::PdlBegin();  // executor/pdl.cuh: after the kernels before it (the input, the last call's counters)
  const int tid = threadIdx.x, b = blockIdx.x, G = gridDim.x, N = p.nranks, rank = p.rank;
  uint32_t* const ctrl = p.ctrl[rank];

  if (tid == 0) epoch_shared = LoadVolatile(ctrl + kCounter) + 1u;
  __syncthreads();
  const uint32_t epoch = epoch_shared;
  const int parity = static_cast<int>(epoch & 1u);

  // This block's slice: whole vectors [c0, c1) (by vector index), and for the last block the scalar tail
  // [chunks * V, n). A function of n and G only, so block b covers the same elements on every rank.
  const int64_t chunks = p.n / V;
  const int64_t per = (chunks + G - 1) / G;
  const int64_t c0 = Min64(chunks, per * b), c1 = Min64(chunks, per * (b + 1));
  const int64_t e1 = b == G - 1 ? p.n : c1 * V;
  // Elements moved one at a time: the tail, or the whole slice when the pointers are not 16-byte aligned.
  const int64_t s0 = p.vec ? c1 * V : c0 * V;

  const Bits* in = static_cast<const Bits*>(p.in);
  Bits* out = static_cast<Bits*>(p.out);
  const int64_t own_slot = (static_cast<int64_t>(parity) * N + rank) * p.slot_bytes;

  // 1. Push this block's slice of `in` into every peer's recv[parity][rank].
  if (p.vec) {
    for (int64_t c = c0 + tid; c < c1; c += kThreads) {
      const uint4 v = reinterpret_cast<const uint4*>(in)[c];
      for (int q = 0; q < N; ++q) {
        if (q != rank) reinterpret_cast<uint4*>(p.recv[q] + own_slot)[c] = v;
      }
    }
  }
  for (int64_t i = s0 + tid; i < e1; i += kThreads) {
    const Bits v = in[i];
    for (int q = 0; q < N; ++q) {
      if (q != rank) reinterpret_cast<Bits*>(p.recv[q] + own_slot)[i] = v;
    }
  }
  __syncthreads();

  // 2. Signal each peer (thread q for peer q).
  if (tid < N && tid != rank) {
    __threadfence_system();
    StoreRelease(p.ctrl[tid] + b * kMaxRanks + rank, epoch);
  }

  // 3. Wait for each peer's signal of this block (thread q for peer q).
  if (tid < N && tid != rank) {
    const uint32_t* flag = ctrl + b * kMaxRanks + tid;
    const uint64_t start = GlobalTimer();
    while (static_cast<int32_t>(LoadAcquire(flag) - epoch) < 0) {
      if (LoadVolatile(ctrl + kAbort) != 0u || LoadVolatile(ctrl + kFailed) != 0u) {
        *reinterpret_cast<volatile uint32_t*>(ctrl + kFailed) = 1u;
        break;
      }
      if (GlobalTimer() - start > kTimeoutNs) {
        *reinterpret_cast<volatile uint32_t*>(ctrl + kFailed) = 1u;
        break;
      }
    }
    // Refresh the peer's flags of blocks beyond this grid (nobody waits on them in this call; plain stores).
    for (int j = b + G; j < kMaxBlocks; j += G) {
      *reinterpret_cast<volatile uint32_t*>(p.ctrl[tid] + j * kMaxRanks + rank) = epoch;
    }
  }
  __syncthreads();

  // 4. Sum in rank order, rounded once.
  if (p.vec) {
    for (int64_t c = c0 + tid; c < c1; c += kThreads) {
      uint4 v[kMaxRanks];
#pragma unroll
      for (int r = 0; r < kMaxRanks; ++r) {
        if (r < N) {
          v[r] = r == rank ? reinterpret_cast<const uint4*>(in)[c]
                           : __ldcg(reinterpret_cast<const uint4*>(p.recv[rank] +
                                                                   (static_cast<int64_t>(parity) * N + r) * p.slot_bytes) +
                                    c);
        }
      }
      float acc[V];
      {
        const Bits* e = reinterpret_cast<const Bits*>(&v[0]);
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] = E::F(e[k]);
      }
#pragma unroll
      for (int r = 1; r < kMaxRanks; ++r) {
        if (r < N) {
          const Bits* e = reinterpret_cast<const Bits*>(&v[r]);
#pragma unroll
          for (int k = 0; k < V; ++k) acc[k] += E::F(e[k]);
        }
      }
      uint4 o;
      Bits* ob = reinterpret_cast<Bits*>(&o);
#pragma unroll
      for (int k = 0; k < V; ++k) ob[k] = E::Round(acc[k]);
      reinterpret_cast<uint4*>(out)[c] = o;
    }
  }
  for (int64_t i = s0 + tid; i < e1; i += kThreads) {
    Bits v[kMaxRanks];
#pragma unroll
    for (int r = 0; r < kMaxRanks; ++r) {
      if (r < N) {
        v[r] = r == rank ? in[i]
                         : __ldcg(reinterpret_cast<const Bits*>(p.recv[rank] +
                                                                (static_cast<int64_t>(parity) * N + r) * p.slot_bytes) +
                                  i);
      }
    }
    float acc = E::F(v[0]);
#pragma unroll
    for (int r = 1; r < kMaxRanks; ++r) {
      if (r < N) acc += E::F(v[r]);
    }
    out[i] = E::Round(acc);
  }

  // 5. The last block to finish publishes the epoch for the next call.
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    if (atomicAdd(ctrl + kDone, 1u) == static_cast<uint32_t>(G - 1)) {
      *reinterpret_cast<volatile uint32_t*>(ctrl + kDone) = 0u;
      *reinterpret_cast<volatile uint32_t*>(ctrl + kCounter) = epoch;
      __threadfence();
    }
  }
}

// Sets a device current for the scope's lifetime, then restores the one current at its start.
class DeviceScope {
 public:
  DeviceScope() { ok_ = cudaGetDevice(&saved_) == cudaSuccess; }
  ~DeviceScope() {
    if (ok_) cudaSetDevice(saved_);
  }
  bool ok() const { return ok_; }

 private:
  int saved_ = 0;
  bool ok_ = false;
};

cudaError_t Fail(cudaError_t err, const std::string& what, std::string* error) {
  if (error != nullptr) {
    *error = what;
    if (err != cudaErrorInvalidValue || what.empty()) *error += std::string(": ") + cudaGetErrorString(err);
  }
  return err;
}

}  // namespace

int ElementBytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

cudaError_t AllReduce::Create(const std::vector<int>& devices, int64_t max_elements, std::unique_ptr<AllReduce>* out,
                              std::string* error) {
  const int n = static_cast<int>(devices.size());
  if (out == nullptr) return Fail(cudaErrorInvalidValue, "tp::AllReduce: out is null", error);
  if (n < 2 || n > kMaxRanks) {
    return Fail(cudaErrorInvalidValue,
                "tp::AllReduce: " + std::to_string(n) + " devices given; a group takes 2 to " +
                    std::to_string(kMaxRanks),
                error);
  }
  if (std::set<int>(devices.begin(), devices.end()).size() != devices.size()) {
    return Fail(cudaErrorInvalidValue, "tp::AllReduce: a device appears twice in the group", error);
  }
  if (max_elements <= 0 || max_elements > (int64_t{1} << 40)) {
    return Fail(cudaErrorInvalidValue,
                "tp::AllReduce: max_elements " + std::to_string(max_elements) + " is not in [1, 2^40]", error);
  }
  int count = 0;
  if (const cudaError_t err = cudaGetDeviceCount(&count); err != cudaSuccess) {
    return Fail(err, "tp::AllReduce: cudaGetDeviceCount", error);
  }
  for (int d : devices) {
    if (d < 0 || d >= count) {
      return Fail(cudaErrorInvalidDevice,
                  "tp::AllReduce: device " + std::to_string(d) + " does not exist (" + std::to_string(count) +
                      " CUDA devices)",
                  error);
    }
  }
  DeviceScope scope;
  if (!scope.ok()) return Fail(cudaGetLastError(), "tp::AllReduce: cudaGetDevice", error);

  // Peer access from every device to every other.
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i == j) continue;
      int can = 0;
      if (const cudaError_t err = cudaDeviceCanAccessPeer(&can, devices[i], devices[j]); err != cudaSuccess) {
        return Fail(err, "tp::AllReduce: cudaDeviceCanAccessPeer(" + std::to_string(devices[i]) + ", " +
                             std::to_string(devices[j]) + ")",
                    error);
      }
      if (can == 0) {
        return Fail(cudaErrorPeerAccessUnsupported,
                    "tp::AllReduce: device " + std::to_string(devices[i]) + " cannot access device " +
                        std::to_string(devices[j]) + "'s memory (no peer access between them)",
                    error);
      }
      if (const cudaError_t err = cudaSetDevice(devices[i]); err != cudaSuccess) {
        return Fail(err, "tp::AllReduce: cudaSetDevice(" + std::to_string(devices[i]) + ")", error);
      }
      const cudaError_t err = cudaDeviceEnablePeerAccess(devices[j], 0);
      if (err == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();  // clear it: already enabled is what we want
      } else if (err != cudaSuccess) {
        return Fail(err, "tp::AllReduce: enabling peer access from device " + std::to_string(devices[i]) +
                             " to device " + std::to_string(devices[j]),
                    error);
      }
    }
  }

  std::unique_ptr<AllReduce> ar(new AllReduce());
  ar->devices_ = devices;
  ar->max_elements_ = max_elements;
  ar->slot_bytes_ = (max_elements * 4 + 15) / 16 * 16;
  ar->per_.resize(n);
  const auto fail = [&](cudaError_t err, const std::string& what) {
    ar->Free();
    return Fail(err, "tp::AllReduce: " + what, error);
  };
  if (const cudaError_t err = cudaMallocHost(&ar->host_words_, 2 * sizeof(uint32_t)); err != cudaSuccess) {
    ar->host_words_ = nullptr;
    return fail(err, "cudaMallocHost of 8 bytes");
  }
  ar->host_words_[0] = 1u;
  ar->host_words_[1] = 0u;
  for (int r = 0; r < n; ++r) {
    PerDevice& pd = ar->per_[r];
    const std::string dev = "device " + std::to_string(devices[r]);
    if (const cudaError_t err = cudaSetDevice(devices[r]); err != cudaSuccess) return fail(err, "cudaSetDevice " + dev);
    const int64_t recv_bytes = 2 * static_cast<int64_t>(n) * ar->slot_bytes_;
    if (const cudaError_t err = cudaMalloc(&pd.recv, recv_bytes); err != cudaSuccess) {
      pd.recv = nullptr;
      return fail(err, "cudaMalloc of " + std::to_string(recv_bytes) + " bytes of receive buffers on " + dev);
    }
    if (const cudaError_t err = cudaMalloc(&pd.ctrl, kCtrlWords * sizeof(uint32_t)); err != cudaSuccess) {
      pd.ctrl = nullptr;
      return fail(err, "cudaMalloc of the control words on " + dev);
    }
    if (const cudaError_t err = cudaStreamCreateWithFlags(&pd.side, cudaStreamNonBlocking); err != cudaSuccess) {
      pd.side = nullptr;
      return fail(err, "cudaStreamCreateWithFlags on " + dev);
    }
    if (const cudaError_t err = cudaMemsetAsync(pd.ctrl, 0, kCtrlWords * sizeof(uint32_t), pd.side);
        err != cudaSuccess) {
      return fail(err, "zeroing the control words on " + dev);
    }
    if (const cudaError_t err = cudaStreamSynchronize(pd.side); err != cudaSuccess) {
      return fail(err, "zeroing the control words on " + dev);
    }
  }
  *out = std::move(ar);
  return cudaSuccess;
}

void AllReduce::Free() {
  DeviceScope scope;
  for (size_t r = 0; r < per_.size(); ++r) {
    PerDevice& pd = per_[r];
    if (pd.recv == nullptr && pd.ctrl == nullptr && pd.side == nullptr) continue;
    cudaSetDevice(devices_[r]);
    if (pd.side != nullptr) cudaStreamDestroy(pd.side);
    if (pd.ctrl != nullptr) cudaFree(pd.ctrl);
    if (pd.recv != nullptr) cudaFree(pd.recv);
    pd = PerDevice{};
  }
  if (host_words_ != nullptr) cudaFreeHost(host_words_);
  host_words_ = nullptr;
}

AllReduce::~AllReduce() { Free(); }

cudaError_t AllReduce::Launch(int rank, DType dtype, const void* in, void* out, int64_t n, cudaStream_t stream) {
  if (rank < 0 || rank >= size() || n <= 0 || n > max_elements_ || in == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (dtype != DType::kBF16 && dtype != DType::kF16 && dtype != DType::kF32) return cudaErrorInvalidValue;
  int current = -1;
  if (const cudaError_t err = cudaGetDevice(&current); err != cudaSuccess) return err;
  if (current != devices_[rank]) return cudaErrorInvalidDevice;
  Params p{};
  for (int r = 0; r < size(); ++r) {
    p.recv[r] = per_[r].recv;
    p.ctrl[r] = per_[r].ctrl;
  }
  p.in = in;
  p.out = out;
  p.n = n;
  p.slot_bytes = slot_bytes_;
  p.rank = rank;
  p.nranks = size();
  p.vec = ((reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out)) & 15u) == 0 ? 1 : 0;
  const dim3 grid(static_cast<unsigned>(Grid(n)));
  switch (dtype) {
    case DType::kBF16: pdl::LaunchDependent(AllReduceKernel<__nv_bfloat16>, grid, dim3(kThreads), stream, p); break;
    case DType::kF16: pdl::LaunchDependent(AllReduceKernel<__half>, grid, dim3(kThreads), stream, p); break;
    case DType::kF32: pdl::LaunchDependent(AllReduceKernel<float>, grid, dim3(kThreads), stream, p); break;
  }
  return cudaGetLastError();
}

cudaError_t AllReduce::Abort() {
  aborted_ = true;
  DeviceScope scope;
  cudaError_t first = cudaSuccess;
  for (int r = 0; r < size(); ++r) {
    cudaError_t err = cudaSetDevice(devices_[r]);
    if (err == cudaSuccess) {
      err = cudaMemcpyAsync(per_[r].ctrl + kAbort, &host_words_[0], sizeof(uint32_t), cudaMemcpyHostToDevice,
                            per_[r].side);
    }
    if (err != cudaSuccess && first == cudaSuccess) first = err;  // still release the other devices
  }
  return first;
}

cudaError_t AllReduce::Reset() {
  DeviceScope scope;
  for (int r = 0; r < size(); ++r) {
    if (const cudaError_t err = cudaSetDevice(devices_[r]); err != cudaSuccess) return err;
    if (const cudaError_t err = cudaMemsetAsync(per_[r].ctrl, 0, kCtrlWords * sizeof(uint32_t), per_[r].side);
        err != cudaSuccess) {
      return err;
    }
    if (const cudaError_t err = cudaStreamSynchronize(per_[r].side); err != cudaSuccess) return err;
  }
  aborted_ = false;
  return cudaSuccess;
}

bool AllReduce::Failed() {
  if (aborted_) return true;
  DeviceScope scope;
  for (int r = 0; r < size(); ++r) {
    if (cudaSetDevice(devices_[r]) != cudaSuccess) return true;
    host_words_[1] = 0u;
    if (cudaMemcpyAsync(&host_words_[1], per_[r].ctrl + kFailed, sizeof(uint32_t), cudaMemcpyDeviceToHost,
                        per_[r].side) != cudaSuccess ||
        cudaStreamSynchronize(per_[r].side) != cudaSuccess) {
      return true;
    }
    if (host_words_[1] != 0u) return true;
  }
  return false;
}

}  // namespace bigplan::tp
