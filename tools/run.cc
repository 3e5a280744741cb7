// run: loads a plan and its checkpoint, generates tokens, and prints them with timings; or, with a text prompt,
// streams the generated text.
//
//   run --plan model.bplan --model DIR --prompt-ids 1,2,3 --max-new-tokens 16
//   run --plan model.bplan --model DIR --chat --prompt "What is the capital of France?"
//   run --plan split.bplan --model DIR --world-size 2 --rank 1 --rendezvous host0:29500 &   (one process per GPU)
//   run --plan split.bplan --model DIR --world-size 2 --rank 0 --rendezvous host0:29500 --prompt "..."
//
// See kUsage for every flag. Relative paths are taken from the directory `bazel run` was started in.

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "executor/executor.h"
#include "support/cli.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "support/units.h"
#include "text/chat_template.h"
#include "text/streamer.h"
#include "text/tokenizer.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: run --plan PLAN --model DIR (--prompt TEXT | --prompt-file F | --chat | --prompt-ids IDS) [FLAGS]\n"
    "\n"
    "Loads a plan (from `plan -o`) and the checkpoint it was made for, then generates tokens, overlapping weight\n"
    "copies with compute as the plan schedules them. With a text prompt the model's tokenizer (tokenizer.json or\n"
    "tokenizer.model in DIR) encodes it and the generated text is printed to stdout as it is generated (timings\n"
    "go to stderr); with --prompt-ids the generated token ids and timings are printed.\n"
    "\n"
    "  --plan FILE              the plan (.bplan)\n"
    "  --model DIR              the checkpoint directory the plan was made for\n"
    "  --prompt TEXT            a text prompt (encoded with the tokenizer's special tokens, e.g. BOS)\n"
    "  --prompt-file F          the text prompt from a file\n"
    "  --chat                   render the prompt as a user message with the model's chat template (and the\n"
    "                           generation prompt); without --prompt/--prompt-file, a conversation: every line\n"
    "                           on stdin is a user message, each answer is printed and kept in the history\n"
    "  --system TEXT            with --chat: a system message first\n"
    "  --stop STRING            text mode: end when the text contains STRING (not printed); repeatable\n"
    "  --ignore-eos             do not stop at the model's end-of-sequence ids (generation_config.json, else\n"
    "                           config.json; by default generation stops there)\n"
    "  --prompt-ids IDS         prompt token ids, comma-separated (\"1,2,3\"); rows separated by ';' for a batch\n"
    "                           (\"1,2,3;4,5,6\"; every row the same length)\n"
    "  --batch B                repeat a single-row prompt B times (default 1)\n"
    "  --max-new-tokens N       tokens to generate per row (default 16)\n"
    "  --temperature T          sample with temperature T (default 0: greedy)\n"
    "  --top-k K                keep the K most likely tokens when sampling (default 0: all)\n"
    "  --top-p P                nucleus sampling threshold (default 1: off)\n"
    "  --seed S                 sampling seed (default 0)\n"
    "  --stop-ids IDS           stop a row after one of these token ids (comma-separated)\n"
    "  --cpu                    run every block on the CPU even if a GPU is present\n"
    "  --disk-workers N         threads reading disk-tier blocks (default: automatic)\n"
    "  --no-cuda-graphs         run every decode step eagerly (no CUDA graph replays)\n"
    "  --no-direct-io           read disk-tier blocks from the memory-mapped shards (through the page cache)\n"
    "                           instead of with O_DIRECT pread into pinned staging\n"
    "  --adapt-expert-share     mixture-of-experts plans with a host share: after each decode step move the share\n"
    "                           toward the host's measured speed (faster when the host is slower or faster than\n"
    "                           the plan's profile; the host's experts then depend on timing)\n"
    "  --trace FILE             write a Chrome/Perfetto trace (open in ui.perfetto.dev or chrome://tracing)\n"
    "  --world-size N           ranks: run the plan as N processes, one per plan device (every block resident on\n"
    "                           a GPU); start one per GPU, on any hosts, each with the same --plan and --model\n"
    "  --rank R                 this process's rank (computes the plan's cuda:R); rank 0 takes the prompt and\n"
    "                           prints the output, the others serve until rank 0 ends (no prompt needed)\n"
    "  --rendezvous HOST:PORT   where the ranks meet (rank 0 listens there)\n"
    "  --local-device D         this rank's CUDA device (default: cuda:R if visible, else cuda:0)\n"
    "  --repeat N               generate N times and report each run's timings (default 1)\n"
    "  --quiet                  no load progress on stderr\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok, 1 the request failed, 2 bad command line.\n";

