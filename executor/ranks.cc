#include "executor/ranks.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

namespace bigplan::executor_internal {

class RankGroup::Impl {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;  // null without CUDA
  uint64_t commands = 0;                            // sent (rank 0) or received (others)
  std::map<std::pair<int, int>, uint64_t> sent, received;  // host tensors per (from, to)
};

namespace {

std::string Key(const char* what, int a, int b, uint64_t n) {
  return std::string(what) + "/" + std::to_string(a) + "/" + std::to_string(b) + "/" + std::to_string(n);
}

}  // namespace

RankGroup::RankGroup(RankOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

RankGroup::~RankGroup() {
  if (impl_ && impl_->nccl) {
    try {
      impl_->nccl->shutdown();
    } catch (const std::exception&) {
      // A peer that already went away: nothing left to release in order.
    }
  }
}

Result<std::unique_ptr<RankGroup>> RankGroup::Join(const RankOptions& options) {
  if (options.world_size < 2 || options.rank < 0 || options.rank >= options.world_size) {
    return MakeError(ErrorCode::kInvalidArgument, "rank " + std::to_string(options.rank) + " of " +
                                                      std::to_string(options.world_size) +
                                                      ": ranks need a world of at least 2 and 0 <= rank < world size");
  }
  const size_t colon = options.address.rfind(':');
  int port = -1;
  if (colon != std::string::npos && colon > 0) {
    char* end = nullptr;
    const long p = std::strtol(options.address.c_str() + colon + 1, &end, 10);
    if (end != nullptr && *end == '\0' && p > 0 && p < 65536) port = static_cast<int>(p);
  }
  if (port < 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "rendezvous address '" + options.address + "': expected host:port (rank 0 listens there)");
  }
  const std::string host = options.address.substr(0, colon);
  auto impl = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = options.rank == 0;
    so.numWorkers = options.world_size;
    so.waitWorkers = true;
    so.timeout = std::chrono::seconds(options.timeout_s);
    impl->store = c10::make_intrusive<c10d::TCPStore>(host, so);
    if (options.cuda) {
      // NVLink multicast (NVLS) stays off unless the caller set it: point-to-point copies do not use it, and it
      // reserves memory and fails where the fabric manager does not allow it.
      ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
      // c10d's flight recorder (a process-wide ring of every collective, for debugging hangs) stays off unless the
      // caller set its size: LibTorch 2.11's recorder adds a group's first entry to a std::map outside its lock, so
      // two groups of one process (ranks as threads) that record their first collectives at once corrupt the map
      // (a SIGSEGV in FlightRecorder::recordWithResetEnabled under ProcessGroupNCCL::initWork, or a hang), and a
      // decode step's all-reduces need none of its per-call bookkeeping. Read when the first group is made.
      if (std::getenv("TORCH_FR_BUFFER_SIZE") == nullptr && std::getenv("TORCH_NCCL_TRACE_BUFFER_SIZE") == nullptr) {
        ::setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
        ::setenv("TORCH_NCCL_TRACE_BUFFER_SIZE", "0", /*overwrite=*/0);
      }
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = std::chrono::milliseconds(std::chrono::seconds(options.timeout_s));
      impl->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("nccl", impl->store), options.rank, options.world_size, nccl_options);
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank " + std::to_string(options.rank) + " of " +
                                         std::to_string(options.world_size) + ": joining at " + options.address +
                                         " failed: " + e.what());
  }
  return std::unique_ptr<RankGroup>(new RankGroup(options, std::move(impl)));
}

Status RankGroup::Broadcast(const std::vector<int64_t>& command) {
  if (options_.rank != 0) return MakeError(ErrorCode::kInternal, "only rank 0 sends commands");
  std::vector<uint8_t> bytes(command.size() * sizeof(int64_t));
  if (!bytes.empty()) std::memcpy(bytes.data(), command.data(), bytes.size());
  const uint64_t n = impl_->commands++;
  try {
    for (int r = 1; r < options_.world_size; ++r) impl_->store->set(Key("cmd", 0, r, n), bytes);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "sending a command to the other ranks: " + std::string(e.what()));
  }
  return Status::Ok();
}

Status RankGroup::Finish() {
  if (options_.rank != 0) return MakeError(ErrorCode::kInternal, "only rank 0 finishes");
  const uint64_t n = impl_->commands++;
  try {
    std::vector<std::string> read;
    for (int r = 1; r < options_.world_size; ++r) {
      impl_->store->set(Key("cmd", 0, r, n), std::vector<uint8_t>{});
      read.push_back(Key("done", r, 0, 0));
    }
    // Live ranks wait in NextCommand and read it at once; a rank that went away must not hold rank 0 for long.
    impl_->store->wait(read, std::chrono::seconds(std::min(options_.timeout_s, 30)));
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "ending the other ranks' service: " + std::string(e.what()));
  }
  return Status::Ok();
}

