#include "tests/e2e/e2e_util.h"

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "schema/plan_io.h"

namespace bigplan::e2e {

namespace fs = std::filesystem;

const std::vector<std::string>& AllFamilies() {
  static const std::vector<std::string> kFamilies = {
      "llama", "llama_gqa",     "llama_linear", "llama_dynamic", "mistral", "mistral_sliding", "qwen2",
      "qwen2_sliding", "phi3", "phi3_longrope", "gpt2", "gpt2_scaled", "gptj", "mixtral", "qwen2_moe", "qwen2_moe_sparse_step", "qwen3_moe"};
  return kFamilies;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool HaveCuda() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::string Runfile(const std::string& rel) {
  std::vector<std::string> roots;
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (!Env(var).empty()) roots.push_back(Env(var));
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) roots.push_back(exe.string() + ".runfiles");
  for (const std::string& root : roots) {
    for (const std::string& ws : {std::string("bigplan/"), std::string()}) {
      const fs::path p = fs::path(root) / (ws + rel);
      if (fs::exists(p)) return p.string();
    }
  }
  if (!Env("BIGPLAN_REPO").empty() && fs::exists(fs::path(Env("BIGPLAN_REPO")) / rel)) {
    return (fs::path(Env("BIGPLAN_REPO")) / rel).string();
  }
  return "";
}

Status WriteRandomLlama(const std::string& dir, const RandomLlama& m) {
  const std::string torch_dtype = m.dtype == "BF16" ? "bfloat16" : "float32";
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": )" << m.hidden
      << R"(, "intermediate_size": )" << m.intermediate << R"(, "num_hidden_layers": )" << m.layers
      << R"(, "num_attention_heads": )" << m.heads << R"(, "num_key_value_heads": )" << m.kv_heads
      << R"(, "head_dim": )" << m.head_dim << R"(, "vocab_size": )" << m.vocab
      << R"(, "max_position_embeddings": )" << m.max_positions
      << R"(, "rms_norm_eps": 1e-5, "hidden_act": "silu", "rope_theta": 10000.0, "tie_word_embeddings": false,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": ")" << torch_dtype << R"("})";
  std::string t = R"({"tensors": [)";
  bool first = true;
  auto add = [&](const std::string& name, int rows, int cols) {
    t += std::string(first ? "" : ", ") + R"({"name": ")" + name + R"(", "dtype": ")" + m.dtype + R"(", "shape": [)" +
         std::to_string(rows) + (cols > 0 ? ", " + std::to_string(cols) : "") + "]}";
    first = false;
  };
  add("model.embed_tokens.weight", m.vocab, m.hidden);
  for (int i = 0; i < m.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", m.hidden, 0);
    add(p + "self_attn.q_proj.weight", m.heads * m.head_dim, m.hidden);
    add(p + "self_attn.k_proj.weight", m.kv_heads * m.head_dim, m.hidden);
    add(p + "self_attn.v_proj.weight", m.kv_heads * m.head_dim, m.hidden);
    add(p + "self_attn.o_proj.weight", m.hidden, m.heads * m.head_dim);
    add(p + "post_attention_layernorm.weight", m.hidden, 0);
    add(p + "mlp.gate_proj.weight", m.intermediate, m.hidden);
    add(p + "mlp.up_proj.weight", m.intermediate, m.hidden);
    add(p + "mlp.down_proj.weight", m.hidden, m.intermediate);
  }
  add("model.norm.weight", m.hidden, 0);
  add("lm_head.weight", m.vocab, m.hidden);
  t += "]}";
  std::ofstream(dir + "/spec.json") << t;
  const std::string tool = Runfile("tools/gen_checkpoint");
  if (tool.empty()) return MakeError(ErrorCode::kNotFound, "tools/gen_checkpoint (a runfile of the test)");
  std::string out;
  char scale[32];
  std::snprintf(scale, sizeof scale, "%g", m.scale);
  if (RunCommand(tool + " --out " + dir + " --spec " + dir + "/spec.json --seed " + std::to_string(m.seed) +
                     " --scale " + scale,
                 &out) != 0) {
    return MakeError(ErrorCode::kInternal, "gen_checkpoint: " + out);
  }
  return Status::Ok();
}

