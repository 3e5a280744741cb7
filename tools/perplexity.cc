// perplexity: perplexity of a plan over a text file, and greedy agreement with another run's argmaxes.
//
//   perplexity --plan smol.bplan --model DIR --text /usr/share/common-licenses/GPL-3 --window 1024
//
// The scoring protocol is text/perplexity.h's; benchmarks/perplexity_hf.py computes the same numbers with
// transformers. See kUsage for every flag. Relative paths are taken from the directory `bazel run` was started in.

#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "executor/executor.h"
#include "support/cli.h"
#include "support/file_read.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "text/perplexity.h"
#include "text/tokenizer.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: perplexity --plan PLAN --model DIR [--text FILE] [--window N] [--max-tokens N] [FLAGS]\n"
    "\n"
    "Perplexity of a plan over a text: the text is encoded with the model's tokenizer (tokenizer.json or\n"
    "tokenizer.model in DIR) as tokenizer.encode(text) does, i.e. with only the special tokens the tokenizer's\n"
    "post-processor adds (none for SmolLM2; BOS for Llama-2's), truncated to --max-tokens, and cut into\n"
    "consecutive, non-overlapping windows of --window tokens (a last, partial window of at least 2 tokens is\n"
    "kept). Each window runs as one fresh sequence; tokens 1..len-1 of each are scored by the log-softmax (in\n"
    "double) of the logits before them. Prints the tokens scored, the mean negative log-likelihood, the perplexity\n"
    "exp(mean NLL) and the time taken; progress per window goes to stderr.\n"
    "\n"
    "  --plan FILE              the plan (.bplan); its max sequence length must be at least --window\n"
    "  --model DIR              the checkpoint directory the plan was made for (and its tokenizer)\n"
    "  --text FILE              the text (UTF-8; default /usr/share/common-licenses/GPL-3)\n"
    "  --window N               tokens per window (default 1024; at least 2)\n"
    "  --max-tokens N           score only the first N tokens of the text\n"
    "  --argmax-out FILE        write the argmax token of every scored position (a text file, see\n"
    "                           text/perplexity.h: a header naming the tokens and window, then the ids)\n"
    "  --reference-argmax FILE  compare with such a file from another run over the same tokens and window (e.g. the\n"
    "                           bf16 plan, or perplexity_hf.py --argmax-out) and print the greedy agreement: the\n"
    "                           fraction of positions with the same argmax\n"
    "  --json FILE              also write the numbers as JSON\n"
    "  --cpu                    run every block on the CPU even if a GPU is present\n"
    "  --threads N              CPU compute threads (default: LibTorch's)\n"
    "  --quiet                  no load or per-window progress on stderr\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed, 2 bad command line.\n";

constexpr const char* kDefaultText = "/usr/share/common-licenses/GPL-3";
// Texts for perplexity are books at most; 256 MiB is far beyond any of them.
constexpr FileKind kTextFile{"text file", 256 * kMiB};

constexpr Cli kCli(kUsage);

Error Usage(const std::string& why) { return kCli.Usage(why); }

struct Flags {
  std::string plan;
  std::string model;
  std::string text = kDefaultText;
  int64_t window = 1024;
  std::optional<int64_t> max_tokens;
  std::string argmax_out;
  std::string reference;
  std::string json;
  ExecutorOptions exec;
};

