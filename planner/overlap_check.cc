#include "planner/overlap_check.h"

#include <algorithm>
#include <map>
#include <utility>

namespace bigplan {
namespace {

std::string Where(schema::Pool pool, int32_t device) {
  if (pool == schema::Pool::PinnedHost) return "pinned pool";
  return device < 0 ? std::string("cpu arena") : "cuda:" + std::to_string(device) + " arena";
}

std::string Describe(const CheckedBuffer& b) {
  return "buffer \"" + b.name + "\" [" + std::to_string(b.offset) + ", " + std::to_string(b.offset + b.size) +
         ") steps " + std::to_string(b.first_step) + ".." + std::to_string(b.last_step);
}

Error Fail(const std::string& what) { return MakeError(ErrorCode::kInternal, "memory plan check: " + what); }

}  // namespace

Status CheckNoOverlaps(const std::vector<CheckedBuffer>& buffers, const std::vector<CheckedArena>& arenas,
                       uint64_t alignment) {
  // Pool identity: (pool kind, device), with the device ignored for the pinned pool.
  using Key = std::pair<int, int32_t>;
  auto key_of = [](schema::Pool pool, int32_t device) {
    return Key{static_cast<int>(pool), pool == schema::Pool::PinnedHost ? -1 : device};
  };
  std::map<Key, uint64_t> arena_size;
  for (const CheckedArena& a : arenas) {
    auto [it, inserted] = arena_size.emplace(key_of(a.pool, a.device), a.size);
    if (!inserted) return Fail("two arenas for the " + Where(a.pool, a.device));
  }
  std::map<Key, std::vector<const CheckedBuffer*>> by_pool;
  for (const CheckedBuffer& b : buffers) {
    auto it = arena_size.find(key_of(b.pool, b.device));
    if (it == arena_size.end()) return Fail(Describe(b) + " has no arena (" + Where(b.pool, b.device) + ")");
    if (b.first_step > b.last_step) return Fail(Describe(b) + " has first_step > last_step");
    if (alignment != 0 && b.offset % alignment != 0)
      return Fail(Describe(b) + " is not " + std::to_string(alignment) + "-byte aligned");
    const uint64_t end = b.offset + b.size;
    if (end < b.offset) return Fail(Describe(b) + " overflows 64 bits");
    if (end > it->second)
      return Fail(Describe(b) + " does not fit the " + Where(b.pool, b.device) + " of " +
                  std::to_string(it->second) + " bytes");
    if (b.size > 0) by_pool[key_of(b.pool, b.device)].push_back(&b);
  }
  for (auto& [key, list] : by_pool) {
    std::sort(list.begin(), list.end(),
              [](const CheckedBuffer* x, const CheckedBuffer* y) { return x->offset < y->offset; });
    for (size_t i = 0; i < list.size(); ++i) {
      const CheckedBuffer& a = *list[i];
      const uint64_t a_end = a.offset + a.size;
      for (size_t j = i + 1; j < list.size() && list[j]->offset < a_end; ++j) {
        const CheckedBuffer& b = *list[j];
        const bool live_together = !(a.last_step < b.first_step || b.last_step < a.first_step);
        if (live_together)
          return Fail(Describe(a) + " and " + Describe(b) + " share bytes in the " +
                      Where(a.pool, a.device) + " while both are live");
      }
    }
  }
  return Status::Ok();
}

Status CheckPlanMemory(const schema::Plan& plan) {
  std::vector<CheckedBuffer> buffers;
  std::vector<CheckedArena> arenas;
  if (plan.buffers()) {
    buffers.reserve(plan.buffers()->size());
    for (const schema::Buffer* b : *plan.buffers())
      buffers.push_back({b->name() ? b->name()->str() : std::string(), b->pool(), b->device(), b->offset(),
                         b->size_bytes(), b->first_step(), b->last_step()});
  }
  if (plan.arenas())
    for (const schema::Arena* a : *plan.arenas()) arenas.push_back({a->pool(), a->device(), a->size_bytes()});
  return CheckNoOverlaps(buffers, arenas);
}

}  // namespace bigplan