namespace jinja = text::jinja;

constexpr Cli kCli(kUsage);

Error Usage(const std::string& why) { return kCli.Usage(why); }

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

Result<std::vector<int64_t>> ParseIds(const std::string& flag, const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  std::string piece;
  while (std::getline(ss, piece, ',')) {
    piece.erase(0, piece.find_first_not_of(" \t"));
    piece.erase(piece.find_last_not_of(" \t") + 1);
    BIGPLAN_ASSIGN_OR_RETURN(int64_t id, kCli.ParseInt(flag, piece, 0));
    ids.push_back(id);
  }
  if (ids.empty()) return Usage(flag + ": no token ids in \"" + text + "\"");
  return ids;
}

struct Flags {
  std::string plan;
  std::string model;
  std::string prompt;  // --prompt-ids
  std::string text;    // --prompt / --prompt-file
  bool has_text = false;
  bool chat = false;
  std::string system;
  std::vector<std::string> stops;
  bool ignore_eos = false;
  std::string stop_ids;
  int64_t batch = 1;
  GenerateOptions gen;
  ExecutorOptions exec;
  std::string trace;
  int64_t repeat = 1;
};

Result<Flags> ParseFlags(int argc, char** argv, bool* help) {
  Flags f;
  f.gen.max_new_tokens = 16;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
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
    if (arg == "--no-cuda-graphs") {
      f.exec.cuda_graphs = false;
      continue;
    }
    if (arg == "--no-direct-io") {
      f.exec.disk_direct_io = false;
      continue;
    }
    if (arg == "--adapt-expert-share") {
      f.exec.adapt_expert_share = true;
      continue;
    }
    if (arg == "--chat") {
      f.chat = true;
      continue;
    }
    if (arg == "--ignore-eos") {
      f.ignore_eos = true;
      continue;
    }
    std::string flag, value;
    switch (SplitFlag(argc, argv, &i,
                      {"--plan", "--model", "--prompt-ids", "--prompt", "--prompt-file", "--system", "--stop", "--batch", "--max-new-tokens", "--temperature", "--top-k",
                       "--top-p", "--seed", "--stop-ids", "--disk-workers", "--trace", "--repeat", "--world-size",
                       "--rank", "--rendezvous", "--local-device"},
                      &flag, &value)) {
      case FlagSplit::kOk: break;
      case FlagSplit::kUnknown: return Usage("unknown flag " + arg);
      case FlagSplit::kMissingValue: return Usage(flag + " needs a value");
    }
    if (flag == "--plan") f.plan = UserPath(value);
    else if (flag == "--model") f.model = UserPath(value);
    else if (flag == "--prompt-ids") f.prompt = value;
    else if (flag == "--prompt") {
      if (f.has_text) return Usage("give one of --prompt and --prompt-file");
      f.text = value;
      f.has_text = true;
    } else if (flag == "--prompt-file") {
      if (f.has_text) return Usage("give one of --prompt and --prompt-file");
      std::ifstream in(UserPath(value), std::ios::binary);
      if (!in) return MakeError(ErrorCode::kNotFound, UserPath(value) + ": cannot open the prompt file");
      f.text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      f.has_text = true;
    } else if (flag == "--system") f.system = value;
    else if (flag == "--stop") {
      if (value.empty()) return Usage("--stop: empty string");
      f.stops.push_back(value);
    }
    else if (flag == "--stop-ids") f.stop_ids = value;
    else if (flag == "--trace") f.trace = UserPath(value);
    else if (flag == "--batch") { BIGPLAN_ASSIGN_OR_RETURN(f.batch, kCli.ParseInt(flag, value, 1)); }
    else if (flag == "--max-new-tokens") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt(flag, value, 1, kIntMax));
      f.gen.max_new_tokens = static_cast<int>(n);
    } else if (flag == "--temperature") {
      BIGPLAN_ASSIGN_OR_RETURN(double t, kCli.ParseDouble(flag, value, 0));
      f.gen.temperature = t;
    } else if (flag == "--top-k") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t k, kCli.ParseInt(flag, value, 0, kIntMax));
      f.gen.top_k = static_cast<int>(k);
    } else if (flag == "--top-p") {
      BIGPLAN_ASSIGN_OR_RETURN(double p, kCli.ParseDouble(flag, value, 0));
      if (p <= 0 || p > 1) return Usage("--top-p: expected a number in (0, 1], got \"" + value + "\"");
      f.gen.top_p = p;
    } else if (flag == "--seed") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t s, kCli.ParseInt(flag, value, 0));
      f.gen.seed = static_cast<uint64_t>(s);
    } else if (flag == "--disk-workers") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt(flag, value, 1, 1024));
      f.exec.disk_workers = static_cast<int>(n);
    } else if (flag == "--repeat") {
      BIGPLAN_ASSIGN_OR_RETURN(f.repeat, kCli.ParseInt(flag, value, 1));
    } else if (flag == "--world-size") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t n, kCli.ParseInt(flag, value, 2, 1024));
      f.exec.world_size = static_cast<int>(n);
    } else if (flag == "--rank") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t r, kCli.ParseInt(flag, value, 0, 1023));
      f.exec.rank = static_cast<int>(r);
    } else if (flag == "--rendezvous") {
      f.exec.rendezvous = value;
    } else if (flag == "--local-device") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t d, kCli.ParseInt(flag, value, 0, 1023));
      f.exec.local_device = static_cast<int>(d);
    } else {
      return Usage("unknown flag " + flag);
    }
  }
  if (f.plan.empty()) return Usage("--plan is required");
  if (f.model.empty()) return Usage("--model is required");
  if ((f.exec.world_size > 0) != !f.exec.rendezvous.empty()) {
    return Usage("--world-size and --rendezvous go together");
  }
  if (f.exec.world_size > 0 && f.exec.rank >= f.exec.world_size) {
    return Usage("--rank " + std::to_string(f.exec.rank) + " is not below --world-size " + std::to_string(f.exec.world_size));
  }
  if (f.exec.world_size > 0 && f.exec.rank > 0) return f;  // a serving rank takes no prompt
  const bool text_mode = f.has_text || f.chat;
  if (text_mode && !f.prompt.empty()) return Usage("give either a text prompt (--prompt, --prompt-file, --chat) or --prompt-ids");
  if (!text_mode && f.prompt.empty()) return Usage("a prompt is required: --prompt, --prompt-file, --chat or --prompt-ids");
  if (!f.stops.empty() && !text_mode) return Usage("--stop needs a text prompt (--prompt, --prompt-file or --chat)");
  if (!f.system.empty() && !f.chat) return Usage("--system needs --chat");
  if (text_mode && f.batch != 1) return Usage("--batch: text prompts run one row");
  if (!f.stop_ids.empty()) {
    BIGPLAN_ASSIGN_OR_RETURN(f.gen.stop_token_ids, ParseIds("--stop-ids", f.stop_ids));
  }
  f.exec.record_trace = !f.trace.empty();
  return f;
}

