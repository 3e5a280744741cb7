// An OpenAI-compatible HTTP server (cpp-httplib) over a Batcher:
//   GET  /health                 {"status": "ok", "active": N, "queued": N}
//   GET  /v1/models              the one model
//   POST /v1/completions         {"prompt": "..." | ["..."], "max_tokens", "temperature", "top_p", "top_k",
//                                 "seed", "stop": "..." | [...], "stream", "ignore_eos" (vLLM's extension)}
//   POST /v1/chat/completions    {"messages": [...], "max_tokens" | "max_completion_tokens", ... as above}
// Streaming ("stream": true) sends server-sent events (data: {chunk}, then data: [DONE]). Bad requests get 4xx
// with {"error": {"message", "type", "param", "code"}}; 503 while shutting down. A client that disconnects has
// its request cancelled (streaming: at the next chunk; otherwise within about a second: the JSON body is preceded
// by whitespace written while it waits, whose failure reveals the drop).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "server/batcher.h"
#include "support/result.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace bigplan::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: any free port (see OpenAiServer::port())
  std::string model_name;  // "id" in /v1/models and responses
  int threads = 64;        // HTTP worker threads (concurrent connections served)
};

class OpenAiServer {
 public:
  // `chat` may be null (then /v1/chat/completions answers 400). Everything must outlive the server.
  OpenAiServer(Batcher& batcher, const text::Tokenizer& tokenizer, const text::ChatTemplate* chat,
               ServerOptions options);
  ~OpenAiServer();

  // Binds host:port. kIo naming the address when it cannot.
  Status Bind();
  int port() const { return port_; }
  // Serves until Stop(); returns then.
  void Serve();
  void Stop();
  // Responses being written (requests accepted and not yet answered in full). For draining: after the batcher
  // is idle, wait for this to reach 0 before Stop().
  int in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace bigplan::server