std::string TempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const std::string base = Env("TEST_TMPDIR").empty() ? "/tmp" : Env("TEST_TMPDIR");
  const std::string dir =
      base + "/" + name + "." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

int RunCommand(const std::string& command, std::string* output) {
  output->clear();
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

namespace {

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string PythonPath() {
  if (!Env("BIGPLAN_PYTHON").empty()) return Env("BIGPLAN_PYTHON");
  const std::string wrapped = Runfile("torch/python3.sh");
  if (!wrapped.empty()) return wrapped;
  const std::string external = Runfile("../torch/python3.sh");
  if (!external.empty()) return external;
  return "python3";
}

Status WriteText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return MakeError(ErrorCode::kIo, "cannot write " + path);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return Status::Ok();
}

}  // namespace

const std::string& ModelsRoot() {
  static std::once_flag once;
  static std::string root;
  std::call_once(once, [] {
    root = Env("BIGPLAN_TINY_MODELS");
    if (!root.empty()) return;
    const std::string script = Runfile("tests/reference/make_tiny_models.py");
    if (script.empty()) {
      std::fprintf(stderr, "make_tiny_models.py not found (set BIGPLAN_TINY_MODELS or BIGPLAN_REPO)\n");
      return;
    }
    const std::string dir = TempDir("tiny_models");
    std::string out;
    const std::string cmd = Quote(PythonPath()) + " " + Quote(script) + " --out-root " + Quote(dir) + " --families all";
    if (RunCommand(cmd, &out) != 0) {
      std::fprintf(stderr, "generating tiny models failed: %s\n%s\n", cmd.c_str(), out.c_str());
      return;
    }
    root = dir;
  });
  return root;
}

std::string ModelDir(const std::string& family) { return ModelsRoot() + "/" + family; }

Status MakePlan(const std::string& model_dir, const std::string& max_memory, const std::string& dtype,
                uint32_t batch, uint32_t seq_len, const std::string& out, const std::string& extra) {
  std::string tool = Env("BIGPLAN_PLAN_TOOL");
  if (tool.empty()) tool = Runfile("tools/plan");
  if (tool.empty()) return MakeError(ErrorCode::kNotFound, "the plan tool (set BIGPLAN_PLAN_TOOL)");
  const std::string cmd = Quote(tool) + " --quiet --model " + Quote(model_dir) + " --max-memory " +
                          Quote(max_memory) + " --dtype " + dtype + " --batch " + std::to_string(batch) +
                          " --seq-len " + std::to_string(seq_len) + " -o " + Quote(out) +
                          (extra.empty() ? "" : " " + extra);
  std::string output;
  const int rc = RunCommand(cmd, &output);
  if (rc == 0) return Status::Ok();
  if (output.find("infeasible") != std::string::npos) return MakeError(ErrorCode::kInfeasible, output);
  return MakeError(ErrorCode::kInternal, cmd + " exited " + std::to_string(rc) + ": " + output);
}

std::string PlanSummary::ToString() const {
  return std::to_string(blocks) + " blocks: gpu " + std::to_string(gpu_tier) + ", cpu " + std::to_string(cpu_tier) +
         ", disk " + std::to_string(disk_tier) + " tier; " + std::to_string(cpu_compute) + " on the cpu; " +
         std::to_string(chunk_units) + " row chunks; " +
         (routed > 0 ? std::to_string(routed) + " routed (" + std::to_string(routed_disk) + " on disk); " : "") +
         exec_dtype;
}