Result<std::vector<int64_t>> RankGroup::NextCommand() {
  const std::string key = Key("cmd", 0, options_.rank, impl_->commands);
  std::vector<uint8_t> bytes;
  try {
    for (;;) {
      try {
        impl_->store->wait({key}, std::chrono::seconds(60));
        break;
      } catch (const c10::DistStoreError&) {
        // No command for a minute: an idle driver. Keep waiting (a lost connection is another error).
      }
    }
    bytes = impl_->store->get(key);
    impl_->store->deleteKey(key);
    if (bytes.empty()) impl_->store->set(Key("done", options_.rank, 0, 0), std::vector<uint8_t>{1});  // Finish read
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank " + std::to_string(options_.rank) +
                                         ": waiting for a command from rank 0 (" + options_.address +
                                         "): " + e.what());
  }
  ++impl_->commands;
  std::vector<int64_t> command(bytes.size() / sizeof(int64_t));
  if (!command.empty()) std::memcpy(command.data(), bytes.data(), command.size() * sizeof(int64_t));
  return command;
}

Status RankGroup::Send(const at::Tensor& t, int to) {
  try {
    if (t.is_cuda()) {
      if (!impl_->nccl) return MakeError(ErrorCode::kInternal, "a CUDA tensor in a group without NCCL");
      std::vector<at::Tensor> ts{t.contiguous()};
      impl_->nccl->send(ts, to, /*tag=*/0)->wait();
      return Status::Ok();
    }
    const at::Tensor c = t.contiguous();
    std::vector<uint8_t> bytes(c.nbytes());
    if (!bytes.empty()) std::memcpy(bytes.data(), c.data_ptr(), bytes.size());
    impl_->store->set(Key("t", options_.rank, to, impl_->sent[{options_.rank, to}]++), bytes);
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank " + std::to_string(options_.rank) + ": sending a tensor to rank " +
                                         std::to_string(to) + ": " + e.what());
  }
  return Status::Ok();
}

Status RankGroup::Recv(at::Tensor* t, int from) {
  try {
    if (t->is_cuda()) {
      if (!impl_->nccl) return MakeError(ErrorCode::kInternal, "a CUDA tensor in a group without NCCL");
      std::vector<at::Tensor> ts{*t};
      impl_->nccl->recv(ts, from, /*tag=*/0)->wait();
      return Status::Ok();
    }
    const std::string key = Key("t", from, options_.rank, impl_->received[{from, options_.rank}]++);
    std::vector<uint8_t> bytes = impl_->store->get(key);  // waits up to the store's timeout
    impl_->store->deleteKey(key);
    if (bytes.size() != t->nbytes() || !t->is_contiguous()) {
      return MakeError(ErrorCode::kIo, "rank " + std::to_string(options_.rank) + ": rank " + std::to_string(from) +
                                           " sent " + std::to_string(bytes.size()) + " bytes, expected " +
                                           std::to_string(t->nbytes()));
    }
    if (!bytes.empty()) std::memcpy(t->data_ptr(), bytes.data(), bytes.size());
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank " + std::to_string(options_.rank) + ": receiving a tensor from rank " +
                                         std::to_string(from) + ": " + e.what());
  }
  return Status::Ok();
}

Status RankGroup::AllReduce(at::Tensor* t) {
  try {
    if (t->is_cuda()) {
      if (!impl_->nccl) return MakeError(ErrorCode::kInternal, "a CUDA tensor in a group without NCCL");
      std::vector<at::Tensor> ts{*t};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      impl_->nccl->allreduce(ts, opts)->wait();
      return Status::Ok();
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank " + std::to_string(options_.rank) + ": all-reduce over NCCL: " + e.what());
  }
  // Host tensors: gathered at rank 0, added in rank order, sent back.
  if (options_.rank != 0) {
    BIGPLAN_RETURN_IF_ERROR(Send(*t, 0));
    return Recv(t, 0);
  }
  try {
    at::Tensor part = at::empty_like(*t);
    for (int r = 1; r < options_.world_size; ++r) {
      BIGPLAN_RETURN_IF_ERROR(Recv(&part, r));
      t->add_(part);
    }
  } catch (const std::exception& e) {
    return MakeError(ErrorCode::kIo, "rank 0: adding the ranks' parts: " + std::string(e.what()));
  }
  for (int r = 1; r < options_.world_size; ++r) BIGPLAN_RETURN_IF_ERROR(Send(*t, r));
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