std::string Join(const std::vector<int64_t>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? " " : "") + std::to_string(v[i]);
  return out;
}

// One generation from `prompt` (token ids), streaming its text to stdout. Returns the text (stop string and
// what follows excluded).
Result<std::string> GenerateText(Executor& exec, const text::Tokenizer& tok, const Flags& f,
                                 const std::vector<int64_t>& prompt, const GenerateOptions& base) {
  GenerateOptions gen = base;
  text::TextStreamer streamer(tok, f.stops);
  std::string all;
  gen.on_step = [&](int, const std::vector<int64_t>& tokens) {
    if (tokens[0] < 0) return false;
    bool stop = false;
    // The end-of-sequence token itself is not text.
    const bool eos = std::find(gen.stop_token_ids.begin(), gen.stop_token_ids.end(), tokens[0]) != gen.stop_token_ids.end();
    const std::string chunk = eos ? "" : streamer.Next(tokens[0], &stop);
    all += chunk;
    std::fwrite(chunk.data(), 1, chunk.size(), stdout);
    std::fflush(stdout);
    return !stop;
  };
  BIGPLAN_ASSIGN_OR_RETURN(GenerateResult result, exec.Generate({prompt}, gen));
  const std::string rest = streamer.Finish();
  all += rest;
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (f.exec.progress) {
    const size_t n = result.tokens[0].size();
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated%s; time to first token %.1f ms", prompt.size(), n,
                 result.stopped[0] ? ", stopped at end-of-sequence" : streamer.stopped() ? ", stopped at a stop string" : "",
                 result.prefill_ms);
    if (!result.decode_ms.empty()) {
      const double mean = std::accumulate(result.decode_ms.begin(), result.decode_ms.end(), 0.0) / result.decode_ms.size();
      std::fprintf(stderr, ", decode %.1f ms/token (%.2f tokens/s)", mean, mean > 0 ? 1000.0 / mean : 0.0);
    }
    std::fprintf(stderr, "]\n");
  }
  return all;
}