Result<PlanSummary> SummarizePlan(const std::string& plan_path) {
  BIGPLAN_ASSIGN_OR_RETURN(PlanFile plan, PlanFile::Load(plan_path));
  PlanSummary s;
  s.exec_dtype = DTypeName(plan.plan().exec_dtype());
  for (const schema::Block* b : *plan.plan().blocks()) {
    ++s.blocks;
    s.gpu_tier += b->tier() == schema::Tier::Gpu;
    s.cpu_tier += b->tier() == schema::Tier::Cpu;
    s.disk_tier += b->tier() == schema::Tier::Disk;
    s.cpu_compute += b->device() < 0;
    if (b->weights() == nullptr) continue;
    for (const schema::Weight* w : *b->weights()) {
      s.routed += w->routed();
      s.routed_disk += w->routed() && w->tier() == schema::Tier::Disk;
      s.disk_weights += w->tier() == schema::Tier::Disk;
    }
  }
  if (plan.plan().streams() != nullptr) {
    for (const schema::Stream* st : *plan.plan().streams()) {
      if (st->units() == nullptr) continue;
      for (const schema::Unit* u : *st->units()) s.chunk_units += u->whole() ? 0 : 1;
    }
  }
  return s;
}

Result<uint64_t> SmallestFeasible(const std::function<bool(uint64_t)>& feasible, uint64_t lo, uint64_t hi,
                                  uint64_t granularity) {
  if (!feasible(hi)) return MakeError(ErrorCode::kInfeasible, "infeasible even at " + std::to_string(hi));
  while (hi - lo > granularity) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (feasible(mid)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

uint32_t SuiteSeqLen(const std::string& model_dir) {
  uint32_t len = 16;
  std::ifstream in(model_dir + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  for (const char* key : {"max_position_embeddings", "n_positions"}) {
    if (config.is_object() && config.contains(key) && config[key].is_number_unsigned()) {
      len = std::min(len, config[key].get<uint32_t>());
    }
  }
  return len;
}

std::string RoutedBudgets(uint64_t gpu_budget, int gpus) {
  std::string spec;
  for (int g = 0; g < gpus; ++g) spec += "cuda:" + std::to_string(g) + "=" + std::to_string(gpu_budget) + ",";
  return spec + "cpu=" + std::to_string(kRoutedHostBudget);
}

Result<uint64_t> SmallestRoutedGpuBudget(const std::string& model_dir, const std::string& dtype, uint32_t batch,
                                         uint32_t seq_len, const std::string& scratch, int gpus) {
  return SmallestFeasible(
      [&](uint64_t b) {
        return MakePlan(model_dir, RoutedBudgets(b, gpus), dtype, batch, seq_len, scratch, kRoutedPlanFlags).ok();
      },
      0, kRoutedHostBudget, 4096);
}

Result<std::vector<PlanCase>> PlanSuite(const std::string& model_dir, const std::string& dir,
                                        const std::string& dtype, uint32_t seq_len) {
  constexpr uint32_t kBatch = 2;
  const uint32_t kSeqLen = seq_len;
  constexpr uint64_t kBig = 8ull << 30, kGranularity = 4096;
  const std::string scratch = dir + "/probe.bplan";
  auto feasible = [&](const std::string& spec, const std::string& extra = "") {
    Status s = MakePlan(model_dir, spec, dtype, kBatch, kSeqLen, scratch, extra);
    return s.ok();
  };
  std::vector<PlanCase> cases;
  auto add = [&](const std::string& name, const std::string& spec, const std::string& extra = "") -> Status {
    PlanCase c;
    c.name = name;
    c.path = dir + "/" + name + ".bplan";
    c.max_memory = spec + (extra.empty() ? "" : " " + extra.substr(extra.rfind('/') + 1));
    Status made = MakePlan(model_dir, spec, dtype, kBatch, kSeqLen, c.path, extra);
    if (!made.ok()) return WithContext(made.take_error(), "plan case " + name + " (" + spec + " " + extra + ")");
    BIGPLAN_ASSIGN_OR_RETURN(c.summary, SummarizePlan(c.path));
    cases.push_back(std::move(c));
    return Status::Ok();
  };
  const std::string big = std::to_string(kBig);
  BIGPLAN_RETURN_IF_ERROR(add("gpu_resident", "cuda:0=" + big + ",cpu=" + big));
  BIGPLAN_ASSIGN_OR_RETURN(
      uint64_t min_gpu,
      SmallestFeasible([&](uint64_t b) { return feasible("cuda:0=" + std::to_string(b) + ",cpu=" + big); }, 0, kBig,
                       kGranularity));
  BIGPLAN_RETURN_IF_ERROR(add("cpu_tier", "cuda:0=" + std::to_string(min_gpu) + ",cpu=" + big));
  // A cpu budget of three quarters of what the cpu-tier plan pins: some streamed weights must rest on disk.
  uint64_t disk_cpu = 0;
  {
    BIGPLAN_ASSIGN_OR_RETURN(PlanFile cpu_plan, PlanFile::Load(cases.back().path));
    for (const schema::Arena* a : *cpu_plan.plan().arenas())
      if (a->pool() == schema::Pool::PinnedHost) disk_cpu = a->size_bytes();
  }
  disk_cpu = disk_cpu / 4 * 3 / kGranularity * kGranularity;
  if (disk_cpu >= kGranularity &&
      feasible("cuda:0=" + std::to_string(min_gpu) + ",cpu=" + std::to_string(disk_cpu))) {
    BIGPLAN_RETURN_IF_ERROR(
        add("disk_tier", "cuda:0=" + std::to_string(min_gpu) + ",cpu=" + std::to_string(disk_cpu)));
  } else {
    // The pinned disk ring (two slots of the largest weight, cast to the execution dtype) costs more than keeping
    // these tiny models' weights in the cpu tier, so auto never picks disk for them: the decoder layers go to disk
    // by an explicit map instead.
    nlohmann::json map = nlohmann::json::object();
    BIGPLAN_ASSIGN_OR_RETURN(PlanFile plan, PlanFile::Load(cases[0].path));
    for (const schema::Block* b : *plan.plan().blocks())
      map[b->name()->str()] = b->kind()->str() == "decoder_layer" ? nlohmann::json("disk") : nlohmann::json(0);
    const std::string path = dir + "/disk_layers_map.json";
    BIGPLAN_RETURN_IF_ERROR(WriteText(path, map.dump(1)));
    BIGPLAN_RETURN_IF_ERROR(add("disk_tier", "cuda:0=" + big + ",cpu=" + big, "--device-map " + Quote(path)));
  }
  BIGPLAN_ASSIGN_OR_RETURN(uint64_t all_resident, SmallestFeasible(
                                                      [&](uint64_t b) {
                                                        if (!feasible("cuda:0=" + std::to_string(b) + ",cpu=" + big)) {
                                                          return false;
                                                        }
                                                        auto s = SummarizePlan(scratch);
                                                        return s.ok() && s->gpu_tier == s->blocks;
                                                      },
                                                      min_gpu, kBig, kGranularity));
  BIGPLAN_RETURN_IF_ERROR(add("mixed", "cuda:0=" + std::to_string((min_gpu + all_resident) / 2) + ",cpu=" + big));
  BIGPLAN_RETURN_IF_ERROR(add("cpu_compute", "cpu=" + big));
  // Explicit device maps over the block names of the first plan.
  nlohmann::json cpu_disk = nlohmann::json::object(), tiers = nlohmann::json::object();
  {
    BIGPLAN_ASSIGN_OR_RETURN(PlanFile plan, PlanFile::Load(cases[0].path));
    int layer = 0;
    for (const schema::Block* b : *plan.plan().blocks()) {
      const std::string name = b->name()->str(), kind = b->kind()->str();
      if (kind == "decoder_layer") {
        cpu_disk[name] = "disk";
        tiers[name] = layer++ % 2 == 0 ? "cpu" : "disk";
      } else if (kind == "lm_head") {
        cpu_disk[name] = "disk";
        tiers[name] = "disk";
      } else {
        cpu_disk[name] = "cpu";
        tiers[name] = 0;
      }
    }
  }
  const std::string cpu_disk_map = dir + "/cpu_disk_map.json", tiers_map = dir + "/tiers_map.json";
  BIGPLAN_RETURN_IF_ERROR(WriteText(cpu_disk_map, cpu_disk.dump(1)));
  BIGPLAN_RETURN_IF_ERROR(WriteText(tiers_map, tiers.dump(1)));
  BIGPLAN_RETURN_IF_ERROR(add("cpu_compute_disk", "cpu=" + big, "--device-map " + Quote(cpu_disk_map)));
  BIGPLAN_RETURN_IF_ERROR(add("explicit_tiers", "cuda:0=" + big + ",cpu=" + big, "--device-map " + Quote(tiers_map)));
  // Weights streamed in row chunks (kernels read them chunk by chunk), from pinned memory and from disk, and on the
  // CPU from the mapping.
  // (Mixture-of-experts models: not the routed-experts placement, which streams nothing.)
  bool moe = false;
  {
    BIGPLAN_ASSIGN_OR_RETURN(PlanFile plan, PlanFile::Load(cases[0].path));
    moe = plan.plan().config()->num_experts() > 0;
  }
  const std::string chunked = "--chunk-bytes 2048 --auto-candidates BPC";
  // (A mixture-of-experts model's smallest budget, min_gpu, is placement E's, which B, P and C may not fit.)
  uint64_t min_chunked = min_gpu;
  if (moe) {
    BIGPLAN_ASSIGN_OR_RETURN(
      min_chunked, SmallestFeasible(
                                [&](uint64_t b) {
                                  return feasible("cuda:0=" + std::to_string(b) + ",cpu=" + big, chunked);
                                },
                                min_gpu, kBig, kGranularity));
  }
  BIGPLAN_RETURN_IF_ERROR(add("chunked_cpu", "cuda:0=" + std::to_string(min_chunked) + ",cpu=" + big, chunked));
  BIGPLAN_RETURN_IF_ERROR(add("chunked_tiers", "cuda:0=" + big + ",cpu=" + big,
                              "--device-map " + Quote(tiers_map) + " --chunk-bytes 2048"));
  BIGPLAN_RETURN_IF_ERROR(add("chunked_cpu_compute", "cpu=" + big,
                              "--device-map " + Quote(cpu_disk_map) + " --chunk-bytes 2048"));
  // Mixture-of-experts models (placement E): experts routed from pinned memory, some resident (a budget halfway
  // between E's smallest and everything resident), then with half those pinned bytes so some rest on disk; the host
  // computes half of a decode forward's non-resident chosen experts.
  if (moe) {
    const std::string only_e = kRoutedPlanFlags;
    BIGPLAN_ASSIGN_OR_RETURN(uint64_t min_e, SmallestRoutedGpuBudget(model_dir, dtype, kBatch, kSeqLen, scratch));
    const std::string gpu = std::to_string((min_e + std::max(min_e, all_resident)) / 2 / kGranularity * kGranularity);
    BIGPLAN_RETURN_IF_ERROR(add("routed_host", "cuda:0=" + gpu + ",cpu=" + big, only_e));
    // The smallest cpu budget E fits: as many routed experts on disk as the pinned disk ring allows.
    BIGPLAN_ASSIGN_OR_RETURN(
        uint64_t min_cpu, SmallestFeasible(
                              [&](uint64_t b) {
                                return feasible("cuda:0=" + gpu + ",cpu=" + std::to_string(b), only_e);
                              },
                              0, kBig, kGranularity));
    const std::string cpu = std::to_string(min_cpu);
    BIGPLAN_RETURN_IF_ERROR(add("routed_disk", "cuda:0=" + gpu + ",cpu=" + cpu, only_e));
  }
  return cases;
}

namespace {

template <typename T>
Result<std::vector<T>> ReadTensor(const SafetensorsFile& f, const std::string& name, DType want) {
  const TensorInfo* info = f.header().Find(name);
  if (info == nullptr) return MakeError(ErrorCode::kNotFound, f.path() + ": no tensor " + name);
  if (info->dtype != want) return MakeError(ErrorCode::kMismatch, f.path() + ": " + name + " has another dtype");
  BIGPLAN_ASSIGN_OR_RETURN(const uint8_t* data, f.TensorData(name));
  std::vector<T> out(info->size_bytes / sizeof(T));
  std::memcpy(out.data(), data, info->size_bytes);
  return out;
}

}  // namespace

std::vector<std::vector<int64_t>> Reference::Prompts() const {
  std::vector<std::vector<int64_t>> rows;
  for (int64_t b = 0; b < batch; ++b) {
    rows.emplace_back(input_ids.begin() + b * prompt_len, input_ids.begin() + (b + 1) * prompt_len);
  }
  return rows;
}

std::vector<int64_t> Reference::GeneratedRow(int64_t b) const {
  return std::vector<int64_t>(generated.begin() + b * (steps + 1), generated.begin() + (b + 1) * (steps + 1));
}

Result<Reference> LoadReference(const std::string& model_dir) {
  BIGPLAN_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(model_dir + "/reference.safetensors"));
  Reference r;
  const auto& meta = f.header().metadata;
  auto get = [&](const char* key) -> int64_t {
    auto it = meta.find(key);
    return it == meta.end() ? 0 : std::stoll(it->second);
  };
  r.batch = get("batch");
  r.prompt_len = get("prompt_len");
  r.steps = get("steps");
  BIGPLAN_ASSIGN_OR_RETURN(r.input_ids, ReadTensor<int64_t>(f, "input_ids", DType::kI64));
  BIGPLAN_ASSIGN_OR_RETURN(r.generated, ReadTensor<int64_t>(f, "generated", DType::kI64));
  r.step_tokens.resize(r.steps + 1);
  for (int64_t k = 0; k <= r.steps; ++k) {
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<float> l, ReadTensor<float>(f, "logits_" + std::to_string(k), DType::kF32));
    r.logits.push_back(std::move(l));
    if (k > 0) {
      BIGPLAN_ASSIGN_OR_RETURN(r.step_tokens[k], ReadTensor<int64_t>(f, "tokens_" + std::to_string(k), DType::kI64));
    }
  }
  const TensorInfo* l0 = f.header().Find("logits_0");
  r.vocab = l0->shape.back();
  return r;
}

double MaxRelError(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

Result<StepErrors> CompareWithReference(Executor& exec, const Reference& ref, int64_t max_steps) {
  StepErrors out;
  const int64_t steps = max_steps < 0 ? ref.steps : std::min(ref.steps, max_steps);
  for (int64_t k = 0; k <= steps; ++k) {
    Result<Logits> logits = k == 0 ? exec.Forward(ref.input_ids, static_cast<int>(ref.batch), /*reset=*/true)
                                   : exec.Forward(ref.step_tokens[k], static_cast<int>(ref.batch));
    if (!logits.ok()) return WithContext(logits.take_error(), "step " + std::to_string(k));
    const double e = MaxRelError(logits->data, ref.logits[k]);
    out.rel.push_back(e);
    out.max_rel = std::max(out.max_rel, e);
    out.logits.push_back(std::move(*logits));
  }
  return out;
}

double TopOneAgreement(const StepErrors& ours, const Reference& ref, double margin) {
  int64_t counted = 0, agree = 0;
  for (size_t k = 0; k < ours.logits.size(); ++k) {
    const std::vector<float>& want = ref.logits[k];
    double scale = 1e-6;
    for (float v : want) scale = std::max(scale, std::fabs(double(v)));
    const int64_t rows = static_cast<int64_t>(want.size()) / ref.vocab;
    for (int64_t r = 0; r < rows; ++r) {
      const float* w = want.data() + r * ref.vocab;
      const float* o = ours.logits[k].data.data() + r * ref.vocab;
      int64_t best = 0, second = -1;
      for (int64_t v = 1; v < ref.vocab; ++v) {
        if (w[v] > w[best]) {
          second = best;
          best = v;
        } else if (second < 0 || w[v] > w[second]) {
          second = v;
        }
      }
      if (w[best] - w[second] <= margin * scale) continue;
      ++counted;
      const int64_t mine = std::max_element(o, o + ref.vocab) - o;
      agree += mine == best;
    }
  }
  return counted == 0 ? 1.0 : double(agree) / double(counted);
}

}  // namespace bigplan::e2e
