// A tensor-parallel all-reduce over the GPUs of one process (CUDA C++ built by nvcc, executor/BUILD): a one-shot
// "push" all-reduce over peer (NVLink) memory, as in vLLM's and TensorRT-LLM's custom all-reduce. Each rank's kernel
// stores its input into a receive buffer of every peer, raises one flag per peer and block, waits for the peers'
// flags, and sums the N inputs locally in rank order, so every rank gets the same bits.
//
// This header is plain C++ (no LibTorch). No function synchronizes the host except where its comment says so; every
// CUDA call is checked and its error returned. Pointers are device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bigplan::tp {

enum class DType : int { kBF16 = 0, kF16 = 1, kF32 = 2 };

// The most ranks a group takes.
inline constexpr int kMaxRanks = 8;
// The most thread blocks one call's kernel uses (the grid is min(kMaxBlocks, ceil(n / kElementsPerBlock))).
inline constexpr int kMaxBlocks = 32;
inline constexpr int64_t kElementsPerBlock = 4096;
// A kernel that has waited this long for a peer gives up: it sets the failed word (Failed()) and writes garbage.
inline constexpr int kTimeoutSeconds = 20;

// The bytes of one element of `dtype` (2 or 4).
int ElementBytes(DType dtype);

class AllReduce {
 public:
  // A group over `devices` (CUDA ordinals, 2 to kMaxRanks of them, distinct, each < the device count); rank r is
  // devices[r]. `max_elements` (> 0) is the most elements one call reduces. Enables peer access from every device to
  // every other (already enabled is fine; a pair without peer access is an error naming the two devices) and
  // allocates on each device its receive buffers (2 parities x N source ranks x max_elements x 4 bytes), its flags
  // [kMaxBlocks][kMaxRanks], call and done counters and abort and failed words (all zeroed), a non-blocking stream
  // of its own (for Abort, Reset and Failed) and two pinned host words. On success *out holds the group. On failure
  // returns the CUDA error (cudaErrorInvalidValue for bad arguments, cudaErrorInvalidDevice for a bad ordinal,
  // cudaErrorPeerAccessUnsupported for a pair without peer access), writes a message into *error, leaves *out
  // untouched and frees whatever it had allocated (peer access it enabled stays enabled). The caller's current
  // device is restored either way.
  static cudaError_t Create(const std::vector<int>& devices, int64_t max_elements, std::unique_ptr<AllReduce>* out,
                            std::string* error);

  // Frees every buffer, stream and host word, setting each device current in turn and restoring the caller's
  // current device. No kernel of the group may still be running (synchronize every device's streams first, after
  // an Abort if a pass was abandoned). Peer access stays enabled.
  ~AllReduce();

  AllReduce(const AllReduce&) = delete;
  AllReduce& operator=(const AllReduce&) = delete;

  int size() const { return static_cast<int>(devices_.size()); }
  int device(int rank) const { return devices_[rank]; }
  int64_t max_elements() const { return max_elements_; }

  // out[i] = the sum over ranks r = 0, 1, ..., N-1, in that order, of rank r's in[i], accumulated in float32
  // (starting from rank 0's value) and rounded once to `dtype` (round to nearest even), for i < n. Every rank gets
  // bit-identical results. Launches one kernel on `stream`, a stream of device(rank), which must be the current
  // device (else cudaErrorInvalidDevice without launching); allocates nothing and never synchronizes the host.
  // Every rank must make the same sequence of calls (same n and dtype): calls are matched by their order, and a
  // rank's call returns (on the GPU) only once every peer has made its matching call. A rank's calls must run in
  // the order they were made (one stream, or streams ordered by events). in/out are device pointers on
  // device(rank) and may alias exactly (in == out; no other overlap); 16-byte aligned pointers take the vector path.
  // 0 < n <= max_elements, 0 <= rank < size(), in and out not null; else cudaErrorInvalidValue without launching.
  // Works inside CUDA stream capture: each rank's stream captured into its own graph, the graphs replayed any number
  // of times and interleaved with eager calls, as long as every rank runs the same sequence of calls. The ranks'
  // kernels wait for one another, so each rank's call must be able to run while the others' spin (their streams
  // must not wait on each other in between, and each needs its blocks resident next to whatever else runs).
  cudaError_t Launch(int rank, DType dtype, const void* in, void* out, int64_t n, cudaStream_t stream);

  // For a pass abandoned mid-way (a rank that will never issue its call): releases every kernel of this group that
  // is spinning, and every later one until Reset, from the host without waiting for them (a cudaMemcpyAsync of the
  // abort word into each device's memory on the group's private non-blocking stream of that device). Released
  // kernels write garbage outputs and set the failed word. Restores the caller's current device.
  cudaError_t Abort();

  // After Abort or a timeout, once every device is synchronized (no kernel of the group running or queued): zeroes
  // the flags, counters, abort and failed words on every device (synchronous), so calls match again from the next
  // one, which every rank must then issue. Restores the caller's current device.
  cudaError_t Reset();

  // Whether a kernel gave up waiting (spun longer than kTimeoutSeconds, read from %globaltimer) or was released by
  // Abort, or Abort was called, since the last Reset (or Create). Reads a word from each device (synchronous: call it
  // after synchronizing the group's streams). A read that fails counts as failed. Once a kernel of a device has given
  // up, that device's later calls pass through without waiting (garbage outputs) until Reset.
  bool Failed();

 private:
  AllReduce() = default;
  void Free();

  std::vector<int> devices_;
  int64_t max_elements_ = 0;
  int64_t slot_bytes_ = 0;  // bytes of one (parity, source) receive slot, a multiple of 16
  struct PerDevice {
    char* recv = nullptr;       // [2][N][slot_bytes_]
    uint32_t* ctrl = nullptr;   // flags [kMaxBlocks][kMaxRanks], then counter, done, abort, failed
    cudaStream_t side = nullptr;  // private non-blocking stream (Abort, Reset)
  };
  std::vector<PerDevice> per_;
  uint32_t* host_words_ = nullptr;  // pinned host words: [0] = 1 (Abort's source), [1] Failed's read
  bool aborted_ = false;
};

}  // namespace bigplan::tp