Status TextMain(const Flags& f) {
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<text::Tokenizer> tok, text::Tokenizer::Load(f.model));
  std::optional<text::ChatTemplate> chat;
  if (f.chat) {
    BIGPLAN_ASSIGN_OR_RETURN(text::ChatTemplate t, text::ChatTemplate::Load(f.model));
    chat.emplace(std::move(t));
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(f.plan, f.model, f.exec));
  GenerateOptions gen = f.gen;
  if (!f.ignore_eos) {
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> eos, text::LoadEosTokenIds(f.model));
    if (eos.empty()) eos = exec->info().eos_token_ids;
    gen.stop_token_ids.insert(gen.stop_token_ids.end(), eos.begin(), eos.end());
  }
  if (!chat) {
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> ids, tok->Encode(f.text, /*add_special_tokens=*/true));
    if (ids.empty()) return Usage("the prompt encodes to no tokens");
    BIGPLAN_ASSIGN_OR_RETURN(std::string out, GenerateText(*exec, *tok, f, ids, gen));
    (void)out;
    return Status::Ok();
  }
  jinja::Value messages = jinja::Value::MakeList();
  auto add = [&](const std::string& role, const std::string& content) {
    jinja::Value m = jinja::Value::MakeDict();
    m.Set("role", jinja::Value::Str(role));
    m.Set("content", jinja::Value::Str(content));
    messages.list->push_back(m);
  };
  if (!f.system.empty()) add("system", f.system);
  auto turn = [&](const std::string& user) -> Status {
    add("user", user);
    BIGPLAN_ASSIGN_OR_RETURN(std::string prompt, chat->Apply(messages, /*add_generation_prompt=*/true));
    // As apply_chat_template(tokenize=True): the template already holds the special tokens it wants.
    BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> ids, tok->Encode(prompt, /*add_special_tokens=*/false));
    BIGPLAN_ASSIGN_OR_RETURN(std::string answer, GenerateText(*exec, *tok, f, ids, gen));
    add("assistant", answer);
    return Status::Ok();
  };
  if (f.has_text) return turn(f.text);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    BIGPLAN_RETURN_IF_ERROR(turn(line));
  }
  return Status::Ok();
}

