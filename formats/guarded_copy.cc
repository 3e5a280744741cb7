#include "formats/guarded_copy.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

namespace bigplan {
namespace {

constexpr int kMaxRegions = 4096;

struct Region {
  std::atomic<uintptr_t> begin{0};  // 0: free slot
  std::atomic<uintptr_t> end{0};
  std::atomic<uintptr_t> first_bad{0};  // fault address + 1, or 0 while intact
};

Region g_regions[kMaxRegions];
std::mutex g_names_mu;  // guards g_names and slot allocation (never taken in the signal handler)
std::vector<std::string>* g_names = new std::vector<std::string>(kMaxRegions);

struct CopyGuard {
  sigjmp_buf env;
  uintptr_t begin = 0, end = 0;
  volatile sig_atomic_t active = 0;
  uintptr_t fault = 0;
};
// initial-exec: the handler must not allocate TLS lazily.
__attribute__((tls_model("initial-exec"))) thread_local CopyGuard* tls_guard = nullptr;

struct sigaction g_previous;
std::once_flag g_install_once;

void ChainToPrevious(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  // Default action: restore it and return; the faulting instruction runs again and the process dies as it would
  // have without us (with the right signal for a core dump).
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  CopyGuard* g = tls_guard;
  if (g != nullptr && g->active && addr >= g->begin && addr < g->end) {
    g->active = 0;
    g->fault = addr;
    siglongjmp(g->env, 1);
  }
  for (Region& r : g_regions) {
    const uintptr_t b = r.begin.load(std::memory_order_acquire);
    if (b == 0 || addr < b || addr >= r.end.load(std::memory_order_acquire)) continue;
    const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    void* at = reinterpret_cast<void*>(addr & ~(page - 1));
    if (::mmap(at, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
      uintptr_t expected = 0;
      r.first_bad.compare_exchange_strong(expected, addr + 1);
      return;  // the read is retried and finds zeros
    }
    break;
  }
  ChainToPrevious(sig, info, context);
}

void InstallHandler() {
  std::call_once(g_install_once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}

Region* RegionContaining(uintptr_t addr, int* id) {
  for (int i = 0; i < kMaxRegions; ++i) {
    const uintptr_t b = g_regions[i].begin.load(std::memory_order_acquire);
    if (b != 0 && addr >= b && addr < g_regions[i].end.load(std::memory_order_acquire)) {
      if (id != nullptr) *id = i;
      return &g_regions[i];
    }
  }
  return nullptr;
}

Error Damaged(int id) {
  const Region& r = g_regions[id];
  const uintptr_t bad = r.first_bad.load() - 1;
  std::string name;
  {
    std::lock_guard<std::mutex> lock(g_names_mu);
    name = (*g_names)[id];
  }
  return MakeError(ErrorCode::kIo, name + ": the file shrank while it was in use (byte " +
                                       std::to_string(bad - r.begin.load()) +
                                       " of its mapping could not be read); everything computed from it since is "
                                       "invalid");
}

}  // namespace

Status GuardedCopy(void* dst, const void* src, size_t n, const std::string& file_name) {
  if (n == 0) return Status::Ok();
  InstallHandler();
  CopyGuard guard;
  guard.begin = reinterpret_cast<uintptr_t>(src);
  guard.end = guard.begin + n;
  CopyGuard* const outer = tls_guard;
  tls_guard = &guard;
  // savemask = 1: the jump out of the handler restores the signal mask (SIGBUS is blocked inside the handler).
  if (sigsetjmp(guard.env, 1) == 0) {
    guard.active = 1;
    std::memcpy(dst, src, n);
    guard.active = 0;
    tls_guard = outer;
    return Status::Ok();
  }
  tls_guard = outer;
  const uintptr_t fault = guard.fault;
  int id = -1;
  if (Region* r = RegionContaining(fault, &id)) {
    uintptr_t expected = 0;
    r->first_bad.compare_exchange_strong(expected, fault + 1);
  }
  return MakeError(ErrorCode::kIo, file_name + ": the file shrank while it was being read: no data at byte " +
                                       std::to_string(fault - guard.begin) + " of a " + std::to_string(n) +
                                       "-byte read (truncated or rewritten since it was opened)");
}

Status GuardedCopyToBounce(const void* src, size_t n, const std::string& file_name, const uint8_t** out) {
  thread_local std::vector<uint8_t> bounce;
  if (bounce.size() < n) bounce.resize(n);
  BIGPLAN_RETURN_IF_ERROR(GuardedCopy(bounce.data(), src, n, file_name));
  *out = bounce.data();
  return Status::Ok();
}

int RegisterMappedRegion(const void* base, size_t size, const std::string& file_name) {
  if (base == nullptr || size == 0) return -1;
  InstallHandler();
  std::lock_guard<std::mutex> lock(g_names_mu);
  for (int i = 0; i < kMaxRegions; ++i) {
    Region& r = g_regions[i];
    if (r.begin.load(std::memory_order_relaxed) != 0) continue;
    (*g_names)[i] = file_name;
    r.first_bad.store(0);
    r.end.store(reinterpret_cast<uintptr_t>(base) + size, std::memory_order_release);
    r.begin.store(reinterpret_cast<uintptr_t>(base), std::memory_order_release);
    return i;
  }
  return -1;
}

void UnregisterMappedRegion(int id) {
  if (id < 0 || id >= kMaxRegions) return;
  std::lock_guard<std::mutex> lock(g_names_mu);
  g_regions[id].begin.store(0, std::memory_order_release);
  g_regions[id].end.store(0, std::memory_order_release);
  g_regions[id].first_bad.store(0);
  (*g_names)[id].clear();
}

Status CheckMappedRegion(int id) {
  if (id < 0 || id >= kMaxRegions) return Status::Ok();
  if (g_regions[id].begin.load() != 0 && g_regions[id].first_bad.load() != 0) return Damaged(id);
  return Status::Ok();
}

Status CheckMappedRegions() {
  for (int i = 0; i < kMaxRegions; ++i) {
    if (g_regions[i].begin.load() != 0 && g_regions[i].first_bad.load() != 0) return Damaged(i);
  }
  return Status::Ok();
}

}  // namespace bigplan
