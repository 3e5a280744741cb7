// Test support (testonly): a small plan (current version) with one stream, and a model config, for the schema tests.
#pragma once

#include <cstdint>

#include "arch/rope.h"
#include "schema/plan_generated.h"

namespace bigplan::schema_testing {

// Block "b" has weight 0 (tensor w0, 16 x 16 F32) resident in its home buffer and weight 1 (w1, 16 x 16 F32) in the
// Cpu tier (its host buffer), streamed to cuda:0 as two row chunks of 512 bytes through a 1 KiB ring. The fields of
// the first unit and of the stream can be changed (damaged) before they are written.
struct StreamFields {
  int32_t device = 0, ring_buffer = 2, disk_ring_buffer = -1;
  uint32_t block = 0, weight = 1;
  int64_t row_begin = 0, row_end = 8;
  schema::Tier source = schema::Tier::Cpu;
  uint64_t bytes = 512, ring_offset = 0;
  int32_t wait_unit = 1;
  schema::Tier weight1_tier = schema::Tier::Cpu;
  bool second_stream = false;      // a second stream for the same device
  double unit_copy_us = 0;         // Unit.predicted_copy_us of both units
  double predicted_decode_us = 0;  // Plan.predicted_decode_us
  double predicted_prefill_us = 0;
};

flatbuffers::DetachedBuffer StreamedPlan(const StreamFields& f = {});

// A ModelConfig of architecture "llama" with head_dim `head_dim`, rotary_dim `rope.rotary_dim` and config.rope =
// `rope` (by default: default RoPE, no rotary dims), every other field at its default.
flatbuffers::Offset<bigplan::schema::ModelConfig> TestModelConfig(flatbuffers::FlatBufferBuilder& fb,
                                                                  const arch::RopeParams& rope = {},
                                                                  uint32_t head_dim = 0);

}  // namespace bigplan::schema_testing
