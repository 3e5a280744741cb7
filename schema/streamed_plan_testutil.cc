#include "schema/streamed_plan_testutil.h"

#include <vector>

#include "schema/plan_io.h"

namespace bigplan::schema_testing {

flatbuffers::Offset<schema::ModelConfig> TestModelConfig(flatbuffers::FlatBufferBuilder& fb,
                                                         const arch::RopeParams& rope, uint32_t head_dim) {
  auto architecture = fb.CreateString("llama");
  auto rope_table = CreateRopeParams(fb, rope);
  schema::ModelConfigBuilder b(fb);
  b.add_architecture(architecture);
  b.add_head_dim(head_dim);
  b.add_rotary_dim(rope.rotary_dim);
  b.add_rope_theta(rope.theta);
  b.add_rope(rope_table);
  return b.Finish();
}

flatbuffers::DetachedBuffer StreamedPlan(const StreamFields& f) {
  flatbuffers::FlatBufferBuilder fb;
  auto shard = schema::CreateShardInfoDirect(fb, "model.safetensors", 4096, "00");
  std::vector<flatbuffers::Offset<schema::ShardInfo>> shards{shard};
  auto fp = schema::CreateFingerprintDirect(fb, &shards, "ff");
  std::vector<int64_t> shape{16, 16};
  std::vector<flatbuffers::Offset<schema::Tensor>> tensors{
      schema::CreateTensorDirect(fb, "w0", 0, 8, 1024, schema::DType::F32, &shape),
      schema::CreateTensorDirect(fb, "w1", 0, 1032, 1024, schema::DType::F32, &shape)};
  std::vector<flatbuffers::Offset<schema::Weight>> weights{
      schema::CreateWeight(fb, 0, schema::DType::F32, 1024, 0, schema::Tier::Gpu),
      schema::CreateWeight(fb, 1, schema::DType::F32, 1024, 0, f.weight1_tier)};
  std::vector<flatbuffers::Offset<schema::Block>> blocks{schema::CreateBlockDirect(
      fb, "b", "decoder_layer", 0, "b.", 0, schema::Tier::Cpu, &weights, 2048, 0, -1, -1, -1, 1,
      schema::BlockKind::DecoderLayer)};
  std::vector<flatbuffers::Offset<schema::Buffer>> buffers{
      schema::CreateBufferDirect(fb, "b.weights", schema::BufferKind::ResidentWeights, schema::Pool::DeviceArena, 0,
                                 0, 1024, 0, 0),
      schema::CreateBufferDirect(fb, "b.host", schema::BufferKind::HostWeights, schema::Pool::PinnedHost, -1, 0,
                                 1024, 0, 0),
      schema::CreateBufferDirect(fb, "ring.cuda:0", schema::BufferKind::Staging, schema::Pool::DeviceArena, 0, 1024,
                                 1024, 0, 0)};
  std::vector<flatbuffers::Offset<schema::Arena>> arenas{
      schema::CreateArena(fb, schema::Pool::DeviceArena, 0, 2048),
      schema::CreateArena(fb, schema::Pool::PinnedHost, -1, 1024)};
  std::vector<flatbuffers::Offset<schema::Step>> steps{schema::CreateStepDirect(fb, 0)};
  std::vector<flatbuffers::Offset<schema::Unit>> units{
      schema::CreateUnit(fb, f.block, f.weight, f.row_begin, f.row_end, f.source, f.bytes, false, f.ring_offset,
                         f.wait_unit, 0, 0, -1, f.unit_copy_us),
      schema::CreateUnit(fb, 0, 1, 8, 16, schema::Tier::Cpu, 512, false, 512, 0, 0, 0, -1, f.unit_copy_us)};
  std::vector<flatbuffers::Offset<schema::Stream>> streams{
      schema::CreateStreamDirect(fb, f.device, f.ring_buffer, f.disk_ring_buffer, 512, &units)};
  if (f.second_stream) streams.push_back(schema::CreateStreamDirect(fb, f.device, f.ring_buffer, -1, 512, &units));
  auto config = TestModelConfig(fb);
  auto run_shape = schema::CreateRunShape(fb, 1, 16);
  auto plan = schema::CreatePlanDirect(fb, kPlanVersion, "test", "auto", "m", "d", config, fp, schema::DType::F32,
                                       run_shape, nullptr, 0, &tensors, &blocks, &buffers, &arenas, &steps, nullptr,
                                       f.predicted_decode_us, f.predicted_prefill_us, nullptr, &streams);
  schema::FinishPlanBuffer(fb, plan);
  return fb.Release();
}

}  // namespace bigplan::schema_testing
