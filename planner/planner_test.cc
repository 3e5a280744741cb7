#include "planner/planner.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "arch/registry.h"
#include "formats/checkpoint.h"
#include "planner/experts.h"
#include "planner/hf_import.h"
#include "planner/overlap_check.h"
#include "planner/plan_builder.h"
#include "planner/tensor_parallel.h"
#include "schema/plan_io.h"
#include "support/sha256.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

std::string Runfile(const std::string& path) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return std::string(srcdir ? srcdir : ".") + "/bigplan/" + path;
}

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(tmp ? tmp : "/tmp") / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

constexpr const char* kTinyConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
  "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
  "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "hidden_act": "silu",
  "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
  "torch_dtype": "bfloat16"})";

// Writes DIR/config.json and DIR/model.safetensors holding `tensors` (zeros), skipping `omit`.
void WriteTinyCheckpoint(const std::string& dir, const std::string& omit = "") {
  std::ofstream(dir + "/config.json") << kTinyConfig;
  auto model = ImportHfConfigText(kTinyConfig);
  ASSERT_TRUE(model.ok()) << model.error().ToString();
  nlohmann::ordered_json header;
  uint64_t offset = 0;
  for (const TensorSpec& t : ExpectedTensors(*model)) {
    if (t.name == omit) continue;
    header[t.name] = {{"dtype", DTypeString(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  std::ofstream f(dir + "/model.safetensors", std::ios::binary);
  const uint64_t n = h.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << h;
  f << std::string(offset, '\0');
}

// A bundled example (planner/examples/..., no weights) at `budget`, batch 1, 512 positions, bf16.
PlanRequest ExampleRequest(const std::string& example, const std::string& budget) {
  PlanRequest r;
  r.model_dir = Runfile(example);
  auto b = ParseMaxMemory(budget);
  EXPECT_TRUE(b.ok()) << budget;
  if (b.ok()) r.budget = *b;
  r.run = RunShape{1, 512};
  r.exec_dtype = DType::kBF16;
  return r;
}

PlanRequest TinyRequest(const std::string& dir, const std::string& budget) {
  PlanRequest r;
  r.model_dir = dir;
  auto b = ParseMaxMemory(budget);
  EXPECT_TRUE(b.ok());
  r.budget = *b;
  r.run.max_batch = 1;
  r.run.max_seq_len = 64;
  return r;
}

TEST(PlannerTest, PlansARealCheckpoint) {
  const std::string dir = TempDir("tiny");
  WriteTinyCheckpoint(dir);
  auto result = MakePlan(TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB"));
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  auto plan = VerifyPlan(result->bytes.data(), result->bytes.size(), "tiny");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  const schema::Plan& p = **plan;
  EXPECT_FALSE(result->synthetic_checkpoint);
  EXPECT_FALSE(IsSyntheticFingerprint(p.checkpoint()->digest()->str()));
  EXPECT_EQ(p.blocks()->size(), 7u);  // embed, 4 layers, norm, lm_head
  EXPECT_EQ(p.steps()->size(), 7u);
  EXPECT_EQ(p.exec_dtype(), schema::DType::BF16);
  EXPECT_EQ(p.config()->num_kv_heads(), 2u);
  EXPECT_EQ(p.config()->architecture()->str(), "llama");
  EXPECT_EQ(p.config()->eos_token_ids()->size(), 1u);
  EXPECT_EQ(p.model_digest()->str(), result->model.Digest());
  EXPECT_EQ(p.version(), kPlanVersion);
  // Version 3: the typed RoPE (default, over whole heads) and block kinds, in execution order.
  ASSERT_NE(p.config()->rope(), nullptr);
  const arch::RopeParams rope = RopeParamsOf(*p.config()->rope());
  EXPECT_EQ(rope.type, arch::RopeType::kDefault);
  EXPECT_EQ(rope.rotary_dim, 16u);
  EXPECT_DOUBLE_EQ(rope.theta, 10000.0);
  const arch::BlockKind kinds[] = {arch::BlockKind::kEmbedding,    arch::BlockKind::kDecoderLayer,
                                   arch::BlockKind::kDecoderLayer, arch::BlockKind::kDecoderLayer,
                                   arch::BlockKind::kDecoderLayer, arch::BlockKind::kFinalNorm,
                                   arch::BlockKind::kLmHead};
  for (uint32_t i = 0; i < p.blocks()->size(); ++i) EXPECT_EQ(BlockKindOf(*p.blocks()->Get(i)), kinds[i]) << i;
  // Tensor locations are the checkpoint's.
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  for (const schema::Tensor* t : *p.tensors()) {
    const TensorLocation* loc = ckpt->Find(t->name()->str());
    ASSERT_NE(loc, nullptr) << t->name()->str();
    EXPECT_EQ(t->offset(), loc->offset);
    EXPECT_EQ(t->size_bytes(), loc->size_bytes);
  }
  EXPECT_TRUE(CheckPlanMemory(p).ok());
  // Everything fits on the GPU: nothing streams.
  for (const schema::Block* b : *p.blocks()) EXPECT_EQ(b->tier(), schema::Tier::Gpu) << b->name()->str();
  for (const schema::Step* s : *p.steps()) EXPECT_EQ(s->copies()->size(), 0u);
  EXPECT_TRUE(p.streams() == nullptr || p.streams()->size() == 0u);
  EXPECT_GT(p.predicted_decode_us(), 0);
  EXPECT_GT(p.predicted_prefill_us(), p.predicted_decode_us());
}

TEST(PlannerTest, ExplicitMapStreamsBlocks) {
  const std::string dir = TempDir("tiny_explicit");
  WriteTinyCheckpoint(dir);
  PlanRequest r = TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB");
  r.strategy = "explicit";
  r.device_map = {{"model.embed_tokens", 0}, {"model.layers.0", 0}, {"model.layers.1", "cpu"},
                  {"model.layers.2", "disk"}, {"model.layers.3", "cpu"}, {"model.norm", 0}, {"lm_head", "cpu"}};
  auto result = MakePlan(r);
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  const schema::Plan& p = result->plan();
  EXPECT_EQ(p.blocks()->Get(3)->tier(), schema::Tier::Disk);
  EXPECT_EQ(p.blocks()->Get(3)->home_buffer(), -1);
  EXPECT_EQ(p.blocks()->Get(3)->host_buffer(), -1);  // disk weights are read from the shard
  EXPECT_GE(p.blocks()->Get(2)->host_buffer(), 0);
  EXPECT_EQ(p.blocks()->Get(2)->home_buffer(), -1);
  EXPECT_EQ(p.blocks()->Get(2)->staging_buffer(), -1);  // v2: no per-block staging
  for (const schema::Step* s : *p.steps()) EXPECT_EQ(s->copies()->size(), 0u);
  // One stream on cuda:0: every Cpu/Disk-tier weight of layers.1-3 and lm_head, whole, in step order.
  ASSERT_EQ(p.streams()->size(), 1u);
  const schema::Stream* st = p.streams()->Get(0);
  EXPECT_EQ(st->device(), 0);
  EXPECT_GE(st->ring_buffer(), 0);
  EXPECT_GE(st->disk_ring_buffer(), 0);
  EXPECT_EQ(p.buffers()->Get(st->ring_buffer())->kind(), schema::BufferKind::Staging);
  EXPECT_EQ(p.buffers()->Get(st->disk_ring_buffer())->kind(), schema::BufferKind::DiskStaging);
  size_t expected_units = 0;
  for (uint32_t b : {2u, 3u, 4u, 6u}) expected_units += p.blocks()->Get(b)->weights()->size();
  ASSERT_EQ(st->units()->size(), expected_units);
  uint32_t prev_block = 0;
  for (const schema::Unit* u : *st->units()) {
    EXPECT_GE(u->block(), prev_block);
    prev_block = u->block();
    EXPECT_TRUE(u->whole());
    const schema::Weight* w = p.blocks()->Get(u->block())->weights()->Get(u->weight());
    EXPECT_EQ(u->source(), w->tier());
    EXPECT_EQ(u->bytes(), w->size_bytes());
    EXPECT_EQ(u->source(), u->block() == 3 ? schema::Tier::Disk : schema::Tier::Cpu);
  }
  ASSERT_EQ(result->schedule.streams.size(), 1u);
  EXPECT_EQ(result->schedule.streams[0].layout, "slots");
  EXPECT_EQ(result->schedule.streams[0].slots, 2u);
  EXPECT_TRUE(CheckDeviceStream(result->schedule.streams[0]).ok());
  EXPECT_GE(result->decode.total_us, result->copy_floor_us);
  EXPECT_GT(result->streamed_bytes, 0u);
  // A deeper prefetch gives the ring more slots (capped by the 4 streaming blocks).
  r.prefetch_depth = 2;
  auto deeper = MakePlan(r);
  ASSERT_TRUE(deeper.ok()) << deeper.error().ToString();
  EXPECT_EQ(deeper->schedule.streams[0].slots, 3u);
  EXPECT_EQ(deeper->schedule.streams[0].ring_bytes, result->schedule.streams[0].ring_bytes / 2 * 3);
  r.prefetch_depth = 8;
  auto deepest = MakePlan(r);
  ASSERT_TRUE(deepest.ok()) << deepest.error().ToString();
  EXPECT_EQ(deepest->schedule.streams[0].slots, 4u);
}

TEST(PlannerTest, PlansABundledExampleWithoutWeights) {
  PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=4GiB,cpu=64GiB,disk=200GiB");
  auto result = MakePlan(r);
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  const schema::Plan& p = result->plan();
  EXPECT_TRUE(result->synthetic_checkpoint);
  EXPECT_TRUE(IsSyntheticFingerprint(p.checkpoint()->digest()->str()));
  for (const schema::ShardInfo* s : *p.checkpoint()->shards()) EXPECT_EQ(s->size_bytes(), 0u);
  EXPECT_EQ(p.blocks()->size(), 35u);
  EXPECT_GT(result->streamed_bytes, 8ull << 30);  // 12.5 GiB of bf16 weights, < 4 GiB resident
  EXPECT_GE(result->decode.total_us, result->copy_floor_us);
  ASSERT_EQ(result->schedule.streams.size(), 1u);
  EXPECT_EQ(result->schedule.streams[0].device, 0);
  EXPECT_EQ(result->streamed_bytes, result->schedule.streams[0].streamed_bytes());
  for (const DeviceAccount& a : result->usage) EXPECT_TRUE(a.fits()) << a.Summary();
  EXPECT_TRUE(CheckPlanMemory(p).ok());
}

// A long context no longer reserves whole attention scores or every position's logits (arch/temporaries.h): the
// bundled Llama-2-7B at 4096 positions fits a 16 GiB GPU whole (13.5 GB of weights, 2 GiB of KV cache), where
// seq^2 scores (2 GiB) and 4096 positions' logits (500 MiB) used to stream a third of it.
TEST(PlannerTest, LongContextKeepsTheModelResident) {
  PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=16GiB,cpu=64GiB");
  r.run.max_seq_len = 4096;
  auto result = MakePlan(r);
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  EXPECT_EQ(result->streamed_bytes, 0u);
  for (const DeviceAccount& a : result->usage) {
    EXPECT_TRUE(a.fits()) << a.Summary();
    if (a.device == "cuda:0") {
      EXPECT_LT(a.activations, 700ull << 20) << a.Summary();
      EXPECT_EQ(a.kv_cache, 2ull << 30) << a.Summary();
    }
  }
}

// All resident over two GPUs: decode steps are graph-replayed per device segment, and the hidden state's hop
// between the GPUs costs kDeviceHopMicros (plus its bytes) over the one-GPU prediction.
TEST(PlannerTest, SplitOverTwoGpusPredictsTheHop) {
  // The split candidates only (candidate T, below, splits every block instead).
  auto plan = [](const char* budget) {
    PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", budget);
    r.auto_candidates = "BPCEIS";
    return MakePlan(r);
  };
  auto one = plan("cuda:0=70GiB,cpu=64GiB");
  auto two = plan("cuda:0=8GiB,cuda:1=8GiB,cpu=64GiB");
  ASSERT_TRUE(one.ok()) << one.error().ToString();
  ASSERT_TRUE(two.ok()) << two.error().ToString();
  EXPECT_EQ(two->streamed_bytes, 0u);
  std::set<int32_t> devices;
  for (const schema::Block* b : *two->plan().blocks()) devices.insert(b->device());
  EXPECT_EQ(devices, (std::set<int32_t>{0, 1}));
  const double hop = kDeviceHopMicros + 4096.0 * 2 / (kPeerGbps * 1e3);
  EXPECT_NEAR(two->decode.total_us - one->decode.total_us, hop, 0.02 * one->decode.total_us);
  EXPECT_GT(two->decode.total_us, one->decode.total_us);
  // As ranks (one process per GPU): one hop and the logits' way back to rank 0, each kRankHopExtraMicros over the
  // in-process step; a one-GPU plan has no ranks to predict.
  EXPECT_TRUE(two->graph_decode);
  const RanksDecodePrediction ranks = PredictRanksDecode(*two);
  EXPECT_EQ(ranks.ranks, 2u);
  EXPECT_EQ(ranks.crossings, 2u);
  EXPECT_DOUBLE_EQ(ranks.total_us, two->decode.total_us + 2 * kRankHopExtraMicros);
  EXPECT_EQ(PredictRanksDecode(*one).ranks, 0u);
}

// Every block resident on two GPUs, batch 1: candidate T splits every block over both (plan version 7): shard r of
// each block on cuda:r, its weights slices of the checkpoint's tensors (q/k/v and gate/up rows, o_proj and down_proj
// columns, the vocabulary's rows, norms whole), half the KV cache per GPU, and a decode step predicted well below
// the split plan's, which reads one GPU's share after the other.
TEST(PlannerTest, TensorParallelSplitsEveryBlockOverTwoGpus) {
  auto plan = [](const std::string& candidates, const char* budget) {
    PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", budget);
    r.auto_candidates = candidates;
    return MakePlan(r);
  };
  auto tp = plan("BPCEIST", "cuda:0=8GiB,cuda:1=8GiB,cpu=64GiB");
  auto split = plan("BPCEIS", "cuda:0=8GiB,cuda:1=8GiB,cpu=64GiB");
  ASSERT_TRUE(tp.ok()) << tp.error().ToString();
  ASSERT_TRUE(split.ok()) << split.error().ToString();
  EXPECT_EQ(tp->placement.chosen, "T");
  EXPECT_EQ(tp->tensor_parallel, 2u);
  EXPECT_EQ(tp->streamed_bytes, 0u);
  EXPECT_LT(tp->decode.total_us, kTensorParallelGain * split->decode.total_us);
  const schema::Plan& p = tp->plan();
  ASSERT_EQ(p.tensor_parallel(), 2u);
  ASSERT_EQ(p.blocks()->size(), 2 * split->plan().blocks()->size());
  const ModelConfig& c = tp->source_model.config;
  const uint64_t q_rows = static_cast<uint64_t>(c.num_heads) * c.head_dim / 2;
  int sliced = 0, whole = 0;
  for (uint32_t i = 0; i < p.blocks()->size(); ++i) {
    const schema::Block* b = p.blocks()->Get(i);
    EXPECT_EQ(b->shard(), i % 2);
    EXPECT_EQ(b->device(), static_cast<int32_t>(i % 2));
    EXPECT_EQ(b->tier(), schema::Tier::Gpu);
    for (const schema::Weight* w : *b->weights()) {
      const std::string name = p.tensors()->Get(w->tensor())->name()->str();
      if (w->slice_dim() < 0) {
        ++whole;
        EXPECT_NE(name.find("norm"), std::string::npos) << name;
        continue;
      }
      ++sliced;
      if (name.find("q_proj") != std::string::npos) {
        EXPECT_EQ(w->slice_dim(), 0);
        EXPECT_EQ(w->slice_begin(), static_cast<int64_t>(b->shard() * q_rows));
        EXPECT_EQ(w->slice_end(), static_cast<int64_t>((b->shard() + 1) * q_rows));
      }
      if (name.find("o_proj") != std::string::npos || name.find("down_proj") != std::string::npos) {
        EXPECT_EQ(w->slice_dim(), 1) << name;
      }
      if (name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos) {
        EXPECT_EQ(w->slice_begin(), b->shard() == 0 ? 0 : static_cast<int64_t>(c.vocab_size / 2)) << name;
      }
    }
  }
  EXPECT_EQ(sliced, 2 * (2 + 7 * static_cast<int>(c.num_layers)));
  EXPECT_EQ(whole, 2 * (1 + 2 * static_cast<int>(c.num_layers)));
  // A shard caches half the key/value heads.
  uint64_t kv_tp = 0, kv_split = 0;
  for (const DeviceAccount& a : tp->usage) kv_tp += a.kv_cache;
  for (const DeviceAccount& a : split->usage) kv_split += a.kv_cache;
  EXPECT_NEAR(static_cast<double>(kv_tp), static_cast<double>(kv_split), 0.01 * kv_split);
  // As ranks, one per shard: the one-process step and what an NCCL all-reduce adds to each of its all-reduces (one
  // after the embedding, two a layer, one for the logits). Not pipelined; a batched prefill runs every shard at once.
  const RanksDecodePrediction as_ranks = PredictRanksDecode(*tp);
  EXPECT_EQ(as_ranks.ranks, 2u);
  EXPECT_EQ(as_ranks.all_reduces, 2 + 2 * c.num_layers);
  EXPECT_DOUBLE_EQ(as_ranks.total_us, tp->decode.total_us + as_ranks.all_reduces * (tp->graph_decode
                                                                                         ? kRankAllReduceExtraMicros
                                                                                         : kRankAllReduceExtraEagerMicros));
  EXPECT_FALSE(PipelinablePlan(*tp));
  auto batched = PredictBatchedPrefill(*tp, 4, 128);
  ASSERT_TRUE(batched.ok()) << batched.error().ToString();
  EXPECT_EQ(batched->micro_batches, 0u);
  EXPECT_GT(batched->total_us, 0);

  // Without T, or with one GPU, or a family without rules: no tensor parallelism.
  EXPECT_EQ(split->tensor_parallel, 0u);
  bool reported = false;
  for (const PlacementCandidate& k : split->placement.candidates) reported |= k.name == "T" && k.why == "not considered";
  EXPECT_TRUE(reported);
  auto one_gpu = plan("T", "cuda:0=40GiB,cpu=64GiB");
  ASSERT_FALSE(one_gpu.ok());
  EXPECT_NE(one_gpu.error().message.find("two or more GPU budgets"), std::string::npos) << one_gpu.error().message;
  // GPT-J splits, one all-reduce a layer (its attention and MLP add into one output); GPT-2 too, two a layer, its
  // Conv1D c_attn [hidden, q | k | v] by three ranges of columns.
  PlanRequest gptj = ExampleRequest("planner/examples/gpt-j-6b", "cuda:0=12GiB,cuda:1=12GiB,cpu=64GiB");
  gptj.auto_candidates = "T";
  auto gptj_tp = MakePlan(gptj);
  ASSERT_TRUE(gptj_tp.ok()) << gptj_tp.error().ToString();
  EXPECT_EQ(gptj_tp->tensor_parallel, 2u);
  EXPECT_EQ(PredictRanksDecode(*gptj_tp).all_reduces, 2 + gptj_tp->source_model.config.num_layers);
  PlanRequest gpt2;
  auto gpt2_desc = ImportHfConfigText(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
      "n_layer": 2, "n_head": 12, "vocab_size": 50257, "n_positions": 1024})");
  ASSERT_TRUE(gpt2_desc.ok()) << gpt2_desc.error().ToString();
  gpt2.description = std::move(*gpt2_desc);
  auto budget = ParseMaxMemory("cuda:0=12GiB,cuda:1=12GiB,cpu=64GiB");
  ASSERT_TRUE(budget.ok());
  gpt2.budget = *budget;
  gpt2.exec_dtype = DType::kBF16;
  gpt2.run = RunShape{1, 512};
  gpt2.auto_candidates = "T";
  auto gpt2_tp = MakePlan(gpt2);
  ASSERT_TRUE(gpt2_tp.ok()) << gpt2_tp.error().ToString();
  EXPECT_EQ(gpt2_tp->tensor_parallel, 2u);
  EXPECT_EQ(PredictRanksDecode(*gpt2_tp).all_reduces, 2 + 2 * gpt2_tp->source_model.config.num_layers);
  Result<ShardedModel> gpt2_shards = ShardModel(gpt2_tp->source_model, 2);
  ASSERT_TRUE(gpt2_shards.ok()) << gpt2_shards.error().ToString();
  int c_attn = 0;
  for (size_t i = 0; i < gpt2_shards->model.blocks.size(); ++i) {
    const uint32_t r = gpt2_shards->shard[i];
    for (const auto& [name, slice] : gpt2_shards->slices[i]) {
      if (name.find("attn.c_attn.weight") != std::string::npos) {
        // Columns: the shard's 6 q heads of 64, then its k and v heads.
        EXPECT_EQ(slice, (arch::TensorSlice{1, 384 * r, 384 * (r + 1),
                                            {{768 + 384 * r, 768 + 384 * (r + 1)},
                                             {1536 + 384 * r, 1536 + 384 * (r + 1)}}})) << name;
        ++c_attn;
      } else if (name.find("attn.c_proj.weight") != std::string::npos || name.find("mlp.c_proj.weight") != std::string::npos) {
        EXPECT_EQ(slice.dim, 0) << name;  // Conv1D [in, out]: the shard's inputs are rows
      } else if (name.find("mlp.c_fc.weight") != std::string::npos) {
        EXPECT_EQ(slice, (arch::TensorSlice{1, 1536 * r, 1536 * (r + 1)})) << name;
      }
    }
  }
  EXPECT_EQ(c_attn, 4);  // 2 layers x 2 shards
  // A plan for batches keeps the pipelined candidate I when its batched prefill is predicted faster than T's
  // (every shard at once, its all-reduces carrying rows x tokens hidden states); T alone forces it.
  auto batches = plan("BPCEIST", "cuda:0=12GiB,cuda:1=12GiB,cpu=64GiB");
  PlanRequest batch_request = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=12GiB,cuda:1=12GiB,cpu=64GiB");
  batch_request.run = RunShape{8, 512};
  auto batched_plan = MakePlan(batch_request);
  ASSERT_TRUE(batched_plan.ok()) << batched_plan.error().ToString();
  EXPECT_EQ(batched_plan->placement.chosen, "I");
  batch_request.auto_candidates = "T";
  auto forced = MakePlan(batch_request);
  ASSERT_TRUE(forced.ok()) << forced.error().ToString();
  EXPECT_EQ(forced->tensor_parallel, 2u);
  auto tp_batched = PredictBatchedPrefill(*forced, 8, 256);
  auto i_batched = PredictBatchedPrefill(*batched_plan, 8, 256);
  ASSERT_TRUE(tp_batched.ok() && i_batched.ok());
  EXPECT_GT(tp_batched->total_us, i_batched->total_us);
  EXPECT_LT(forced->decode.total_us, batched_plan->decode.total_us);
  ASSERT_TRUE(batches.ok()) << batches.error().ToString();
  EXPECT_EQ(batches->placement.chosen, "T");  // batch 1
  // Too small even split: every shard streams what it cannot hold, each GPU over its own link, the shards placed
  // alike (column slices never on disk). Auto weighs it against the striped candidate S.
  auto small = plan("BPCEIST", "cuda:0=3GiB,cuda:1=3GiB,cpu=64GiB");
  ASSERT_TRUE(small.ok()) << small.error().ToString();
  bool weighed = false;
  for (const PlacementCandidate& k : small->placement.candidates) weighed |= k.name == "T" && k.feasible;
  EXPECT_TRUE(weighed);
  auto streamed = plan("T", "cuda:0=3GiB,cuda:1=3GiB,cpu=64GiB");
  ASSERT_TRUE(streamed.ok()) << streamed.error().ToString();
  EXPECT_EQ(streamed->tensor_parallel, 2u);
  std::map<int32_t, uint64_t> streamed_by_device;
  for (const DeviceStreamPlan& st : streamed->schedule.streams) streamed_by_device[st.device] += st.streamed_bytes();
  ASSERT_EQ(streamed_by_device.size(), 2u);
  EXPECT_GT(streamed_by_device[0], 0u);
  EXPECT_NEAR(static_cast<double>(streamed_by_device[0]), static_cast<double>(streamed_by_device[1]),
              0.01 * streamed_by_device[0]);
  EXPECT_GT(streamed->decode.total_us, tp->decode.total_us);
  const schema::Plan& sp = streamed->plan();
  for (const schema::Block* b : *sp.blocks())
    for (const schema::Weight* w : *b->weights())
      EXPECT_FALSE(w->slice_dim() == 1 && w->tier() == schema::Tier::Disk) << b->name()->str();
  // Without cpu memory for the shards' streamed columns, it says why.
  auto no_cpu = plan("T", "cuda:0=3GiB,cuda:1=3GiB,cpu=1GiB,disk=100GiB");
  ASSERT_FALSE(no_cpu.ok());
  EXPECT_NE(no_cpu.error().message.find("streamed:"), std::string::npos) << no_cpu.error().message;
}

// Every block resident on two GPUs: a plan for batches (max_batch 8) deals the decoder layers to the GPUs in groups
// (candidate I: 16 layers per GPU make four groups of 4 each, eight segments; the embedding with the first group,
// the head with the last, each GPU as many layers as the contiguous split gave it); a plan for one row keeps the
// contiguous split (two segments).
TEST(PlannerTest, InterleavedGroupsForBatchesOverTwoGpus) {
  auto plan = [](uint32_t batch, const std::string& candidates) {
    PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=12GiB,cuda:1=12GiB");
    r.run = RunShape{batch, 512};
    r.auto_candidates = candidates;
    return MakePlan(r);
  };
  auto segments = [](const schema::Plan& p, std::vector<int>* per_device) {
    int n = 0, prev = -1;
    for (const schema::Block* b : *p.blocks()) {
      EXPECT_EQ(b->tier(), schema::Tier::Gpu) << b->name()->str();
      if (b->device() != prev) ++n;
      prev = b->device();
      if (b->kind()->str() == "decoder_layer") per_device->at(b->device()) += 1;
    }
    return n;
  };
  auto batched = plan(8, "BPCEIS");
  auto single = plan(1, "BPCEIS");
  auto contiguous = plan(8, "BPCES");
  ASSERT_TRUE(batched.ok()) << batched.error().ToString();
  ASSERT_TRUE(single.ok()) << single.error().ToString();
  ASSERT_TRUE(contiguous.ok()) << contiguous.error().ToString();
  EXPECT_EQ(batched->placement.chosen, "I");
  EXPECT_NE(single->placement.chosen, "I");
  std::vector<int> il(2, 0), cont(2, 0), one(2, 0);
  EXPECT_EQ(segments(batched->plan(), &il), 8);
  EXPECT_EQ(segments(contiguous->plan(), &cont), 2);
  EXPECT_EQ(segments(single->plan(), &one), 2);
  EXPECT_EQ(il, cont);  // the same layers per GPU: the same memory
  EXPECT_EQ(batched->plan().blocks()->Get(0)->device(), 0);  // the embedding with the first group
  EXPECT_EQ(batched->plan().blocks()->Get(batched->plan().blocks()->size() - 1)->device(), 1);  // the head with the last
}

// Two GPUs too small for the model: the striped candidate deals the layers to the GPUs in turn, so both GPUs'
// links stream (about half the bytes each) and the forward is predicted well below streaming everything over one
// link (candidates B, P, C put the streamed layers on one GPU).
TEST(PlannerTest, StripedOverTwoGpusStreamsOverBothLinks) {
  auto plan = [](const std::string& candidates) {
    PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=4GiB,cuda:1=4GiB,cpu=64GiB");
    r.auto_candidates = candidates;
    return MakePlan(r);
  };
  auto striped = plan("BPCES");
  auto one_link = plan("BPC");
  ASSERT_TRUE(striped.ok()) << striped.error().ToString();
  ASSERT_TRUE(one_link.ok()) << one_link.error().ToString();
  EXPECT_EQ(striped->placement.chosen, "S");
  const schema::Plan& p = striped->plan();
  int hops = 0, prev = -1;
  for (const schema::Block* b : *p.blocks()) {
    if (prev >= 0 && b->device() != prev) ++hops;
    prev = b->device();
  }
  EXPECT_GE(hops, 30);  // layer after layer on the other GPU
  std::map<int32_t, uint64_t> link;
  for (const DeviceStreamPlan& st : striped->schedule.streams) link[st.device] = st.streamed_bytes();
  ASSERT_EQ(link.size(), 2u);
  EXPECT_LT(std::max(link[0], link[1]), 0.6 * (link[0] + link[1]));
  EXPECT_LT(striped->decode.total_us, 0.75 * one_link->decode.total_us);
  EXPECT_LT(striped->prefill.total_us, 0.75 * one_link->prefill.total_us);
  for (const DeviceAccount& a : striped->usage) EXPECT_TRUE(a.fits()) << a.Summary();
  EXPECT_TRUE(CheckPlanMemory(p).ok());
}

// Issue 9's target: a Llama-3.1-405B-shaped model (4 layers of 6.4 GB) at cuda:0=4GiB plans by streaming its weights
// in row chunks through the ring, and the prediction is within 1.1x of its PCIe floor.
TEST(PlannerTest, LayersLargerThanTheGpuPlanNearTheCopyFloor) {
  PlanRequest r;
  r.model_dir = Runfile("planner/testdata/configs/llama-3.1-405b-4layers");
  auto b = ParseMaxMemory("cuda:0=4GiB,cpu=200GiB");
  ASSERT_TRUE(b.ok());
  r.budget = *b;
  auto result = MakePlan(r);
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  EXPECT_EQ(result->placement.chosen, "C");
  ASSERT_EQ(result->schedule.streams.size(), 1u);
  const DeviceStreamPlan& st = result->schedule.streams[0];
  EXPECT_EQ(st.layout, "chunks");
  size_t chunks = 0;
  for (const StreamUnitPlan& u : st.units) chunks += !u.whole;
  EXPECT_GT(chunks, 100u);
  EXPECT_TRUE(CheckDeviceStream(st).ok());
  // Every chunk waits for the release of what it overwrites (the ring holds far less than one layer).
  size_t waiting = 0;
  for (const StreamUnitPlan& u : st.units) waiting += u.wait_unit >= 0;
  EXPECT_EQ(waiting, st.units.size());
  EXPECT_GT(result->streamed_bytes, 20ull << 30);
  for (const DeviceAccount& a : result->usage) EXPECT_TRUE(a.fits()) << a.Summary();
  EXPECT_GE(result->decode.total_us, result->copy_floor_us);
  EXPECT_LE(result->decode.total_us, 1.1 * result->copy_floor_us)
      << "decode " << result->decode.total_us << " us, floor " << result->copy_floor_us << " us";
  const schema::Plan& p = result->plan();
  ASSERT_EQ(p.streams()->size(), 1u);
  EXPECT_EQ(p.streams()->Get(0)->chunk_bytes(), st.chunk_bytes);
  // Llama 3.1's rope_scaling, typed: what the executor computes from.
  const arch::RopeParams rope = RopeParamsOf(*p.config()->rope());
  EXPECT_EQ(rope.type, arch::RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(rope.theta, 500000.0);
  EXPECT_EQ(rope.rotary_dim, 128u);
  EXPECT_DOUBLE_EQ(rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(rope.high_freq_factor, 4.0);
  EXPECT_EQ(rope.original_max_position_embeddings, 8192u);
  EXPECT_TRUE(CheckPlanMemory(p).ok());
}

// Llama-2-7B at cuda:0=6GiB: auto keeps parts of every layer resident (candidate P), which keeps more bytes
// resident than whole-block residency (candidate B) and predicts no slower.
TEST(PlannerTest, PartiallyResidentBlocksPredictNoSlowerThanWholeBlocks) {
  PlanRequest r;
  r.model_dir = Runfile("planner/examples/llama-2-7b");
  auto b = ParseMaxMemory("cuda:0=6GiB,cpu=64GiB");
  ASSERT_TRUE(b.ok());
  r.budget = *b;
  r.run = RunShape{1, 512};
  auto chosen = MakePlan(r);
  ASSERT_TRUE(chosen.ok()) << chosen.error().ToString();
  EXPECT_EQ(chosen->placement.chosen, "P");
  r.auto_candidates = "B";
  auto whole = MakePlan(r);
  ASSERT_TRUE(whole.ok()) << whole.error().ToString();
  EXPECT_EQ(whole->placement.chosen, "B");
  EXPECT_LT(chosen->streamed_bytes, whole->streamed_bytes);
  EXPECT_LE(chosen->decode.total_us, whole->decode.total_us);
  EXPECT_LE(chosen->prefill.total_us, whole->prefill.total_us);
  for (const PlacementCandidate& c : chosen->placement.candidates)
    std::printf("candidate %s: %s, resident %llu bytes\n", c.name.c_str(), c.feasible ? "feasible" : c.why.c_str(),
                static_cast<unsigned long long>(c.resident_bytes));
  std::printf("llama-2-7b at 6 GiB: P decode %.3f ms (floor %.3f), B decode %.3f ms (floor %.3f)\n",
              chosen->decode.total_us / 1000, chosen->copy_floor_us / 1000, whole->decode.total_us / 1000,
              whole->copy_floor_us / 1000);
  // The plan records each weight's tier, and its stream carries exactly the Cpu-tier weights.
  const schema::Plan& p = chosen->plan();
  uint64_t cpu_weights = 0;
  size_t partial = 0;
  for (const schema::Block* blk : *p.blocks()) {
    bool gpu = false, cpu = false;
    for (const schema::Weight* w : *blk->weights()) {
      gpu |= w->tier() == schema::Tier::Gpu;
      cpu |= w->tier() == schema::Tier::Cpu;
      if (w->tier() == schema::Tier::Cpu) cpu_weights += w->size_bytes();
    }
    if (gpu && cpu) {
      ++partial;
      EXPECT_GE(blk->home_buffer(), 0);
      EXPECT_GE(blk->host_buffer(), 0);
      EXPECT_EQ(blk->tier(), schema::Tier::Cpu);
    }
  }
  EXPECT_GE(partial, 30u);
  uint64_t unit_bytes = 0;
  for (const schema::Unit* u : *p.streams()->Get(0)->units()) unit_bytes += u->bytes();
  EXPECT_EQ(unit_bytes, cpu_weights);
}

// Host compute in decode (--cpu-share auto): Llama-2-7B at cuda:0=4GiB streams most of every layer; with the host's
// matrix-vector rate in the profile, the planner gives the host a share of each streamed matrix's rows, predicts a
// faster decode than streaming everything, and no faster than the copy floor of what still streams; prefill still
// copies every row.
TEST(PlannerTest, CpuShareAutoSplitsStreamedMatrices) {
  PlanRequest r;
  r.model_dir = Runfile("planner/examples/llama-2-7b");
  auto b = ParseMaxMemory("cuda:0=4GiB,cpu=64GiB");
  ASSERT_TRUE(b.ok());
  r.budget = *b;
  r.run = RunShape{1, 512};
  r.exec_dtype = DType::kBF16;
  DeviceProfile profile = DefaultGpuProfile();
  profile.cpu_gemv_gbps = 55.0;
  r.profile = profile;
  r.cpu_share_auto = true;
  auto result = MakePlan(r);
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  EXPECT_GT(result->cpu_share, 0.2);
  EXPECT_LT(result->cpu_share, 0.8);
  EXPECT_FALSE(result->host_rows.empty());
  EXPECT_LT(result->decode.total_us, 0.8 * result->decode_streamed_us);
  EXPECT_GE(result->decode.total_us, result->decode_copy_floor_us);
  EXPECT_LT(result->decode_copy_floor_us, result->copy_floor_us);
  // Host rows: 64-row multiples of the linear-layer matrices only.
  for (const auto& [key, rows] : result->host_rows) {
    EXPECT_EQ(rows % kHostRowAlign, 0);
    const BlockWeightLayout layout = LayoutBlockWeights(result->model, key.first, DType::kBF16);
    const std::string& name = layout.weights[key.second].tensor;
    EXPECT_TRUE(name.find("_proj.weight") != std::string::npos || name == "lm_head.weight") << name;
  }
  const schema::Plan& p = result->plan();
  EXPECT_EQ(p.host_max_tokens(), 1u);
  EXPECT_DOUBLE_EQ(p.profile()->cpu_gemv_gbps(), 55.0);
  uint64_t host_bytes = 0;
  for (const schema::Unit* u : *p.streams()->Get(0)->units()) host_bytes += u->host() ? u->bytes() : 0;
  EXPECT_EQ(host_bytes, result->host_bytes);
  EXPECT_GT(host_bytes, 2ull << 30);
  for (const DeviceAccount& a : result->usage) EXPECT_TRUE(a.fits()) << a.Summary();
  EXPECT_TRUE(CheckPlanMemory(p).ok());
  for (const DeviceStreamPlan& st : result->schedule.streams) EXPECT_TRUE(CheckDeviceStream(st).ok());

  // A fixed share: every eligible matrix gets floor(share x rows) rounded down to 64 rows.
  r.cpu_share_auto = false;
  r.cpu_share = 0.25;
  auto fixed = MakePlan(r);
  ASSERT_TRUE(fixed.ok()) << fixed.error().ToString();
  EXPECT_DOUBLE_EQ(fixed->cpu_share, 0.25);
  for (const auto& [key, rows] : fixed->host_rows) {
    const BlockWeightLayout layout = LayoutBlockWeights(fixed->model, key.first, DType::kBF16);
    EXPECT_EQ(rows, layout.weights[key.second].shape[0] / 4 / kHostRowAlign * kHostRowAlign);
  }
}

TEST(PlannerTest, CpuShareErrors) {
  PlanRequest r;
  r.model_dir = Runfile("planner/examples/llama-2-7b");
  auto b = ParseMaxMemory("cuda:0=4GiB,cpu=64GiB");
  ASSERT_TRUE(b.ok());
  r.budget = *b;
  r.run = RunShape{1, 512};
  r.cpu_share_auto = true;
  // The default profile has no measured host rate.
  DeviceProfile profile = DefaultGpuProfile();
  profile.cpu_gemv_gbps = 0;
  r.profile = profile;
  auto no_rate = MakePlan(r);
  ASSERT_FALSE(no_rate.ok());
  EXPECT_NE(no_rate.error().message.find("cpu_gemv_gbps"), std::string::npos) << no_rate.error().message;
  profile.cpu_gemv_gbps = 50;
  r.profile = profile;
  r.run = RunShape{32, 512};
  auto batch = MakePlan(r);
  ASSERT_FALSE(batch.ok());
  EXPECT_NE(batch.error().message.find("at most 16 tokens"), std::string::npos) << batch.error().message;
  r.run = RunShape{1, 512};
  r.cpu_share_auto = false;
  r.cpu_share = 1.5;
  EXPECT_FALSE(MakePlan(r).ok());
  // float16 execution: the host multiplies bf16 or quantized rows only.
  r.cpu_share = 0.5;
  r.exec_dtype = DType::kF16;
  auto f16 = MakePlan(r);
  ASSERT_FALSE(f16.ok());
  EXPECT_NE(f16.error().message.find("no streamed matrix"), std::string::npos) << f16.error().message;
  // Everything resident: nothing streams, so nothing for the host.
  r.exec_dtype = DType::kBF16;
  auto big = ParseMaxMemory("cuda:0=40GiB,cpu=64GiB");
  ASSERT_TRUE(big.ok());
  r.budget = *big;
  EXPECT_FALSE(MakePlan(r).ok());
  // An automatic share there is no share: the plan stands, nothing on the host (and likewise in float16).
  r.cpu_share = 0;
  r.cpu_share_auto = true;
  auto resident = MakePlan(r);
  ASSERT_TRUE(resident.ok()) << resident.error().ToString();
  EXPECT_EQ(resident->cpu_share, 0.0);
  EXPECT_TRUE(resident->host_rows.empty());
  r.budget = *b;
  r.exec_dtype = DType::kF16;
  auto f16_auto = MakePlan(r);
  ASSERT_TRUE(f16_auto.ok()) << f16_auto.error().ToString();
  EXPECT_TRUE(f16_auto->host_rows.empty());
}

TEST(PlannerTest, GreedyNeverUsesMoreThanLinear) {
  PlanRequest r = ExampleRequest("planner/examples/gpt-j-6b", "cuda:0=4GiB,cpu=64GiB");
  auto placed = MakePlan(r);
  ASSERT_TRUE(placed.ok()) << placed.error().ToString();
  // The same placement (as a device map) under both algorithms, with room for the linear one.
  r.budget.gpus[0] = 64ull << 30;
  r.strategy = "explicit";
  r.device_map = PlacementToDeviceMap(placed->model, placed->placement.blocks);
  auto greedy = MakePlan(r);
  ASSERT_TRUE(greedy.ok()) << greedy.error().ToString();
  r.memory_algorithm = "linear";
  auto linear = MakePlan(r);
  ASSERT_TRUE(linear.ok()) << linear.error().ToString();
  EXPECT_LE(greedy->schedule.memory.ArenaSizeOf({schema::Pool::DeviceArena, 0}),
            linear->schedule.memory.ArenaSizeOf({schema::Pool::DeviceArena, 0}));
}

TEST(PlannerTest, NamedErrors) {
  const std::string dir = TempDir("tiny_errors");
  WriteTinyCheckpoint(dir);
  auto expect = [](const PlanRequest& r, ErrorCode code, const std::string& needle) {
    auto result = MakePlan(r);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.error().code, code) << result.error().ToString();
    EXPECT_NE(result.error().message.find(needle), std::string::npos) << result.error().message;
  };
  PlanRequest r = TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB");
  r.memory_algorithm = "first_fit";
  expect(r, ErrorCode::kInvalidArgument, "first_fit");
  r = TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB");
  r.strategy = "random";
  expect(r, ErrorCode::kInvalidArgument, "random");
  expect(TinyRequest(dir, "cuda:0=10MiB"), ErrorCode::kInfeasible, "cuda:0");
  expect(TinyRequest(dir + "/nope", "cuda:0=1GiB"), ErrorCode::kNotFound, "nope");
  const std::string broken = TempDir("tiny_missing");
  WriteTinyCheckpoint(broken, "model.layers.2.mlp.up_proj.weight");
  expect(TinyRequest(broken, "cuda:0=1GiB"), ErrorCode::kMismatch, "model.layers.2.mlp.up_proj.weight");
  PlanRequest none;
  expect(none, ErrorCode::kInvalidArgument, "model source");

  // A description the kernels cannot read (what `run` would refuse at load): a tensor renamed, another mis-shaped.
  auto good = MakePlan(TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB"));
  ASSERT_TRUE(good.ok()) << good.error().ToString();
  PlanRequest described = TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB");
  described.model_dir.clear();
  described.description = good->model;
  for (BlockDesc& b : described.description->blocks) {
    for (TensorSpec& t : b.params) {
      if (t.name == "model.layers.1.mlp.up_proj.weight") t.name = "model.layers.1.mlp.upper_proj.weight";
    }
  }
  expect(described, ErrorCode::kMismatch, "tensor 'model.layers.1.mlp.upper_proj.weight' is not one the kernel reads");
  described.description = good->model;
  for (BlockDesc& b : described.description->blocks) {
    for (TensorSpec& t : b.params) {
      if (t.name == "model.norm.weight") t.shape = {t.shape[0] + 1};
    }
  }
  expect(described, ErrorCode::kMismatch, "'model.norm.weight' has shape");
}

std::string ConfigSha256Of(const schema::Plan& plan) {
  const flatbuffers::String* s = plan.checkpoint()->config_sha256();
  return s == nullptr ? std::string() : s->str();
}

// Fingerprint.config_sha256 pins the exact config.json bytes the plan's hyperparameters came from.
TEST(PlannerTest, RecordsTheConfigJsonDigest) {
  const std::string dir = TempDir("tiny_config_sha");
  WriteTinyCheckpoint(dir);
  auto result = MakePlan(TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB"));
  ASSERT_TRUE(result.ok()) << result.error().ToString();
  EXPECT_EQ(ConfigSha256Of(result->plan()), Sha256Hex(std::string_view(kTinyConfig)));
  EXPECT_EQ(ConfigSha256Of(result->plan()).size(), 64u);

  // Not part of the shard fingerprint: the same checkpoint with another config.json keeps its digest.
  std::ofstream(dir + "/config.json") << std::string(kTinyConfig) << "\n";
  auto edited = MakePlan(TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB"));
  ASSERT_TRUE(edited.ok()) << edited.error().ToString();
  EXPECT_EQ(ConfigSha256Of(edited->plan()), Sha256Hex(std::string(kTinyConfig) + "\n"));
  EXPECT_EQ(edited->plan().checkpoint()->digest()->str(), result->plan().checkpoint()->digest()->str());

  // A model directory without weights (a bundled example): its config.json.
  PlanRequest example;
  example.model_dir = Runfile("planner/examples/llama-2-7b");
  auto b = ParseMaxMemory("cuda:0=4GiB,cpu=64GiB,disk=200GiB");
  ASSERT_TRUE(b.ok());
  example.budget = *b;
  example.run = RunShape{1, 512};
  auto from_example = MakePlan(example);
  ASSERT_TRUE(from_example.ok()) << from_example.error().ToString();
  auto config_bytes = ReadFileBytes(example.model_dir + "/config.json");
  ASSERT_TRUE(config_bytes.ok());
  EXPECT_EQ(ConfigSha256Of(from_example->plan()), Sha256Hex(config_bytes->data(), config_bytes->size()));

  // A model description: no config.json, no digest (the field is left out).
  PlanRequest described = TinyRequest(dir, "cuda:0=1GiB,cpu=1GiB");
  described.model_dir.clear();
  described.description = result->model;
  auto from_description = MakePlan(described);
  ASSERT_TRUE(from_description.ok()) << from_description.error().ToString();
  EXPECT_EQ(from_description->plan().checkpoint()->config_sha256(), nullptr);

  // A checkpoint given apart from the model directory: its own directory's config.json is not the one planned
  // from, so nothing is recorded.
  const std::string other = TempDir("tiny_config_sha_other");
  std::ofstream(other + "/config.json") << kTinyConfig;
  PlanRequest split = TinyRequest(other, "cuda:0=1GiB,cpu=1GiB");
  split.checkpoint_path = dir;
  auto from_split = MakePlan(split);
  ASSERT_TRUE(from_split.ok()) << from_split.error().ToString();
  EXPECT_FALSE(from_split->synthetic_checkpoint);
  EXPECT_EQ(ConfigSha256Of(from_split->plan()), "");
}


// ---- Batched prefills pipelined over two GPUs (PredictBatchedPrefill) ----

// Llama-3-8B's shape (no weights): hidden 4096, 32 layers, MLP 14336, 32 heads, 8 KV heads, vocab 128256, bf16.
constexpr const char* kLlama3_8bConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
  "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "hidden_act": "silu", "rope_theta": 500000.0,
  "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16"})";

// The H200 the measurements below ran on: the default GPU profile with its matmul rate and memory bandwidth.
DeviceProfile H200Profile() {
  DeviceProfile p = DefaultGpuProfile();
  p.name = "h200";
  p.matmul_tflops = 780.0;
  p.device_mem_gbps = 4230.0;
  return p;
}

// Plans Llama-3-8B's shape at batch 8 x 1024 positions, bf16, the H200 profile: `budget`, and with `group` > 0 the
// decoder layers dealt to cuda:0 and cuda:1 in groups of that many (the embedding on cuda:0, the final norm and the
// head with the last layer).
// A bf16 request for the model of `config` (config.json text) at `budget` (--max-memory) and `run`, the H200 profile.
Result<PlanRequest> H200Request(const char* config, const std::string& budget, RunShape run) {
  PlanRequest r;
  BIGPLAN_ASSIGN_OR_RETURN(r.description, ImportHfConfigText(config));
  BIGPLAN_ASSIGN_OR_RETURN(r.budget, ParseMaxMemory(budget));
  r.run = run;
  r.exec_dtype = DType::kBF16;
  r.profile = H200Profile();
  return r;
}

Result<PlanResult> PlanLlama3_8b(const std::string& budget, uint32_t group = 0) {
  BIGPLAN_ASSIGN_OR_RETURN(PlanRequest r, H200Request(kLlama3_8bConfig, budget, RunShape{8, 1024}));
  if (group > 0) {
    r.strategy = "explicit";
    r.device_map = nlohmann::json::object();
    r.device_map["model.embed_tokens"] = 0;
    int last = 0;
    for (uint32_t l = 0; l < 32; ++l) {
      last = static_cast<int>((l / group) % 2);
      r.device_map["model.layers." + std::to_string(l)] = last;
    }
    r.device_map["model.norm"] = last;
    r.device_map["lm_head"] = last;
  }
  return MakePlan(r);
}

// A predicted time against a measured range (ms), printed.
struct MeasuredRow {
  std::string what;
  double predicted_ms;
  double low_ms, high_ms;  // measured: a range, or the median twice
};

void PrintRows(const char* title, const std::vector<MeasuredRow>& rows) {
  std::printf("%s\n", title);
  for (const MeasuredRow& r : rows) {
    const double mid = (r.low_ms + r.high_ms) / 2;
    char measured[32];
    if (r.low_ms == r.high_ms) std::snprintf(measured, sizeof measured, "%.2f", r.low_ms);
    else std::snprintf(measured, sizeof measured, "%.2f-%.2f", r.low_ms, r.high_ms);
    std::printf("  %-46s predicted %7.2f  measured %-12s (%+.1f%%)\n", r.what.c_str(), r.predicted_ms, measured,
                (r.predicted_ms / mid - 1) * 100);
  }
}

// One GPU, the default (H100) profile, all resident: the Llama-2-7B and Llama-3-8B shapes against what an H100
// measured (benchmarks/RESULTS.md, "Resident speed: prefill graphs": e2e_bench's resident configuration, a fresh
// 512-token prefill with the last position's logits, best and median of 7; a graph-replayed decode step at 256
// cached tokens, median of 28). e2e_bench plans that configuration at max_batch rows x 2 x 512 positions and records the plan's
// own prefill prediction (a prefill of all those positions), which is not the pass it times; the prediction for that
// pass is PredictBatchedPrefill's for 1 row x 512 tokens. `plan` at 1 x 512 positions reports the prefill of the
// run shape (`result.prefill`, every position's logits) and the decode step that RESULTS.md compared.
TEST(PlannerTest, ResidentPrefillAndDecodeOnAnH100) {
  std::vector<MeasuredRow> rows;
  double batched_ms[2] = {0, 0}, prefill_ms[2] = {0, 0};
  int index = 0;
  for (const char* shape : {"llama-3-8b", "llama-2-7b"}) {
    PlanRequest r;
    if (std::string(shape) == "llama-3-8b") {
      auto model = ImportHfConfigText(kLlama3_8bConfig);
      ASSERT_TRUE(model.ok());
      r.description = *model;
    } else {
      r.model_dir = Runfile("planner/examples/llama-2-7b");
    }
    auto b = ParseMaxMemory("cuda:0=70GiB,cpu=100GiB");
    ASSERT_TRUE(b.ok());
    r.budget = *b;
    r.exec_dtype = DType::kBF16;
    r.run = RunShape{1, 1024};  // e2e_bench's resident configuration with --prefill 512, decode batch 1
    auto bench = MakePlan(r);
    ASSERT_TRUE(bench.ok()) << bench.error().ToString();
    EXPECT_EQ(bench->profile.name, DefaultGpuProfile().name);
    r.run = RunShape{1, 512};  // `plan` at 512 positions
    auto at512 = MakePlan(r);
    ASSERT_TRUE(at512.ok()) << at512.error().ToString();
    auto pass = PredictBatchedPrefill(*bench, 1, 512);
    ASSERT_TRUE(pass.ok()) << pass.error().ToString();
    batched_ms[index] = pass->total_us / 1e3;
    prefill_ms[index] = at512->prefill.total_us / 1e3;
    const bool l3 = index == 0;
    const std::string name = l3 ? "Llama-3-8B" : "Llama-2-7B";
    // Best and median of 7 graph-replayed prefills (benchmarks/results/h100-2026-11-27-graphs/).
    rows.push_back({name + " 1 x 512 prefill, last position", batched_ms[index], l3 ? 11.65 : 10.85,
                    l3 ? 12.58 : 10.95});
    rows.push_back({name + " 1 x 512 prefill, every position", prefill_ms[index], l3 ? 11.65 : 10.85,
                    l3 ? 12.58 : 10.95});
    rows.push_back({name + " decode step (graph), KV 512", at512->decode.total_us / 1e3, l3 ? 6.20 : 5.63,
                    l3 ? 6.20 : 5.63});
    ++index;
  }
  PrintRows("Resident on one GPU, default H100 profile; predicted vs measured on an H100 (ms):", rows);
  // The plan's prefill of every position also runs the head over every position.
  EXPECT_GT(prefill_ms[0], batched_ms[0]);
  EXPECT_GT(prefill_ms[1], batched_ms[1]);
  // The larger MLP and the larger head: Llama-3-8B's shape takes longer.
  EXPECT_GT(batched_ms[0], batched_ms[1]);
}

// Predictions against what 2x H200 measured (cost_model.h kPrefillMatmulEfficiency and SimulatePipelinedPass give
// the calibration): B = 8 rows x T = 512 tokens, logits of the last position only; pipelined passes replayed from
// CUDA graphs, medians. Printed, not asserted: the assertions are the model's structure.
TEST(PlannerTest, BatchedPrefillPipelinedOverTwoGpus) {
  auto one = PlanLlama3_8b("cuda:0=40GiB");
  ASSERT_TRUE(one.ok()) << one.error().ToString();
  auto split = PlanLlama3_8b("cuda:0=16GiB,cuda:1=16GiB", 16);
  ASSERT_TRUE(split.ok()) << split.error().ToString();
  auto groups8 = PlanLlama3_8b("cuda:0=16GiB,cuda:1=16GiB", 8);
  ASSERT_TRUE(groups8.ok()) << groups8.error().ToString();
  auto groups4 = PlanLlama3_8b("cuda:0=16GiB,cuda:1=16GiB", 4);
  ASSERT_TRUE(groups4.ok()) << groups4.error().ToString();
  auto groups2 = PlanLlama3_8b("cuda:0=16GiB,cuda:1=16GiB", 2);
  ASSERT_TRUE(groups2.ok()) << groups2.error().ToString();
  // The contiguous split as measured: embedding + layers 0-15 on cuda:0, the rest on cuda:1.
  ASSERT_EQ(split->placement.blocks.front().device, 0);
  ASSERT_EQ(split->placement.blocks[16].device, 0);
  ASSERT_EQ(split->placement.blocks[17].device, 1);
  ASSERT_EQ(split->placement.blocks.back().device, 1);

  EXPECT_FALSE(PipelinablePlan(*one));
  for (const PlanResult* p : {&*split, &*groups8, &*groups4, &*groups2}) EXPECT_TRUE(PipelinablePlan(*p));

  auto predict = [](const PlanResult& p, uint32_t rows, uint32_t tokens, int mb_rows) {
    auto r = PredictBatchedPrefill(p, rows, tokens, mb_rows);
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return r.ok() ? *r : BatchedPrefillPrediction{};
  };
  const BatchedPrefillPrediction one8 = predict(*one, 8, 512, 0);
  const BatchedPrefillPrediction one1 = predict(*one, 1, 512, 0);
  const BatchedPrefillPrediction split_off = predict(*split, 8, 512, -1);
  const BatchedPrefillPrediction split_auto = predict(*split, 8, 512, 0);
  const BatchedPrefillPrediction split_1 = predict(*split, 8, 512, 1);
  const BatchedPrefillPrediction split_2 = predict(*split, 8, 512, 2);
  const BatchedPrefillPrediction g8_1 = predict(*groups8, 8, 512, 1);
  const BatchedPrefillPrediction g8_2 = predict(*groups8, 8, 512, 2);
  const BatchedPrefillPrediction g4_1 = predict(*groups4, 8, 512, 1);
  const BatchedPrefillPrediction g4_2 = predict(*groups4, 8, 512, 2);
  const BatchedPrefillPrediction g2_1 = predict(*groups2, 8, 512, 1);
  const BatchedPrefillPrediction g2_2 = predict(*groups2, 8, 512, 2);

  const BatchedPrefillPrediction g4_2_pairs = [&] {
    auto r = PredictBatchedPrefill(*groups4, 8, 512, 2, 2);
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return r.ok() ? *r : BatchedPrefillPrediction{};
  }();
  // Measured: benchmarks/results/h200x2-2026-11-27-inflight/ (medians of 7; every micro-batch in flight unless said).
  PrintRows("Llama-3-8B shape, bf16, 2x H200 profile; predicted vs measured (ms; medians):",
            {{"one GPU, 1 x 512 (graph)", one1.total_us / 1e3, 12.47, 12.47},
             {"one GPU, 1 x 512: host issue (eager; earlier build)", one1.host_us / 1e3, 5.4, 5.8},
             {"one GPU, unpipelined 8 x 512 (graph)", one8.total_us / 1e3, 94.6, 97.8},
             {"contiguous, unpipelined", split_off.total_us / 1e3, 83.5, 83.5},
             {"contiguous, 8 x 1 row", split_1.total_us / 1e3, 59.8, 59.8},
             {"contiguous, 4 x 2 rows", split_2.total_us / 1e3, 61.1, 61.1},
             {"groups of 8, 8 x 1 row", g8_1.total_us / 1e3, 55.3, 55.3},
             {"groups of 8, 4 x 2 rows", g8_2.total_us / 1e3, 53.0, 53.0},
             {"groups of 4, 8 x 1 row", g4_1.total_us / 1e3, 54.9, 54.9},
             {"groups of 4, 4 x 2 rows", g4_2.total_us / 1e3, 50.8, 51.3},
             {"groups of 4, 4 x 2 rows, two in flight", g4_2_pairs.total_us / 1e3, 51.8, 52.0},
             {"groups of 2, 8 x 1 row", g2_1.total_us / 1e3, 54.4, 54.4},
             {"groups of 2, 4 x 2 rows", g2_2.total_us / 1e3, 50.0, 53.1}});
  std::printf("  host issue of the replayed passes (predicted): contiguous 8 x 1 %.2f ms, groups of 2 8 x 1 %.2f ms "
              "(measured about 1-4 ms for such passes)\n", split_1.host_us / 1e3, g2_1.host_us / 1e3);

  // The automatic rule at 512 tokens and 8 rows over two GPUs: one row per micro-batch, doubled while more than two
  // micro-batches per GPU remain: 4 micro-batches of 2 rows.
  EXPECT_EQ(split_auto.micro_batches, 4u);
  EXPECT_EQ(split_auto.rows_per_micro_batch, 2u);
  EXPECT_DOUBLE_EQ(split_auto.total_us, split_2.total_us);
  EXPECT_EQ(split_2.micro_batches, 4u);
  EXPECT_EQ(split_2.rows_per_micro_batch, 2u);
  // Not pipelined: one GPU, -1, or micro-batches of more than half the rows.
  EXPECT_EQ(one8.micro_batches, 0u);
  EXPECT_DOUBLE_EQ(one8.total_us, one8.unpipelined_us);
  EXPECT_EQ(split_off.micro_batches, 0u);
  EXPECT_DOUBLE_EQ(split_off.total_us, split_off.unpipelined_us);
  EXPECT_EQ(predict(*split, 8, 512, 5).micro_batches, 0u);
  EXPECT_EQ(predict(*split, 1, 512, 0).micro_batches, 0u);
  EXPECT_EQ(predict(*split, 8, 128, 0).micro_batches, 2u);   // ceil(512 / 128) = 4 rows
  EXPECT_EQ(predict(*split, 8, 64, 0).micro_batches, 0u);     // 8 rows per micro-batch: one
  // Every pipelined prediction knows the unpipelined pass of the same plan.
  EXPECT_DOUBLE_EQ(split_1.unpipelined_us, split_off.unpipelined_us);
  // A compute-bound pass: eight rows cost about eight times one row (the head and the kernels' gaps are paid once).
  EXPECT_GT(one8.total_us, 7 * one1.total_us);
  EXPECT_LT(one8.total_us, 8 * one1.total_us);
  // The split pays the hop over the one-GPU pass.
  EXPECT_GT(split_off.unpipelined_us, one8.unpipelined_us);
  // Pipelining over two GPUs beats the unpipelined pass, but cannot beat half of it; the host issues a replayed pass
  // in a small part of it (a few tens of microseconds per task), far less than the eager pass's ops.
  for (const BatchedPrefillPrediction* p : {&split_1, &split_2, &g8_1, &g8_2, &g4_1, &g4_2, &g2_1, &g2_2}) {
    EXPECT_LT(p->total_us, p->unpipelined_us);
    EXPECT_GT(p->total_us, p->unpipelined_us / 2);
    EXPECT_LT(p->host_us, 0.1 * p->total_us);
    EXPECT_LT(p->host_us, split_off.host_us);
  }
  // Host issue: one task per micro-batch and segment.
  EXPECT_DOUBLE_EQ(split_1.host_us, 8 * 2 * kHostGraphTaskMicros);
  EXPECT_DOUBLE_EQ(g2_1.host_us, 8 * 16 * kHostGraphTaskMicros);
  // Interleaving the layers shortens the pipeline's fill and drain: with one row per micro-batch, every interleaved
  // split beats the contiguous one.
  for (const BatchedPrefillPrediction* p : {&g8_1, &g4_1, &g2_1}) EXPECT_LT(p->total_us, split_1.total_us);
  // Short rows: every micro-batch reads every weight again, so micro-batches of one row of 16 tokens lose to one pass
  // of all rows.
  const BatchedPrefillPrediction short_rows = predict(*split, 8, 16, 1);
  EXPECT_EQ(short_rows.micro_batches, 8u);
  EXPECT_GT(short_rows.total_us, short_rows.unpipelined_us);
  EXPECT_FALSE(PredictBatchedPrefill(*split, 0, 512).ok());
  EXPECT_FALSE(PredictBatchedPrefill(*split, 8, 0).ok());
}


// The Mixtral-8x7B shape cut to `layers` layers, bf16, batch 1, sequence 512, the H200 profile.
Result<PlanRequest> MixtralRequest(int layers, const std::string& budget) {
  const std::string config = R"({
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": )" + std::to_string(layers) + R"(, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": false,
    "torch_dtype": "bfloat16"})";
  return H200Request(config.c_str(), budget, RunShape{1, 512});
}

// The Mixtral-8x7B shape (8 of its 32 layers), bf16, batch 1, the H200 profile with a host rate.
Result<PlanResult> PlanMixtral8Layers(const std::string& budget, const std::string& candidates = "") {
  BIGPLAN_ASSIGN_OR_RETURN(PlanRequest r, MixtralRequest(8, budget));
  r.profile->cpu_gemv_gbps = 100;
  r.cpu_share_auto = true;
  if (!candidates.empty()) r.auto_candidates = candidates;
  return MakePlan(r);
}

// One GPU at 16 GiB: a sparse layer's decode is predicted from its paths (cost_model.h, kRouteSyncMicros): a token
// whose two choices are resident (C(resident, 2) / C(8, 2) of them) reads them on the GPU; the others move their
// off-GPU bytes, the host and the copies at once, then the GPU runs the next attention half and router
// (SparseLayerDenseMicros: every non-expert weight, the KV cache and the attention half's kernels).
TEST(PlannerTest, MixtureOfExpertsDecodeFollowsItsPaths) {
  auto plan = PlanMixtral8Layers("cuda:0=16GiB,cpu=100GiB", "BPCE");
  ASSERT_TRUE(plan.ok()) << plan.error().ToString();
  ASSERT_EQ(plan->placement.chosen, "E");
  ASSERT_EQ(plan->expert_rings.size(), 1u);
  const ModelDescription& model = plan->model;
  const ModelConfig& c = model.config;
  int sparse = 0;
  for (size_t i = 0; i < model.blocks.size(); ++i) {
    if (!plan->placement.blocks[i].routed_experts) continue;
    ++sparse;
    // The resident experts of the layer: those whose weights all rest on the GPU.
    std::map<int32_t, bool> resident;
    const BlockWeightLayout layout = LayoutBlockWeights(model, i, DType::kBF16);
    for (size_t w = 0; w < layout.weights.size(); ++w) {
      const int32_t e = ExpertOfWeight(model, i, w);
      if (e < 0) continue;
      const bool gpu = plan->placement.blocks[i].weight_tiers[w] == Tier::kGpu;
      resident[e] = resident.count(e) ? resident[e] && gpu : gpu;
    }
    ASSERT_EQ(resident.size(), c.num_experts);
    double r = 0;
    for (const auto& [e, gpu] : resident) r += gpu;
    const ExpertBytes b = ExpectedExpertBytes(model, i, plan->placement.blocks[i], DType::kBF16, 0.5);
    EXPECT_NEAR(b.all_resident, r * (r - 1) / (8.0 * 7.0), 1e-12) << i;
    EXPECT_GT(b.host + b.copied, 0) << i;
    // The attention half: its weights (q, k, v, o: 4096 x 6144 and 4096 x 4096), the norms and the router read at the
    // profile's HBM rate, the KV cache at 512 positions; its 4 kernels, the router's product with the norm, the top k
    // and the residual's add.
    const double bytes = 2.0 * (4096.0 * 6144 + 4096.0 * 4096 + 2 * 4096 + 8 * 4096) + 2.0 * 8 * 128 * 2 * 512;
    EXPECT_NEAR(SparseLayerDenseMicros(model, i, DType::kBF16, RunSize{1, 512}, plan->profile),
                bytes / (plan->profile.device_mem_gbps * 1e3) + 7 * kGpuKernelMicros, 1e-6)
        << i;
  }
  EXPECT_EQ(sparse, 8);
  // The decode step is at least its paths' floor and the GPU's part of every layer, and within 1.5x of the floor.
  EXPECT_GT(plan->decode.total_us, plan->expert_floor_us);
  EXPECT_LT(plan->decode.total_us, 1.5 * plan->expert_floor_us);
}

// Where a GPU cannot hold the weights other than the routed experts and an expert ring, candidate E says which budget
// would (and, for plain experts, that --weights shrinks them); at that budget E is chosen, a tenth of a GiB below it
// is not feasible. (This shape's streamed layers need more staging than E needs in all, so below E's budget no
// placement fits and the plan's error carries E's reason.)
TEST(PlannerTest, ExpertPlacementNamesTheBudgetItNeeds) {
  const char* config = R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 4096, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
    "num_hidden_layers": 4, "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16"})";
  auto plan_at = [&](const std::string& gpu) -> Result<PlanResult> {
    BIGPLAN_ASSIGN_OR_RETURN(PlanRequest r, H200Request(config, "cuda:0=" + gpu + ",cpu=100GiB", RunShape{1, 512}));
    return MakePlan(r);
  };
  Result<PlanResult> small = plan_at("2GiB");
  ASSERT_FALSE(small.ok());
  const std::string why = small.error().message;
  const std::string key = "routing experts from this GPU needs cuda:0=";
  const size_t at = why.find(key);
  ASSERT_NE(at, std::string::npos) << why;
  EXPECT_NE(why.find("placement E: cuda:0: the weights other than the routed experts"), std::string::npos) << why;
  EXPECT_NE(why.find("--weights int8 or int4"), std::string::npos) << why;
  const std::string needed = why.substr(at + key.size(), why.find("GiB", at) - at - key.size());
  const double gib = std::stod(needed);
  EXPECT_GT(gib, 2.0);
  Result<PlanResult> enough = plan_at(needed + "GiB");
  ASSERT_TRUE(enough.ok()) << enough.error().ToString();
  EXPECT_EQ(enough->placement.chosen, "E");
  char below[32];
  std::snprintf(below, sizeof below, "%.1fGiB", gib - 0.1);
  Result<PlanResult> short_of = plan_at(below);
  ASSERT_FALSE(short_of.ok());
  EXPECT_NE(short_of.error().message.find(key + needed + "GiB"), std::string::npos) << short_of.error().message;
}

// Quantized experts (--weights int8): a sparse layer's decode unpacks the experts its tokens choose (k of E), not
// every expert of the layer.
TEST(PlannerTest, QuantizedSparseLayerUnpacksTheChosenExperts) {
  auto q = [&]() -> Result<PlanResult> {
    BIGPLAN_ASSIGN_OR_RETURN(PlanRequest r, MixtralRequest(2, "cuda:0=40GiB,cpu=100GiB"));
    r.weights = quant::Format::kInt8;
    return MakePlan(r);
  }();
  ASSERT_TRUE(q.ok()) << q.error().ToString();
  const ModelDescription& model = q->model;
  for (size_t i = 0; i < model.blocks.size(); ++i) {
    if (model.blocks[i].kind != BlockKind::kDecoderLayer) continue;
    double expert = 0, other = 0;
    uint32_t expert_tensors = 0, other_tensors = 0;
    for (const TensorSpec& t : model.blocks[i].params) {
      if (t.format == quant::Format::kNone) continue;
      const bool is_expert = t.name.find(".experts.") != std::string::npos;
      (is_expert ? expert : other) += 2.0 * 2.0 * static_cast<double>(t.numel());  // int8 unpacked to bf16
      ++(is_expert ? expert_tensors : other_tensors);
    }
    ASSERT_EQ(expert_tensors, 24u);
    const BlockWork w = DescribeBlockWork(model, i, DType::kBF16);
    EXPECT_NEAR(static_cast<double>(w.dequant_bytes), other + expert * 2.0 / 8.0, 2.0) << i;
    // Three unpacking kernels per quantized matrix the token uses.
    EXPECT_EQ(w.cpu_kernels, arch::BlockKernels(*arch::FindFamily(model.architecture), BlockKind::kDecoderLayer,
                                                model.config) +
                                 3 * (other_tensors + expert_tensors * 2 / 8))
        << i;
  }
}

// Quantized experts (--weights) are routed as bf16 ones: the ring's slots hold an expert's quantized rows, the host
// multiplies its share of them in their format; where the CPU budget would put some on disk, E says why (a disk read
// would have to quantize on the way).
TEST(PlannerTest, QuantizedExpertsAreRouted) {
  // (share < 0: the planner's choice)
  auto plan = [](const std::string& budget, const std::string& candidates, quant::Format format,
                 double share = -1) -> Result<PlanResult> {
    BIGPLAN_ASSIGN_OR_RETURN(PlanRequest r, H200Request(R"({
      "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
      "num_hidden_layers": 8, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
      "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
      "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16"})",
                                                         budget, RunShape{1, 512}));
    r.weights = format;
    r.auto_candidates = candidates;
    r.cpu_share_auto = share < 0;
    if (share >= 0) r.cpu_share = share;
    return MakePlan(r);
  };
  auto fits = plan("cuda:0=16GiB,cpu=100GiB", "BPCE", quant::Format::kInt8);  // 11.2 GiB in int8: all resident
  ASSERT_TRUE(fits.ok()) << fits.error().ToString();
  EXPECT_EQ(fits->placement.chosen, "E");
  EXPECT_TRUE(fits->expert_rings.empty());
  auto plain = plan("cuda:0=8GiB,cpu=100GiB", "BPCE", quant::Format::kNone);
  ASSERT_TRUE(plain.ok()) << plain.error().ToString();
  for (quant::Format format : {quant::Format::kInt8, quant::Format::kFp8E4M3, quant::Format::kInt4}) {
    SCOPED_TRACE(quant::FormatName(format));
    // (int4 takes 5.9 GiB: every expert would fit 8 GiB)
    auto routed = plan(format == quant::Format::kInt4 ? "cuda:0=4GiB,cpu=100GiB" : "cuda:0=8GiB,cpu=100GiB", "BPCE",
                       format, 0.5);
    ASSERT_TRUE(routed.ok()) << routed.error().ToString();
    EXPECT_EQ(routed->placement.chosen, "E");
    ASSERT_EQ(routed->expert_rings.size(), 1u);
    const ExpertRingPlan& ring = routed->expert_rings.begin()->second;
    // A slot holds one expert's three quantized matrices, each 256-aligned.
    auto rows = [&](int64_t k) { return *quant::RowBytes(format, k, *quant::DefaultGroup(format, k)); };
    const uint64_t gate = (14336 * rows(4096) + 255) / 256 * 256, down = (4096 * rows(14336) + 255) / 256 * 256;
    EXPECT_EQ(ring.slot_bytes, 2 * gate + down);
    EXPECT_EQ(ring.disk_slots, 0u);
    EXPECT_GT(ring.expected_copied_bytes, 0.0);
    EXPECT_DOUBLE_EQ(ring.cpu_share, 0.5);  // the host multiplies quantized rows too
    // ... these experts (90-176 MB) are split where the share ends, as plain ones: half the chosen pinned bytes.
    const ExpertBytes layer = ExpectedExpertBytes(routed->model, 1, routed->placement.blocks[1], DType::kBF16, 0.5);
    ASSERT_GT(layer.pinned_experts, 0u);
    EXPECT_NEAR(layer.host, 2.0 / 8 * layer.pinned_experts * static_cast<double>(2 * gate + down) * 0.5, 1.0);
    EXPECT_GT(ring.expected_host_bytes, 0.0);
    // Each sparse layer takes at least the router's synchronization and the host's issue of its eager ops, more
    // of them than with plain attention (its quantized products unfused).
    double issue_bound = 0;
    for (size_t i = 0; i < routed->model.blocks.size(); ++i) {
      if (!routed->placement.blocks[i].routed_experts) continue;
      const double issue = SparseLayerIssueMicros(routed->model, i);
      EXPECT_GT(issue, SparseLayerIssueMicros(plain->model, i));
      issue_bound += kRouteSyncMicros + issue;
    }
    EXPECT_GT(issue_bound, 0.0);
    EXPECT_GE(routed->decode.total_us, issue_bound);
  }
  // Experts under the executor's split size go whole to one side: of a token's n chosen pinned-resting ones the
  // host takes round(0.5 n), halves up.
  {
    auto small = H200Request(R"({
      "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
      "moe_intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 4,
      "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true, "vocab_size": 151936,
      "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "hidden_act": "silu",
      "tie_word_embeddings": false, "torch_dtype": "bfloat16"})",
                             "cuda:0=2GiB,cpu=100GiB", RunShape{1, 512});
    ASSERT_TRUE(small.ok()) << small.error().ToString();
    small->weights = quant::Format::kInt8;
    small->auto_candidates = "E";
    small->cpu_share_auto = false;
    small->cpu_share = 0.5;
    auto routed = MakePlan(*small);
    ASSERT_TRUE(routed.ok()) << routed.error().ToString();
    const ExpertBytes layer = ExpectedExpertBytes(routed->model, 1, routed->placement.blocks[1], DType::kBF16, 0.5);
    ASSERT_GT(layer.pinned_experts, 0u);
    const uint64_t each = (768 * *quant::RowBytes(quant::Format::kInt8, 2048, 2048) + 255) / 256 * 256 * 2 +
                          2048 * *quant::RowBytes(quant::Format::kInt8, 768, 768);
    ASSERT_LT(each, kExpertSplitMinBytes);
    double whole = 0;
    for (uint32_t n = 1; n <= 8; ++n) whole += ChoiceCountChance(128, layer.pinned_experts, 8, n) * HostWholeExperts(0.5, n);
    EXPECT_NEAR(layer.host, whole * static_cast<double>(each), 0.01 * whole * static_cast<double>(each));
  }
  // 8 GiB of GPU and 4 GiB of CPU: some experts would rest on disk.
  auto tight = plan("cuda:0=8GiB,cpu=4GiB,disk=100GiB", "E", quant::Format::kInt8);
  ASSERT_FALSE(tight.ok());
  EXPECT_NE(tight.error().message.find("move to the GPU from pinned memory only"), std::string::npos)
      << tight.error().message;
  EXPECT_NE(tight.error().message.find("model.layers."), std::string::npos) << tight.error().message;
  // (No placement leaves quantized weights on disk.)
  auto any = plan("cuda:0=8GiB,cpu=4GiB,disk=100GiB", "BPCE", quant::Format::kInt8);
  ASSERT_FALSE(any.ok());
  EXPECT_NE(any.error().message.find("raise the cpu budget"), std::string::npos) << any.error().message;
}