Result<Flags> ParseFlags(int argc, char** argv, bool* help) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      *help = true;
      return f;
    }
    if (arg == "--cpu") {
      f.exec.force_cpu = true;
      continue;
    }
    if (arg == "--quiet") {
      f.exec.progress = false;
      continue;
    }
    std::string flag, value;
    switch (SplitFlag(argc, argv, &i,
                      {"--plan", "--model", "--text", "--window", "--max-tokens", "--argmax-out", "--reference-argmax",
                       "--json", "--threads"},
                      &flag, &value)) {
      case FlagSplit::kOk: break;
      case FlagSplit::kUnknown: return Usage("unknown flag " + arg);
      case FlagSplit::kMissingValue: return Usage(flag + " needs a value");
    }
    if (flag == "--plan") f.plan = UserPath(value);
    else if (flag == "--model") f.model = UserPath(value);
    else if (flag == "--text") f.text = UserPath(value);
    else if (flag == "--argmax-out") f.argmax_out = UserPath(value);
    else if (flag == "--reference-argmax") f.reference = UserPath(value);
    else if (flag == "--json") f.json = UserPath(value);
    else if (flag == "--window") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t w, kCli.ParseInt(flag, value, std::numeric_limits<int64_t>::min()));
      if (w < 2) return Usage("--window " + value + ": a window needs at least 2 tokens (one to score)");
      f.window = w;
    } else if (flag == "--max-tokens") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt(flag, value, 2));
      f.max_tokens = n;
    } else if (flag == "--threads") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt(flag, value, 1, 1024));
      f.exec.cpu_threads = static_cast<int>(n);
    } else {
      return Usage("unknown flag " + flag);
    }
  }
  if (f.plan.empty()) return Usage("--plan is required");
  if (f.model.empty()) return Usage("--model is required");
  return f;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

