#include "planner/validate.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "planner/hf_import.h"

namespace bigplan {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string Describe(const TensorSpec& t) { return t.name + " " + ShapeString(t.shape) + " " + DTypeString(t.dtype); }

}  // namespace

bool IsKnownNonParameterBuffer(const std::string& name) {
  return EndsWith(name, ".attn.bias") || EndsWith(name, ".attn.masked_bias") || EndsWith(name, ".rotary_emb.inv_freq") ||
         name == "attn.bias" || name == "attn.masked_bias";
}

Status ValidateAgainstTensors(const ModelDescription& model, const std::vector<TensorSpec>& tensors,
                              const std::string& source, const ValidateOptions& options) {
  std::map<std::string, const TensorSpec*> present;
  for (const TensorSpec& t : tensors) present.emplace(t.name, &t);

  std::vector<std::string> problems;
  std::map<std::string, bool> owned;
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& p : b.params) {
      owned[p.name] = true;
      if (p.prequant.kind != PreQuant::Kind::kNone) {
        // Converted from its source tensors (checked by the importer); the module's other tensors (activation
        // scales, ...) are accepted and unused.
        for (const std::string& s : p.prequant.sources) {
          if (!present.count(s)) problems.push_back("missing: " + s + " (source of " + p.name + ", block " + b.name + ")");
        }
        const std::string module = p.name.substr(0, p.name.rfind('.') + 1);
        for (auto it = present.lower_bound(module); it != present.end() && it->first.rfind(module, 0) == 0; ++it)
          owned[it->first] = true;
        continue;
      }
      auto it = present.find(p.name);
      if (it == present.end()) {
        problems.push_back("missing: " + Describe(p) + " (block " + b.name + ")");
        continue;
      }
      const TensorSpec& c = *it->second;
      if (c.shape != p.shape) {
        problems.push_back("shape mismatch: " + p.name + ": checkpoint " + ShapeString(c.shape) + ", description " +
                           ShapeString(p.shape));
      }
      if (c.dtype != p.dtype) {
        problems.push_back("dtype mismatch: " + p.name + ": checkpoint " + DTypeString(c.dtype) + ", description " +
                           DTypeString(p.dtype));
      }
    }
  }
  if (options.report_unexpected) {
    for (const auto& [name, t] : present) {
      if (owned.count(name) || IsKnownNonParameterBuffer(name)) continue;
      problems.push_back("unexpected: " + Describe(*t) + " (no block owns it)");
    }
  }
  if (problems.empty()) return Status::Ok();
  std::string msg = "model '" + model.name + "' vs checkpoint " + source + ": " + std::to_string(problems.size()) +
                    (problems.size() == 1 ? " problem:" : " problems:");
  const size_t listed = std::min(problems.size(), options.max_listed);
  for (size_t i = 0; i < listed; ++i) msg += "\n  " + problems[i];
  if (listed < problems.size()) msg += "\n  ... and " + std::to_string(problems.size() - listed) + " more";
  return MakeError(ErrorCode::kMismatch, msg);
}

Status ValidateAgainstCheckpoint(const ModelDescription& model, const Checkpoint& checkpoint,
                                 const ValidateOptions& options) {
  // Every param of the supported architectures is a floating-point weight; the executor cannot compute with an
  // integer one. Refused here, naming the shard that holds it.
  for (const BlockDesc& b : model.blocks) {
    for (const TensorSpec& p : b.params) {
      if (p.prequant.kind != PreQuant::Kind::kNone) continue;  // its sources' dtypes are checked by the importer
      const TensorLocation* loc = checkpoint.Find(p.name);
      if (loc == nullptr || IsFloatingPoint(loc->dtype)) continue;
      const std::string shard =
          loc->shard < checkpoint.shard_paths().size() ? checkpoint.shard_paths()[loc->shard] : checkpoint.directory();
      return MakeError(ErrorCode::kUnsupported, shard + ": tensor \"" + p.name + "\" is " + DTypeString(loc->dtype) +
                                                    ", but " + model.architecture + " weights must be floating point "
                                                    "(F32, F16, BF16, F64 or F8)");
    }
  }
  return ValidateAgainstTensors(model, TensorSpecsOf(checkpoint), checkpoint.directory(), options);
}

}  // namespace bigplan