Status Main(int argc, char** argv) {
  bool help = false;
  BIGPLAN_ASSIGN_OR_RETURN(Flags f, ParseFlags(argc, argv, &help));
  if (help) {
    std::fputs(kUsage, stdout);
    return Status::Ok();
  }
  if (f.exec.world_size > 0 && f.exec.rank > 0) {
    // A serving rank: its part of every pass rank 0 runs, until rank 0 ends.
    BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(f.plan, f.model, f.exec));
    BIGPLAN_RETURN_IF_ERROR(exec->ServeRank());
    std::fprintf(stderr, "rank %d of %d: served %llu passes\n", f.exec.rank, f.exec.world_size,
                 static_cast<unsigned long long>(exec->stats().forward_count));
    return Status::Ok();
  }
  if (f.has_text || f.chat) return TextMain(f);
  std::vector<std::vector<int64_t>> prompts;
  {
    std::stringstream ss(f.prompt);
    std::string row;
    while (std::getline(ss, row, ';')) {
      BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> ids, ParseIds("--prompt-ids", row));
      prompts.push_back(std::move(ids));
    }
  }
  if (prompts.size() > 1 && f.batch > 1 && static_cast<int64_t>(prompts.size()) != f.batch) {
    return Usage("--batch " + std::to_string(f.batch) + " but --prompt-ids has " + std::to_string(prompts.size()) +
                 " rows");
  }

  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(f.plan, f.model, f.exec));
  const ModelInfo& info = exec->info();
  if (f.batch > static_cast<int64_t>(info.max_batch)) {
    return Usage("--batch " + std::to_string(f.batch) + " exceeds the plan's max_batch " +
                 std::to_string(info.max_batch));
  }
  if (prompts.size() == 1 && f.batch > 1) prompts.assign(f.batch, prompts[0]);
  const Stats load = exec->stats();
  std::printf("plan: %s (%s, %s, %d blocks: %d gpu, %d cpu, %d disk tier)\n", info.plan_path.c_str(),
              info.architecture.c_str(), info.exec_dtype.c_str(), info.blocks, info.gpu_tier_blocks,
              info.cpu_tier_blocks, info.disk_tier_blocks);
  std::printf("mode: %s; device arenas %s, pinned pool %s\n", info.cpu_mode ? "cpu" : "cuda",
              FormatBytes(info.device_arena_bytes).c_str(), FormatBytes(info.pinned_pool_bytes).c_str());
  std::printf("load: %.3f s (%s of resident and cpu-tier weights)\n", load.load_seconds,
              FormatBytes(load.loaded_bytes).c_str());
  if (!info.disk_read_mode.empty()) {
    std::printf("disk reads: %s", info.disk_read_mode.c_str());
    if (info.disk_direct_fallback_blocks > 0) {
      std::printf(" (%d blocks do not fit direct reads: copied from the mapping)", info.disk_direct_fallback_blocks);
    }
    std::printf("\n");
  }

  for (int64_t r = 0; r < f.repeat; ++r) {
    const Stats before = exec->stats();
    BIGPLAN_ASSIGN_OR_RETURN(GenerateResult result, exec->Generate(prompts, f.gen));
    const Stats after = exec->stats();
    if (r == 0 || f.repeat > 1) {
      if (f.repeat > 1) std::printf("run %lld:\n", static_cast<long long>(r + 1));
      if (r == 0) {
        for (size_t b = 0; b < result.tokens.size(); ++b) {
          std::printf("tokens[%zu]: %s%s\n", b, Join(result.tokens[b]).c_str(),
                      result.stopped[b] ? " (stop)" : "");
        }
      }
      std::printf("time to first token: %.3f ms (prompt %zu tokens x batch %zu)\n", result.prefill_ms,
                  prompts[0].size(), prompts.size());
      if (!result.decode_ms.empty()) {
        std::vector<double> d = result.decode_ms;
        const double mean = std::accumulate(d.begin(), d.end(), 0.0) / d.size();
        std::sort(d.begin(), d.end());
        std::printf("decode: %.3f ms/token (mean of %zu; min %.3f, median %.3f, max %.3f)\n", mean, d.size(),
                    d.front(), d[d.size() / 2], d.back());
      }
      const uint64_t forwards = after.forward_count - before.forward_count;
      const uint64_t cpu = after.cpu_tier_bytes - before.cpu_tier_bytes;
      const uint64_t disk = after.disk_tier_bytes - before.disk_tier_bytes;
      if (forwards > 0) {
        std::printf("streamed per forward: %s (cpu tier %s, disk tier %s)\n",
                    FormatBytes((cpu + disk) / forwards).c_str(), FormatBytes(cpu / forwards).c_str(),
                    FormatBytes(disk / forwards).c_str());
        const uint64_t host_forwards = after.host_compute_forwards - before.host_compute_forwards;
        if (host_forwards > 0) {
          std::printf("host compute: %llu decode forwards multiplied %s per forward on the CPU (%d threads) instead "
                      "of copying it\n",
                      static_cast<unsigned long long>(host_forwards),
                      FormatBytes((after.host_compute_bytes - before.host_compute_bytes) / host_forwards).c_str(),
                      exec->info().host_threads);
        }
        const uint64_t direct = after.disk_direct_blocks - before.disk_direct_blocks;
        const uint64_t bounce = after.disk_bounce_blocks - before.disk_bounce_blocks;
        const uint64_t mmap = after.disk_mmap_blocks - before.disk_mmap_blocks;
        const uint64_t fallbacks = after.disk_direct_fallbacks - before.disk_direct_fallbacks;
        if (direct + bounce + mmap > 0) {
          std::printf("disk block reads: %llu direct, %llu bounce (cast), %llu from the mapping (%llu fallbacks); "
                      "%s read with pread\n",
                      static_cast<unsigned long long>(direct), static_cast<unsigned long long>(bounce),
                      static_cast<unsigned long long>(mmap), static_cast<unsigned long long>(fallbacks),
                      FormatBytes(after.disk_read_bytes - before.disk_read_bytes).c_str());
        }
      }
    }
  }
  if (!f.trace.empty()) {
    BIGPLAN_RETURN_IF_ERROR(exec->WriteTrace(f.trace));
    std::printf("trace: %s\n", f.trace.c_str());
  }
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("run", [&] { return bigplan::Main(argc, argv); });
}
