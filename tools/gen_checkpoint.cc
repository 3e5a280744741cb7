// gen_checkpoint: writes a safetensors checkpoint with deterministic random weights.
//
//   gen_checkpoint --out DIR --spec FILE.json [--max-shard-bytes 2GiB] [--seed 0] [--scale 0.02]
//                  [--threads N] [--prefix model]
//   gen_checkpoint --out DIR --tiny-llama fp8-block|fp8-channel|gptq|gptq-act [--reference-out DIR2] [--seed N]
//
// The second form writes a tiny pre-quantized Llama (tools/tiny_prequant.h) and, in DIR2, the same model with its
// weights dequantized into a plain F32 checkpoint (the oracle of the pre-quantized loaders).
//
// FILE.json: {"tensors": [{"name": "w", "shape": [4096, 4096], "dtype": "BF16"}, ...]}

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "formats/writer.h"
#include "support/file_read.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "support/units.h"
#include "tools/tiny_prequant.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: gen_checkpoint --out DIR --spec FILE.json [--max-shard-bytes SIZE (default 2GiB)] [--seed N]\n"
    "                      [--scale X (default 0.02)] [--threads N] [--prefix NAME (default model)]\n"
    "FILE.json: {\"tensors\": [{\"name\": \"w\", \"shape\": [4096, 4096], \"dtype\": \"BF16\"}, ...]}\n"
    "       gen_checkpoint --out DIR --tiny-llama fp8-block|fp8-channel|gptq|gptq-act [--reference-out DIR2] [--seed N]\n"
    "                      (a tiny pre-quantized Llama; DIR2: the same model dequantized, F32)\n";

Error Usage(const std::string& why) { return MakeError(ErrorCode::kInvalidArgument, why + "\n" + kUsage); }

Result<uint64_t> ParseUint(const std::string& flag, const std::string& text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 20) {
    return Usage(flag + ": expected a non-negative integer, got \"" + text + "\"");
  }
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno != 0) return Usage(flag + ": \"" + text + "\" is out of range");
  return static_cast<uint64_t>(v);
}

Status Main(int argc, char** argv) {
  std::string out, spec_path, prefix = "model", tiny, reference_out;
  WriterOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return Status::Ok();
    }
    std::string value;
    size_t eq = arg.find('=');
    std::string flag = arg.substr(0, eq);
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else {
      if (i + 1 >= argc) return Usage(flag + ": missing value");
      value = argv[++i];
    }
    if (flag == "--out") {
      out = value;
    } else if (flag == "--spec") {
      spec_path = value;
    } else if (flag == "--max-shard-bytes") {
      auto size = ParseByteSize(value);
      if (!size.ok()) return Usage("--max-shard-bytes: " + size.error().message);
      options.max_shard_bytes = *size;
    } else if (flag == "--seed") {
      BIGPLAN_ASSIGN_OR_RETURN(options.seed, ParseUint(flag, value));
    } else if (flag == "--threads") {
      BIGPLAN_ASSIGN_OR_RETURN(uint64_t threads, ParseUint(flag, value));
      if (threads > 1024) return Usage("--threads: at most 1024");
      options.threads = static_cast<int>(threads);
    } else if (flag == "--scale") {
      char* end = nullptr;
      float scale = std::strtof(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(scale >= 0.0f) || scale > 1e30f) {
        return Usage("--scale: expected a non-negative number, got \"" + value + "\"");
      }
      options.scale = scale;
    } else if (flag == "--prefix") {
      prefix = value;
    } else if (flag == "--tiny-llama") {
      tiny = value;
    } else if (flag == "--reference-out") {
      reference_out = value;
    } else {
      return Usage("unknown flag " + flag);
    }
  }
  if (out.empty()) return Usage("--out is required");
  if (!tiny.empty()) {
    if (!spec_path.empty()) return Usage("--tiny-llama and --spec exclude each other");
    Result<TinyQuant> kind = ParseTinyQuant(tiny);
    if (!kind.ok()) return Usage("--tiny-llama: " + kind.error().message);
    TinyPreQuantOptions tiny_options;
    tiny_options.seed = options.seed;
    BIGPLAN_RETURN_IF_ERROR(WriteTinyPreQuantLlama(out, reference_out, *kind, tiny_options));
    std::fprintf(stderr, "gen_checkpoint: wrote a tiny %s Llama to %s%s%s\n", tiny.c_str(), out.c_str(),
                 reference_out.empty() ? "" : " and its dequantized F32 copy to ", reference_out.c_str());
    return Status::Ok();
  }
  if (!reference_out.empty()) return Usage("--reference-out needs --tiny-llama");
  if (spec_path.empty()) return Usage("--spec is required");
  options.file_prefix = prefix;

  BIGPLAN_ASSIGN_OR_RETURN(std::string spec_text, ReadBoundedFile(spec_path, kSpecFile));
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<WriteSpec> specs, ParseWriteSpecsJson(spec_text, spec_path));

  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&]() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  options.progress = [&](uint64_t done, uint64_t total) {
    std::fprintf(stderr, "\rgen_checkpoint: %s / %s (%3.0f%%) %.1fs", FormatBytes(done).c_str(),
                 FormatBytes(total).c_str(), total ? 100.0 * done / total : 100.0, seconds());
    std::fflush(stderr);
  };
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<std::string> shards, WriteRandomCheckpoint(out, specs, options));
  uint64_t total = 0;
  for (const WriteSpec& s : specs) {
    uint64_t n = DTypeBytes(s.dtype);
    for (int64_t d : s.shape) n *= static_cast<uint64_t>(d);
    total += n;
  }
  const double secs = seconds();
  std::fprintf(stderr, "\ngen_checkpoint: wrote %zu tensors, %s in %zu shard(s) to %s in %.2fs (%.0f MB/s)\n",
               specs.size(), FormatBytes(total).c_str(), shards.size(), out.c_str(), secs,
               secs > 0 ? total / secs / 1e6 : 0.0);
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("gen_checkpoint", [&]() { return bigplan::Main(argc, argv); });
}