// Weights quantized at load split over the GPUs as plain ones: a shard's columns of a per-row-scaled weight are
// scaled per row of those columns; with groups, a shard's columns must hold whole groups, else T says which tensor.
TEST(PlannerTest, TensorParallelSplitsQuantizedWeights) {
  auto plan = [](quant::Format f, int64_t group) {
    PlanRequest r = ExampleRequest("planner/examples/llama-2-7b", "cuda:0=8GiB,cuda:1=8GiB,cpu=64GiB");
    r.auto_candidates = "T";
    r.weights = f;
    r.weights_group = group;
    return MakePlan(r);
  };
  auto int8 = plan(quant::Format::kInt8, 0);
  ASSERT_TRUE(int8.ok()) << int8.error().ToString();
  EXPECT_EQ(int8->tensor_parallel, 2u);
  int columns = 0;
  for (size_t i = 0; i < int8->model.blocks.size(); ++i) {
    for (const TensorSpec& t : int8->model.blocks[i].params) {
      auto slice = int8->slices[i].find(t.name);
      if (t.format == quant::Format::kNone || slice == int8->slices[i].end() || slice->second.dim != 1) continue;
      ++columns;
      EXPECT_EQ(t.group, t.shape[1]) << t.name;  // per row of the shard's columns
    }
  }
  EXPECT_EQ(columns, 2 * 2 * static_cast<int>(int8->source_model.config.num_layers));  // o_proj, down_proj
  auto int4 = plan(quant::Format::kInt4, 128);
  ASSERT_TRUE(int4.ok()) << int4.error().ToString();
  EXPECT_EQ(int4->tensor_parallel, 2u);
  // down_proj's 11008 columns are 43 groups of 256: a shard's 5504 cut one.
  auto cut = plan(quant::Format::kInt8, 256);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.error().message.find("groups of 256 columns do not fit a shard's 5504 columns"), std::string::npos)
      << cut.error().message;
}

