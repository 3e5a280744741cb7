// serve: an OpenAI-compatible HTTP server over a plan (continuous batching: concurrent requests share forward
// passes). See kUsage and server/openai_server.h.
//
//   serve --plan model.bplan --model DIR [--host 127.0.0.1] [--port 8000]

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "executor/executor.h"
#include "server/batcher.h"
#include "server/openai_server.h"
#include "support/cli.h"
#include "support/result.h"
#include "support/tool_main.h"
#include "text/chat_template.h"
#include "text/streamer.h"
#include "text/tokenizer.h"

namespace bigplan {
namespace {

constexpr const char* kUsage =
    "usage: serve --plan PLAN --model DIR [--host 127.0.0.1] [--port 8000] [FLAGS]\n"
    "\n"
    "Serves the model over HTTP with OpenAI's API: POST /v1/completions, POST /v1/chat/completions (\"stream\":\n"
    "true for server-sent events), GET /v1/models, GET /health. Concurrent requests share forward passes: a request\n"
    "joins the running batch at the next step and leaves at its stop, up to the plan's max_batch at once (plan with\n"
    "--batch N for N concurrent streams); the rest wait in arrival order. Generation stops at the model's\n"
    "end-of-sequence ids (generation_config.json, else config.json). SIGTERM or SIGINT: stop accepting requests,\n"
    "finish the running and queued ones, exit.\n"
    "\n"
    "  --plan FILE              the plan (.bplan)\n"
    "  --model DIR              the checkpoint directory (with tokenizer.json or tokenizer.model, and the chat\n"
    "                           template for /v1/chat/completions)\n"
    "  --host ADDR              address to listen on (default 127.0.0.1: this machine only)\n"
    "  --port N                 port (default 8000; 0: any free port, printed at start)\n"
    "  --model-name NAME        the model's id in the API (default: the directory's name)\n"
    "  --threads N              HTTP worker threads, i.e. connections served at once (default 64)\n"
    "  --cpu                    run every block on the CPU even if a GPU is present\n"
    "  --quiet                  no load progress\n"
    "  -h, --help               this text\n"
    "\n"
    "Exit status: 0 ok (after a signal), 1 the server could not start, 2 bad command line.\n";

constexpr Cli kCli(kUsage);

Status Main(int argc, char** argv) {
  std::string plan, model, name;
  server::ServerOptions so;
  ExecutorOptions eo;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return Status::Ok();
    }
    if (arg == "--cpu") {
      eo.force_cpu = true;
      continue;
    }
    if (arg == "--quiet") {
      eo.progress = false;
      continue;
    }
    std::string flag, value;
    switch (SplitFlag(argc, argv, &i, {"--plan", "--model", "--host", "--port", "--model-name", "--threads"}, &flag,
                      &value)) {
      case FlagSplit::kOk:
        break;
      case FlagSplit::kUnknown:
        return kCli.Usage("unknown flag " + arg);
      case FlagSplit::kMissingValue:
        return kCli.Usage(flag + " needs a value");
    }
    if (flag == "--plan")
      plan = UserPath(value);
    else if (flag == "--model")
      model = UserPath(value);
    else if (flag == "--host")
      so.host = value;
    else if (flag == "--model-name")
      name = value;
    else if (flag == "--port") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t p, kCli.ParseInt(flag, value, 0, 65535));
      so.port = static_cast<int>(p);
    } else if (flag == "--threads") {
      BIGPLAN_ASSIGN_OR_RETURN(int64_t t, kCli.ParseInt(flag, value, 1, 4096));
      so.threads = static_cast<int>(t);
    } else {
      return kCli.Usage("unknown flag " + flag);
    }
  }
  if (plan.empty()) return kCli.Usage("--plan is required");
  if (model.empty()) return kCli.Usage("--model is required");
  if (name.empty()) {
    std::string m = model;
    while (m.size() > 1 && m.back() == '/') m.pop_back();
    name = m.substr(m.find_last_of('/') + 1);
  }
  so.model_name = name;

  // Signals go to the thread that waits for them; every other thread (HTTP, executor) has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<text::Tokenizer> tok, text::Tokenizer::Load(model));
  std::optional<text::ChatTemplate> chat;
  if (auto c = text::ChatTemplate::Load(model); c.ok()) {
    chat.emplace(std::move(c).value());
  } else if (c.error().code != ErrorCode::kNotFound) {
    return c.error();
  }
  BIGPLAN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> exec, Executor::Load(plan, model, eo));
  BIGPLAN_ASSIGN_OR_RETURN(std::vector<int64_t> eos, text::LoadEosTokenIds(model));
  if (eos.empty()) eos = exec->info().eos_token_ids;
  server::Batcher batcher(*exec, *tok, eos);
  server::OpenAiServer http(batcher, *tok, chat ? &*chat : nullptr, so);
  BIGPLAN_RETURN_IF_ERROR(http.Bind());
  std::fprintf(stderr, "serve: %s (%s, max_batch %u, context %u tokens, %s) listening on http://%s:%d\n", name.c_str(),
               exec->info().architecture.c_str(), exec->info().max_batch, exec->info().max_seq_len,
               exec->info().cpu_mode ? "cpu" : "cuda", so.host.c_str(), http.port());
  std::fflush(stderr);

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::fprintf(stderr, "serve: signal %d: finishing %d running and queued requests\n", sig,
                 batcher.stats().active + batcher.stats().queued);
    batcher.Drain();
    // Let the HTTP threads write what the batcher finished (bounded: a stuck client does not hold the exit).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (http.in_flight() > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    http.Stop();
  });
  http.Serve();
  waiter.join();
  const server::BatcherStats s = batcher.stats();
  std::fprintf(stderr, "serve: stopped after %llu requests, %llu tokens, %llu steps (at most %d rows per step)\n",
               static_cast<unsigned long long>(s.completed), static_cast<unsigned long long>(s.generated_tokens),
               static_cast<unsigned long long>(s.steps), s.max_active);
  return Status::Ok();
}

}  // namespace
}  // namespace bigplan

int main(int argc, char** argv) {
  return bigplan::RunTool("serve", [&] { return bigplan::Main(argc, argv); });
}
