// libFuzzer target: the plan reader. Any bytes must either be refused by VerifyPlan with an error, or be a plan
// whose every field can then be walked (as the executor and `inspect` do) without reading out of bounds.
#include <cstddef>
#include <cstdint>

#include "planner/overlap_check.h"
#include "schema/plan_io.h"

namespace {

template <typename T>
uint32_t Len(const flatbuffers::Vector<T>* v) {
  return v ? v->size() : 0;
}

size_t Touch(const flatbuffers::String* s) { return s ? s->size() : 0; }

volatile size_t g_sink;  // keeps the reads below from being optimized away

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto verified = bigplan::VerifyPlan(data, size, "fuzz");
  if (!verified.ok()) return 0;
  const bigplan::schema::Plan& p = **verified;
  size_t sink = 0;
  sink += Touch(p.generator()) + Touch(p.strategy()) + Touch(p.model_name()) + Touch(p.model_digest());
  sink += Touch(p.config()->architecture()) + Touch(p.config()->config_json()) + Len(p.config()->eos_token_ids());
  for (uint32_t i = 0; i < Len(p.checkpoint()->shards()); ++i) sink += Touch(p.checkpoint()->shards()->Get(i)->file_name());
  for (uint32_t i = 0; i < Len(p.tensors()); ++i) {
    const auto* t = p.tensors()->Get(i);
    sink += Touch(t->name()) + Len(t->shape()) + t->shard();
  }
  for (uint32_t i = 0; i < Len(p.blocks()); ++i) {
    const auto* b = p.blocks()->Get(i);
    sink += Touch(b->name()) + Touch(b->kind()) + Touch(b->prefix());
    for (uint32_t w = 0; w < Len(b->weights()); ++w) {
      const auto* wt = b->weights()->Get(w);
      sink += Touch(p.tensors()->Get(wt->tensor())->name());  // in range per VerifyPlan
    }
    for (int32_t buf : {b->home_buffer(), b->staging_buffer(), b->disk_staging_buffer(), b->kv_buffer(), b->host_buffer()})
      if (buf >= 0) sink += p.buffers()->Get(buf)->size_bytes();
  }
  for (uint32_t i = 0; i < Len(p.steps()); ++i) {
    const auto* s = p.steps()->Get(i);
    sink += Touch(p.blocks()->Get(s->block())->name());
    for (uint32_t c = 0; c < Len(s->copies()); ++c) {
      const auto* cp = s->copies()->Get(c);
      sink += Touch(p.blocks()->Get(cp->block())->name());
      for (uint32_t k = 0; k < Len(cp->wait_compute_steps()); ++k)
        sink += p.steps()->Get(cp->wait_compute_steps()->Get(k))->block();
      for (uint32_t k = 0; k < Len(cp->wait_copy_blocks()); ++k)
        sink += Touch(p.blocks()->Get(cp->wait_copy_blocks()->Get(k))->name());
    }
    for (uint32_t k = 0; k < Len(s->frees()); ++k) sink += p.buffers()->Get(s->frees()->Get(k))->offset();
  }
  for (uint32_t i = 0; i < Len(p.streams()); ++i) {
    const auto* st = p.streams()->Get(i);
    if (Len(st->units()) == 0) continue;
    sink += p.buffers()->Get(st->ring_buffer())->size_bytes();  // in range per VerifyPlan
    if (st->disk_ring_buffer() >= 0) sink += p.buffers()->Get(st->disk_ring_buffer())->size_bytes();
    for (uint32_t u = 0; u < Len(st->units()); ++u) {
      const auto* un = st->units()->Get(u);
      const auto* w = p.blocks()->Get(un->block())->weights()->Get(un->weight());
      sink += Touch(p.tensors()->Get(w->tensor())->name());
      if (un->wait_unit() >= 0) sink += st->units()->Get(un->wait_unit())->bytes();
      if (un->disk_wait_unit() >= 0) sink += st->units()->Get(un->disk_wait_unit())->bytes();
    }
  }
  for (uint32_t i = 0; i < Len(p.usage()); ++i) sink += Touch(p.usage()->Get(i)->device());
  for (uint32_t i = 0; i < Len(p.budgets()); ++i) sink += Touch(p.budgets()->Get(i)->device());
  (void)bigplan::CheckPlanMemory(p);
  g_sink = sink;
  return 0;
}