Status Main(int argc, char** argv) {
  bool help = false;
  BIGPLAN_ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, &help));
  if (help) {
    std::fputs(kUsage, stdout);
    return Status::Ok();
  }

  // Everything that can be checked without the model first.
  BIGPLAN_ASSIGN_OR_RETURN(std::string text, ReadBoundedFile(f.text, kTextFile));
  if (text.empty()) return MakeError(ErrorCode::kInvalidArgument, f.text + ": the text file is empty");
  std::optional<text::ArgmaxRecord> reference;
  if (!f.reference.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(text::ArgmaxRecord r, text::ReadArgmaxFile(f.reference));
    reference = std::move(r);
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<text::Tokenizer> tok, text::Tokenizer::Load(f.model));
  auto encoded = tok->Encode(text, /*add_special_tokens=*/true);
  if (!encoded.ok()) return WithContext(encoded.take_error(), f.text);
  std::vector<int64_t> ids = std::move(encoded).value();
  if (f.max_tokens && static_cast<int64_t>(ids.size()) > *f.max_tokens) ids.resize(*f.max_tokens);
  if (ids.size() < 2) {
    return MakeError(ErrorCode::kInvalidArgument, f.text + ": the text encodes to " + std::to_string(ids.size()) +
                                                      " token(s); at least 2 are needed to score one");
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<text::Window> windows,
                           text::SplitWindows(static_cast<int64_t>(ids.size()), f.window));
  text::ArgmaxRecord ours;
  ours.tokens = static_cast<int64_t>(ids.size());
  ours.window = f.window;
  ours.tokens_sha256 = text::TokenIdsSha256(ids);
  ours.source = "bigplan plan " + f.plan;
  if (reference) {
    // The same check GreedyAgreement makes at the end, before any time is spent (positions follow from these).
    text::ArgmaxRecord probe = ours;
    probe.ids.resize(reference->ids.size());
    BIGPLAN_RETURN_IF_ERROR(text::GreedyAgreement(probe, *reference, f.reference).status());
  }

  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(f.plan, f.model, f.exec));
  const ModelInfo& info = exec->info();
  if (f.window > static_cast<int64_t>(info.max_seq_len)) {
    return MakeError(ErrorCode::kInvalidArgument, "--window " + std::to_string(f.window) + " is longer than the plan's max sequence length " +
                 std::to_string(info.max_seq_len) + " (" + f.plan + "); plan again with `plan --seq-len " +
                 std::to_string(f.window) + "` (and the same other options), or pass --window " +
                 std::to_string(info.max_seq_len) + " or less");
  }
  if (tok->vocab_size() > info.vocab_size) {
    // Ids past the model's vocabulary would be refused by Forward; say which file disagrees.
    for (int64_t id : ids) {
      if (id >= info.vocab_size) {
        return MakeError(ErrorCode::kMismatch, f.model + ": the tokenizer gives id " + std::to_string(id) +
                                                   " but the plan's vocabulary has " +
                                                   std::to_string(info.vocab_size) + " ids");
      }
    }
  }

  std::printf("plan: %s (%s, %s, weights %s, %s)\n", info.plan_path.c_str(), info.architecture.c_str(),
              info.exec_dtype.c_str(), info.weights.c_str(),
              info.cpu_mode ? "cpu" : "cuda");
  std::printf("text: %s: %zu tokens, %zu windows of up to %lld\n", f.text.c_str(), ids.size(), windows.size(),
              static_cast<long long>(f.window));
  std::fflush(stdout);

  text::PerplexityAccumulator acc;
  const auto start = std::chrono::steady_clock::now();
  for (size_t w = 0; w < windows.size(); ++w) {
    const auto window_start = std::chrono::steady_clock::now();
    const std::vector<int64_t> tokens(ids.begin() + windows[w].begin,
                                      ids.begin() + windows[w].begin + windows[w].length);
    ForwardOptions options;
    options.reset = true;
    BIGPLAN_ASSIGN_OR_RETURN(Logits logits, exec->Forward(tokens, /*batch=*/1, options));
    if (logits.seq != windows[w].length || logits.batch != 1) {
      return MakeError(ErrorCode::kInternal, "Forward returned logits [" + std::to_string(logits.batch) + ", " +
                                                 std::to_string(logits.seq) + ", ...] for a [1, " +
                                                 std::to_string(windows[w].length) + "] batch");
    }
    BIGPLAN_RETURN_IF_ERROR(acc.AddWindow(tokens, logits.data.data(), logits.vocab));
    if (f.exec.progress) {
      std::fprintf(stderr, "window %zu/%zu: %lld tokens in %.2f s; running perplexity %.4f\n", w + 1, windows.size(),
                   static_cast<long long>(windows[w].length), Seconds(window_start), acc.perplexity());
    }
  }
  const double seconds = Seconds(start);
  ours.ids = acc.argmax();

  std::optional<double> agreement;
  if (reference) {
    BIGPLAN_ASSIGN_OR_RETURN(double a, text::GreedyAgreement(ours, *reference, f.reference));
    agreement = a;
  }
  if (!f.argmax_out.empty()) BIGPLAN_RETURN_IF_ERROR(text::WriteArgmaxFile(f.argmax_out, ours));

  std::printf("tokens scored: %lld (%lld windows)\n", static_cast<long long>(acc.tokens_scored()),
              static_cast<long long>(acc.windows()));
  std::printf("mean nll: %.6f\n", acc.mean_nll());
  std::printf("perplexity: %.4f\n", acc.perplexity());
  if (agreement) {
    std::printf("greedy agreement: %.6f (%s)\n", *agreement, f.reference.c_str());
  }
  std::printf("time: %.3f s (%.1f tokens/s; load %.3f s)\n", seconds,
              seconds > 0 ? static_cast<double>(acc.tokens_scored()) / seconds : 0.0, exec->stats().load_seconds);

  if (!f.json.empty()) {
    nlohmann::json j = {
        {"plan", info.plan_path},
        {"model", f.model},
        {"exec_dtype", info.exec_dtype},
        {"weights", info.weights},
        {"text", f.text},
        {"window", f.window},
        {"max_tokens", f.max_tokens ? nlohmann::json(*f.max_tokens) : nlohmann::json(nullptr)},
        {"text_tokens", ids.size()},
        {"tokens", acc.tokens_scored()},
        {"windows", acc.windows()},
        {"nll", acc.mean_nll()},
        {"ppl", acc.perplexity()},
        {"agreement", agreement ? nlohmann::json(*agreement) : nlohmann::json(nullptr)},
        {"seconds", seconds},
    };
    std::ofstream out(f.json, std::ios::trunc);
    if (!out) return MakeError(ErrorCode::kIo, f.json + ": cannot open the JSON output for writing");
    out << j.dump(2) << "\n";
    out.flush();
    if (!out) return MakeError(ErrorCode::kIo, f.json + ": writing the JSON output failed");
  }
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("perplexity", [&] { return bigplan::Main(argc, argv); });
}