// A mixture-of-experts model over two GPUs keeps placement E: one contiguous range of blocks per GPU, each GPU with its
// own expert ring for its layers' experts off it (the executor copies them over that GPU's link), and only the chosen
// experts move, where whole layers streamed before (placement P: predicted 5x slower, measured 13x on 2x H200). With
// every expert resident the decode step is predicted from CUDA graphs, and split over two GPUs it costs no more than
// the hidden state's hop.
TEST(PlannerTest, MixtureOfExpertsOverTwoGpusRoutesEachGpusExperts) {
  auto two = PlanMixtral8Layers("cuda:0=8GiB,cuda:1=8GiB,cpu=100GiB");
  ASSERT_TRUE(two.ok()) << two.error().ToString();
  EXPECT_EQ(two->placement.chosen, "E");
  int last = -1;
  std::set<int32_t> devices;
  for (const BlockPlacement& b : two->placement.blocks) {
    EXPECT_GE(b.device, last) << "one contiguous range per GPU";
    last = b.device;
    devices.insert(b.device);
  }
  EXPECT_EQ(devices, (std::set<int32_t>{0, 1}));
  ASSERT_EQ(two->expert_rings.size(), 2u);
  for (const auto& [device, ring] : two->expert_rings) {
    EXPECT_EQ(ring.device, device);
    EXPECT_GT(ring.expected_copied_bytes, 0) << device;
    EXPECT_GT(ring.expected_host_bytes, 0) << device;
  }
  EXPECT_FALSE(two->graph_decode);
  auto streamed = PlanMixtral8Layers("cuda:0=8GiB,cuda:1=8GiB,cpu=100GiB", "BPC");
  ASSERT_TRUE(streamed.ok()) << streamed.error().ToString();
  EXPECT_TRUE(streamed->expert_rings.empty());
  EXPECT_GT(streamed->decode.total_us, 4 * two->decode.total_us);
  // Every expert resident: graphs, and the split by layers (E over both GPUs) within a few percent of one GPU.
  auto one = PlanMixtral8Layers("cuda:0=60GiB,cpu=100GiB");
  auto split = PlanMixtral8Layers("cuda:0=16GiB,cuda:1=16GiB,cpu=100GiB", "BPCEIS");
  ASSERT_TRUE(one.ok()) << one.error().ToString();
  ASSERT_TRUE(split.ok()) << split.error().ToString();
  EXPECT_TRUE(one->expert_rings.empty());
  EXPECT_TRUE(split->expert_rings.empty());
  EXPECT_TRUE(one->graph_decode);
  EXPECT_TRUE(split->graph_decode);
  EXPECT_EQ(split->tensor_parallel, 0u);
  EXPECT_LE(split->decode.total_us, 1.05 * one->decode.total_us);
  // With candidate T, every block split over both GPUs: each GPU holds its rows of every expert (gate and up by
  // rows, down by columns of the expert's intermediate size), the router whole, and a decode step reads half of
  // each chosen expert on each GPU at once: predicted well below the split by layers.
  auto tp = PlanMixtral8Layers("cuda:0=16GiB,cuda:1=16GiB,cpu=100GiB");
  ASSERT_TRUE(tp.ok()) << tp.error().ToString();
  EXPECT_EQ(tp->placement.chosen, "T");
  EXPECT_EQ(tp->tensor_parallel, 2u);
  EXPECT_TRUE(tp->graph_decode);
  EXPECT_TRUE(tp->expert_rings.empty());
  EXPECT_LT(tp->decode.total_us, kTensorParallelGain * split->decode.total_us);
  const uint32_t inter = tp->source_model.config.moe_intermediate_size;
  int experts = 0, routers = 0;
  const schema::Plan& p = tp->plan();
  for (const schema::Block* b : *p.blocks()) {
    EXPECT_EQ(b->tier(), schema::Tier::Gpu);
    for (const schema::Weight* w : *b->weights()) {
      const std::string name = p.tensors()->Get(w->tensor())->name()->str();
      if (name.find(".experts.") != std::string::npos) {
        ++experts;
        const bool down = name.find(".w2.") != std::string::npos;
        EXPECT_EQ(w->slice_dim(), down ? 1 : 0) << name;
        EXPECT_EQ(w->slice_begin(), static_cast<int64_t>(b->shard() * inter / 2)) << name;
        EXPECT_EQ(w->slice_end(), static_cast<int64_t>((b->shard() + 1) * inter / 2)) << name;
      } else if (name.find("block_sparse_moe.gate.") != std::string::npos) {
        ++routers;
        EXPECT_LT(w->slice_dim(), 0) << name;
      }
    }
  }
  const ModelConfig& c = tp->source_model.config;
  EXPECT_EQ(experts, static_cast<int>(2 * 3 * c.num_experts * c.num_layers));
  EXPECT_EQ(routers, static_cast<int>(2 * c.num_layers));
  // Budgets E cannot split: the error says what each GPU must hold.
  auto tight = PlanMixtral8Layers("cuda:0=1GiB,cuda:1=1GiB,cpu=100GiB", "E");
  ASSERT_FALSE(tight.ok());
  EXPECT_NE(tight.error().message.find("placement E: no split of the blocks over the GPUs fits"), std::string::npos)
      << tight.error().message;
}

}  // namespace
}  // namespace bigplan
