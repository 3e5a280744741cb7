// Pre-quantized checkpoints (FP8 block, FP8 per channel, GPTQ) through the importer and the planner: each linear
// weight becomes one param with its source tensors, the plan records them (version 5) and verifies, and bad
// checkpoints are refused naming the file and the tensor.
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <gtest/gtest.h>

#include "planner/hf_import.h"
#include "planner/plan_report.h"
#include "planner/planner.h"
#include "schema/plan_io.h"
#include "tools/tiny_prequant.h"

namespace bigplan {
namespace {

namespace fs = std::filesystem;

std::string TempDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(tmp ? tmp : "/tmp") / ("prequant_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string Write(const std::string& name, TinyQuant kind, const TinyPreQuantOptions& options = {}) {
  const std::string dir = TempDir(name);
  Status st = WriteTinyPreQuantLlama(dir, "", kind, options);
  EXPECT_TRUE(st.ok()) << st.error().message;
  return dir;
}

PlanRequest CpuRequest(const std::string& dir) {
  PlanRequest r;
  r.model_dir = dir;
  r.budget.cpu = 1ull << 30;
  r.exec_dtype = DType::kF32;
  r.run = RunShape{2, 16};
  return r;
}

const TensorSpec* Param(const ModelDescription& m, const std::string& name) { return m.FindParam(name); }

TEST(PreQuantImport, Fp8BlockWeightsAreOneParamWithTheirScales) {
  const std::string dir = Write("fp8_block", TinyQuant::kFp8Block);
  Result<ModelDescription> m = ImportHfDirectory(dir);
  ASSERT_TRUE(m.ok()) << m.error().message;
  const TensorSpec* q = Param(*m, "model.layers.0.self_attn.k_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(q->dtype, DType::kF8E4M3);
  EXPECT_EQ(q->format, quant::Format::kFp8E4M3);
  EXPECT_EQ(q->group, 32);
  EXPECT_EQ(q->prequant.kind, PreQuant::Kind::kFp8);
  EXPECT_EQ(q->prequant.block_rows, 32);
  EXPECT_EQ(q->prequant.sources, (std::vector<std::string>{"model.layers.0.self_attn.k_proj.weight",
                                                           "model.layers.0.self_attn.k_proj.weight_scale_inv"}));
  EXPECT_EQ(q->bytes(), 32u * (64 + 2 * 4));  // the quantized size
  // lm_head is listed in modules_to_not_convert: plain.
  const TensorSpec* head = Param(*m, "lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->format, quant::Format::kNone);
  EXPECT_EQ(head->prequant.kind, PreQuant::Kind::kNone);
  // The description round-trips through its JSON.
  Result<ModelDescription> again = ModelDescription::Parse(m->ToJson(), "round trip");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(*again, *m);
}

TEST(PreQuantImport, Fp8ChannelAndGptq) {
  {
    Result<ModelDescription> m = ImportHfDirectory(Write("fp8_channel", TinyQuant::kFp8Channel));
    ASSERT_TRUE(m.ok()) << m.error().message;
    const TensorSpec* q = Param(*m, "model.layers.1.mlp.down_proj.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->group, 128);  // per row
    EXPECT_EQ(q->prequant.block_rows, 0);
    EXPECT_EQ(q->prequant.sources[1], "model.layers.1.mlp.down_proj.weight_scale");
  }
  {
    Result<ModelDescription> m = ImportHfDirectory(Write("gptq", TinyQuant::kGptq));
    ASSERT_TRUE(m.ok()) << m.error().message;
    const TensorSpec* q = Param(*m, "model.layers.1.mlp.down_proj.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->shape, (std::vector<int64_t>{64, 128}));
    EXPECT_EQ(q->dtype, DType::kF16);  // the scales' dtype
    EXPECT_EQ(q->format, quant::Format::kInt4);
    EXPECT_EQ(q->group, 32);
    EXPECT_TRUE(q->prequant.v1_zero_offset);
    EXPECT_FALSE(q->prequant.act_order);  // g_idx is c / 32
    EXPECT_EQ(q->prequant.sources.size(), 4u);
    EXPECT_EQ(q->prequant.sources[0], "model.layers.1.mlp.down_proj.qweight");
    Result<ModelDescription> again = ModelDescription::Parse(m->ToJson(), "round trip");
    ASSERT_TRUE(again.ok()) << again.error().message;
    EXPECT_EQ(*again, *m);
  }
  {
    // Act-order: its columns are permuted at load, which the description records (a tensor-parallel shard cannot
    // take a range of them).
    Result<ModelDescription> m = ImportHfDirectory(Write("gptq_act", TinyQuant::kGptqActOrder));
    ASSERT_TRUE(m.ok()) << m.error().message;
    const TensorSpec* q = Param(*m, "model.layers.1.mlp.down_proj.weight");
    ASSERT_NE(q, nullptr);
    EXPECT_TRUE(q->prequant.act_order);
    Result<ModelDescription> again = ModelDescription::Parse(m->ToJson(), "round trip");
    ASSERT_TRUE(again.ok()) << again.error().message;
    EXPECT_EQ(*again, *m);
    EXPECT_NE(m->ToJson().find("\"act_order\": true"), std::string::npos);
  }
}

TEST(PreQuantPlan, EveryLayoutPlansAndVerifies) {
  for (TinyQuant kind : {TinyQuant::kFp8Block, TinyQuant::kFp8Channel, TinyQuant::kGptq, TinyQuant::kGptqActOrder}) {
    const std::string dir = Write("plan_" + std::to_string(static_cast<int>(kind)), kind);
    PlanRequest req = CpuRequest(dir);
    Result<PlanResult> r = MakePlan(req);
    ASSERT_TRUE(r.ok()) << r.error().message;
    Result<const schema::Plan*> v = VerifyPlan(r->bytes.data(), r->bytes.size(), "plan");
    ASSERT_TRUE(v.ok()) << v.error().message;
    EXPECT_EQ((*v)->version(), kPlanVersion);
    int prequant = 0;
    for (const schema::Tensor* t : *(*v)->tensors()) {
      if (t->prequant() == schema::PreQuantKind::None) continue;
      ++prequant;
      ASSERT_NE(t->sources(), nullptr);
      EXPECT_EQ(t->offset(), t->sources()->Get(0)->offset());
    }
    EXPECT_EQ(prequant, 14);  // 7 projections x 2 layers
    std::ostringstream report;
    WritePlanReport(report, *r, req);
    EXPECT_NE(report.str().find("pre-quantized in the checkpoint"), std::string::npos) << report.str();
  }
}

TEST(PreQuantPlan, WeightsFlagMayOnlyRepeatTheCheckpointFormat) {
  const std::string dir = Write("flag", TinyQuant::kGptq);
  PlanRequest req = CpuRequest(dir);
  req.weights = quant::Format::kInt8;
  Result<PlanResult> r = MakePlan(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(r.error().message.find("is pre-quantized (gptq"), std::string::npos) << r.error().message;
  req.weights = quant::Format::kInt4;  // the checkpoint's own format: a no-op
  Result<PlanResult> same = MakePlan(req);
  ASSERT_TRUE(same.ok()) << same.error().message;
}

// compressed-tensors' block-quantized checkpoints name the block scales X.weight_scale.
TEST(PreQuantImport, Fp8BlockScalesNamedWeightScale) {
  TinyPreQuantOptions options;
  options.mutate = [](std::vector<RawTensor>* ts, std::string*) {
    for (RawTensor& t : *ts) {
      const std::string suffix = ".weight_scale_inv";
      if (t.name.size() > suffix.size() && t.name.ends_with(suffix)) t.name.resize(t.name.size() - 4);
    }
  };
  Result<ModelDescription> m = ImportHfDirectory(Write("fp8_block_ct", TinyQuant::kFp8Block, options));
  ASSERT_TRUE(m.ok()) << m.error().message;
  const TensorSpec* q = Param(*m, "model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->prequant.sources[1], "model.layers.0.mlp.up_proj.weight_scale");
  EXPECT_EQ(q->group, 32);
}

// A config that says quantized over plain weights is refused naming config.json.
TEST(PreQuantImport, QuantizationConfigOverPlainWeightsIsRefused) {
  const std::string root = TempDir("plain_with_config");
  ASSERT_TRUE(WriteTinyPreQuantLlama(root + "/q", root + "/plain", TinyQuant::kGptq).ok());
  // The dequantized twin holds plain F32 weights; give it the quantized checkpoint's config.json.
  fs::copy_file(root + "/q/config.json", root + "/plain/config.json", fs::copy_options::overwrite_existing);
  Result<ModelDescription> m = ImportHfDirectory(root + "/plain");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, ErrorCode::kUnsupported);
  EXPECT_NE(m.error().message.find("plain/config.json: quantization_config says quant_method \"gptq\", but no "
                                   "linear-layer weight"),
            std::string::npos)
      << m.error().message;
}

// Bad checkpoints: the error names the shard file and the tensor.
TEST(PreQuantImport, RefusesBadCheckpointsNamingFileAndTensor) {
  struct Case {
    std::string name;
    TinyQuant kind;
    std::function<void(std::vector<RawTensor>*, std::string*)> mutate;
    ErrorCode code;
    std::vector<std::string> expect;
  };
  auto drop = [](const std::string& tensor) {
    return [tensor](std::vector<RawTensor>* ts, std::string*) {
      std::erase_if(*ts, [&](const RawTensor& t) { return t.name == tensor; });
    };
  };
  const std::string kq = "model.layers.0.self_attn.k_proj.";
  std::vector<Case> cases = {
      {"missing_scale", TinyQuant::kFp8Block, drop(kq + "weight_scale_inv"), ErrorCode::kMismatch,
       {"model.safetensors: tensor " + kq + "weight_scale_inv: missing"}},
      {"missing_channel_scale", TinyQuant::kFp8Channel, drop(kq + "weight_scale"), ErrorCode::kMismatch,
       {"model.safetensors: tensor " + kq + "weight_scale: missing"}},
      {"bad_block_scale_shape", TinyQuant::kFp8Block,
       [&](std::vector<RawTensor>* ts, std::string*) {
         for (RawTensor& t : *ts)
           if (t.name == kq + "weight_scale_inv") t.shape = {2, 1};
       },
       ErrorCode::kMismatch, {kq + "weight_scale_inv: has shape [2, 1], expected [1, 2]"}},
      {"wrong_qzeros_shape", TinyQuant::kGptq,
       [&](std::vector<RawTensor>* ts, std::string*) {
         for (RawTensor& t : *ts)
           if (t.name == kq + "qzeros") t.shape = {4, 2};  // same bytes, transposed: [2, 4] expected
       },
       ErrorCode::kMismatch, {"model.safetensors: tensor " + kq + "qzeros: has shape [4, 2], expected [2, 4]"}},
      {"missing_scales", TinyQuant::kGptq, drop(kq + "scales"), ErrorCode::kMismatch,
       {"tensor " + kq + "scales: missing"}},
      {"qweight_dtype", TinyQuant::kGptq,
       [&](std::vector<RawTensor>* ts, std::string*) {
         for (RawTensor& t : *ts)
           if (t.name == kq + "qweight") t.dtype = DType::kF32;
       },
       ErrorCode::kMismatch, {"tensor " + kq + "qweight: is F32, expected I32"}},
      {"unsupported_method", TinyQuant::kGptq,
       [](std::vector<RawTensor>*, std::string* config) {
         const size_t at = config->find("\"gptq\"");
         config->replace(at, 6, "\"awq\"");
       },
       ErrorCode::kUnsupported, {"config.json: quantization_config", "awq"}},
      {"listed_but_quantized", TinyQuant::kFp8Block,
       [](std::vector<RawTensor>*, std::string* config) {
         const size_t at = config->find("\"lm_head\"");
         config->replace(at, 9, "\"model.layers.1.mlp.up_proj\"");
       },
       ErrorCode::kMismatch,
       {"tensor model.layers.1.mlp.up_proj.weight: is stored quantized, but", "as not quantized"}},
      // Act-order g_idx is run (EveryLayoutPlansAndVerifies), but every group must hold group_size columns.
      {"g_idx_group_too_large", TinyQuant::kGptqActOrder,
       [&](std::vector<RawTensor>* ts, std::string*) {
         for (RawTensor& t : *ts) {
           if (t.name != kq + "g_idx") continue;
           int32_t* g = reinterpret_cast<int32_t*>(t.bytes.data());
           g[1] = g[0];
         }
       },
       ErrorCode::kCorrupt, {"model.safetensors: tensor " + kq + "g_idx: group 0 holds 33 columns, not 32"}},
      {"g_idx_out_of_range", TinyQuant::kGptq,
       [&](std::vector<RawTensor>* ts, std::string*) {
         for (RawTensor& t : *ts) {
           if (t.name != kq + "g_idx") continue;
           int32_t* g = reinterpret_cast<int32_t*>(t.bytes.data());
           g[5] = 99;
         }
       },
       ErrorCode::kCorrupt, {"tensor " + kq + "g_idx: column 5 is in group 99, outside 0..1"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    TinyPreQuantOptions options;
    options.mutate = c.mutate;
    const std::string dir = Write("bad_" + c.name, c.kind, options);
    Result<ModelDescription> m = ImportHfDirectory(dir);
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.error().code, c.code) << m.error().message;
    for (const std::string& e : c.expect) EXPECT_NE(m.error().message.find(e), std::string::npos) << m.error().message;
  }
}

}  // namespace
}  // namespace bigplan
