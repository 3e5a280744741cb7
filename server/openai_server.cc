#include "server/openai_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

namespace bigplan::server {

using json = nlohmann::json;

namespace {

json ErrorBody(const std::string& message, const std::string& type, const std::string& param = "") {
  return json{
      {"error",
       {{"message", message}, {"type", type}, {"param", param.empty() ? json() : json(param)}, {"code", json()}}}};
}

void SendError(httplib::Response& res, int status, const std::string& message, const std::string& param = "") {
  res.status = status;
  const std::string type = status == 503 ? "server_error" : status == 404 ? "not_found_error" : "invalid_request_error";
  res.set_content(ErrorBody(message, type, param).dump(), "application/json");
}

std::string NewId(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  return std::string(prefix) + std::to_string(std::time(nullptr)) + "-" + std::to_string(++counter);
}

// Reads the sampling fields shared by both endpoints. Returns "" or an error message (with *param set).
std::string ParseCommon(const json& body, CompletionRequest* r, bool* stream, std::string* param) {
  auto number = [&](const char* key, double lo, double hi, double* out) -> std::string {
    if (!body.contains(key) || body[key].is_null()) return "";
    if (!body[key].is_number()) {
      *param = key;
      return std::string("'") + key + "' must be a number";
    }
    const double v = body[key].get<double>();
    if (!(v >= lo && v <= hi)) {
      *param = key;
      return std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    }
    *out = v;
    return "";
  };
  double t = r->temperature, p = r->top_p, k = r->top_k;
  std::string e;
  if (!(e = number("temperature", 0, 2, &t)).empty()) return e;
  if (!(e = number("top_p", 0, 1, &p)).empty()) return e;
  if (!(e = number("top_k", 0, 1e9, &k)).empty()) return e;
  if (p <= 0) {
    *param = "top_p";
    return "'top_p' must be greater than 0";
  }
  r->temperature = static_cast<float>(t);
  r->top_p = static_cast<float>(p);
  r->top_k = static_cast<int>(k);
  for (const char* key : {"max_tokens", "max_completion_tokens"}) {
    if (!body.contains(key) || body[key].is_null()) continue;
    if (!body[key].is_number_integer() || body[key].get<int64_t>() < 1 || body[key].get<int64_t>() > (1 << 30)) {
      *param = key;
      return std::string("'") + key + "' must be a positive integer";
    }
    r->max_tokens = static_cast<int>(body[key].get<int64_t>());
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    if (!body["seed"].is_number_integer()) {
      *param = "seed";
      return "'seed' must be an integer";
    }
    r->seed = static_cast<uint64_t>(body["seed"].get<int64_t>());
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& s = body["stop"];
    if (s.is_string()) {
      r->stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4) {
      for (const json& x : s) {
        if (!x.is_string()) {
          *param = "stop";
          return "'stop' must be a string or a list of up to 4 strings";
        }
        r->stop.push_back(x.get<std::string>());
      }
    } else {
      *param = "stop";
      return "'stop' must be a string or a list of up to 4 strings";
    }
  }
  if (body.contains("n") &&
      !(body["n"].is_null() || (body["n"].is_number_integer() && body["n"].get<int64_t>() == 1))) {
    *param = "n";
    return "only n = 1 is supported";
  }
  // "ignore_eos" (as vLLM's): generate max_tokens whatever the model emits (benchmarks with random weights).
  if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {
    if (!body["ignore_eos"].is_boolean()) {
      *param = "ignore_eos";
      return "'ignore_eos' must be a boolean";
    }
    r->ignore_eos = body["ignore_eos"].get<bool>();
  }
  *stream = body.contains("stream") && body["stream"].is_boolean() && body["stream"].get<bool>();
  if (body.contains("stream") && !body["stream"].is_null() && !body["stream"].is_boolean()) {
    *param = "stream";
    return "'stream' must be a boolean";
  }
  return "";
}

}  // namespace

struct OpenAiServer::Impl {
  Batcher& batcher;
  const text::Tokenizer& tok;
  const text::ChatTemplate* chat;
  ServerOptions options;
  httplib::Server http;
  std::atomic<int> in_flight{0};

  Impl(Batcher& b, const text::Tokenizer& t, const text::ChatTemplate* c, ServerOptions o)
      : batcher(b), tok(t), chat(c), options(std::move(o)) {}

  // Runs `job` and writes the response: SSE chunks, or one JSON body. `chat_api` picks the response shapes.
  void Respond(httplib::Response& res, std::shared_ptr<Job> job, bool stream, bool chat_api,
               std::shared_ptr<void> guard) {
    const std::string id = NewId(chat_api ? "chatcmpl-" : "cmpl-");
    const int64_t created = std::time(nullptr);
    const std::string model = options.model_name;
    auto chunk_json = [=](const std::string& text, const json& finish, bool first) {
      json choice = {{"index", 0}, {"finish_reason", finish}};
      if (chat_api) {
        json delta = json::object();
        if (first) delta["role"] = "assistant";
        if (!text.empty()) delta["content"] = text;
        choice["delta"] = delta;
      } else {
        choice["text"] = text;
        choice["logprobs"] = nullptr;
      }
      return json{{"id", id},
                  {"object", chat_api ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({choice})}};
    };
    auto finish_reason = [](const JobEvent& e) -> json {
      if (e.finish_reason == "stop" || e.finish_reason == "length") return e.finish_reason;
      return e.finish_reason;
    };
    if (stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider("text/event-stream", [=, first = true](size_t, httplib::DataSink& sink) mutable {
        (void)guard;
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        if (chat_api && first) {
          first = false;
          if (!write("data: " + chunk_json("", nullptr, true).dump() + "\n\n")) {
            job->Cancel();
            return false;
          }
        }
        for (;;) {
          std::optional<JobEvent> e = job->Next(200);
          if (!e) {
            if (!sink.is_writable()) {
              job->Cancel();
              return false;
            }
            continue;
          }
          if (e->done) {
            if (e->finish_reason == "error") {
              write("data: " + ErrorBody(e->error, "server_error").dump() + "\n\n");
            } else {
              json last = chunk_json("", finish_reason(*e), false);
              last["usage"] = {{"prompt_tokens", e->prompt_tokens},
                               {"completion_tokens", e->completion_tokens},
                               {"total_tokens", e->prompt_tokens + e->completion_tokens}};
              write("data: " + last.dump() + "\n\n");
            }
            write("data: [DONE]\n\n");
            sink.done();
            return true;
          }
          if (!write("data: " + chunk_json(e->text, nullptr, false).dump() + "\n\n")) {
            job->Cancel();
            return false;
          }
        }
      });
      return;
    }
    res.set_chunked_content_provider("application/json", [=](size_t, httplib::DataSink& sink) {
      (void)guard;
      std::string text;
      auto last_ping = std::chrono::steady_clock::now();
      for (;;) {
        std::optional<JobEvent> e = job->Next(200);
        if (!e) {
          // Whitespace before the JSON body: a failed write means the client is gone.
          if (std::chrono::steady_clock::now() - last_ping > std::chrono::seconds(1)) {
            last_ping = std::chrono::steady_clock::now();
            if (!sink.write(" ", 1) || !sink.is_writable()) {
              job->Cancel();
              return false;
            }
          }
          continue;
        }
        if (!e->done) {
          text += e->text;
          continue;
        }
        json body;
        if (e->finish_reason == "error") {
          body = ErrorBody(e->error, "server_error");
        } else {
          json choice = {{"index", 0}, {"finish_reason", finish_reason(*e)}};
          if (chat_api)
            choice["message"] = {{"role", "assistant"}, {"content", text}};
          else {
            choice["text"] = text;
            choice["logprobs"] = nullptr;
          }
          body = {{"id", id},
                  {"object", chat_api ? "chat.completion" : "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({choice})},
                  {"usage",
                   {{"prompt_tokens", e->prompt_tokens},
                    {"completion_tokens", e->completion_tokens},
                    {"total_tokens", e->prompt_tokens + e->completion_tokens}}}};
        }
        const std::string s = body.dump();
        sink.write(s.data(), s.size());
        sink.done();
        return true;
      }
    });
  }

  void Submit(httplib::Response& res, CompletionRequest r, bool stream, bool chat_api) {
    auto job = batcher.Submit(std::move(r));
    if (!job.ok()) {
      const bool busy = job.error().code == ErrorCode::kBusy;
      SendError(res, busy ? 503 : 400, job.error().message, busy ? "" : "max_tokens");
      return;
    }
    ++in_flight;
    // The provider's owner is destroyed when the response is over (written, or the connection lost).
    auto guard = std::shared_ptr<void>(nullptr, [this](void*) { --in_flight; });
    Respond(res, *job, stream, chat_api, guard);
  }

  // Parses the body; on failure answers 400 and returns nullopt.
  std::optional<json> Body(const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) {
      SendError(res, 400, "the request body must be a JSON object");
      return std::nullopt;
    }
    return body;
  }

  void Completions(const httplib::Request& req, httplib::Response& res) {
    auto body = Body(req, res);
    if (!body) return;
    CompletionRequest r;
    bool stream = false;
    std::string param;
    if (std::string e = ParseCommon(*body, &r, &stream, &param); !e.empty()) return SendError(res, 400, e, param);
    if (!body->contains("prompt")) return SendError(res, 400, "'prompt' is required", "prompt");
    const json& p = (*body)["prompt"];
    std::string prompt;
    if (p.is_string()) {
      prompt = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      prompt = p[0].get<std::string>();
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      for (const json& x : p) {
        if (!x.is_number_integer()) return SendError(res, 400, "'prompt' token ids must be integers", "prompt");
        r.prompt.push_back(x.get<int64_t>());
      }
    } else {
      return SendError(res, 400, "'prompt' must be a string (or one string in a list, or a list of token ids)",
                       "prompt");
    }
    if (r.prompt.empty()) {
      auto ids = tok.Encode(prompt, /*add_special_tokens=*/true);
      if (!ids.ok()) return SendError(res, 400, "prompt: " + ids.error().message, "prompt");
      r.prompt = std::move(*ids);
    }
    if (r.prompt.empty()) return SendError(res, 400, "'prompt' encodes to no tokens", "prompt");
    Submit(res, std::move(r), stream, /*chat_api=*/false);
  }

  void ChatCompletions(const httplib::Request& req, httplib::Response& res) {
    auto body = Body(req, res);
    if (!body) return;
    if (chat == nullptr) return SendError(res, 400, "this model has no chat template");
    CompletionRequest r;
    r.max_tokens = -1;
    bool stream = false;
    std::string param;
    if (std::string e = ParseCommon(*body, &r, &stream, &param); !e.empty()) return SendError(res, 400, e, param);
    if (!body->contains("messages") || !(*body)["messages"].is_array() || (*body)["messages"].empty()) {
      return SendError(res, 400, "'messages' must be a non-empty list", "messages");
    }
    for (const json& m : (*body)["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return SendError(res, 400, "every message needs a string 'role'", "messages");
      }
      if (m.contains("content") && !(m["content"].is_string() || m["content"].is_null() || m["content"].is_array())) {
        return SendError(res, 400, "a message's 'content' must be a string", "messages");
      }
    }
    // Content given as a list of {"type": "text", "text": ...} parts is joined into one string.
    json messages = (*body)["messages"];
    for (json& m : messages) {
      if (m.contains("content") && m["content"].is_array()) {
        std::string text;
        for (const json& part : m["content"]) {
          if (part.is_object() && part.value("type", "") == "text" && part.contains("text") &&
              part["text"].is_string()) {
            text += part["text"].get<std::string>();
          } else {
            return SendError(res, 400, "only text content parts are supported", "messages");
          }
        }
        m["content"] = text;
      }
    }
    const std::string tools = body->contains("tools") && (*body)["tools"].is_array() ? (*body)["tools"].dump() : "";
    auto prompt = chat->ApplyJson(messages.dump(), /*add_generation_prompt=*/true, tools);
    if (!prompt.ok()) return SendError(res, 400, prompt.error().message, "messages");
    auto ids = tok.Encode(*prompt, /*add_special_tokens=*/false);
    if (!ids.ok()) return SendError(res, 400, ids.error().message, "messages");
    r.prompt = std::move(*ids);
    if (r.max_tokens < 0) {
      r.max_tokens = static_cast<int>(std::max<int64_t>(
          1, static_cast<int64_t>(batcher.info().max_seq_len) - static_cast<int64_t>(r.prompt.size())));
    }
    Submit(res, std::move(r), stream, /*chat_api=*/true);
  }
};

OpenAiServer::OpenAiServer(Batcher& batcher, const text::Tokenizer& tokenizer, const text::ChatTemplate* chat,
                           ServerOptions options)
    : impl_(std::make_unique<Impl>(batcher, tokenizer, chat, std::move(options))) {
  Impl* im = impl_.get();
  auto& http = im->http;
  const int threads = std::max(1, im->options.threads);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(8 << 20);
  http.Get("/health", [im](const httplib::Request&, httplib::Response& res) {
    const BatcherStats s = im->batcher.stats();
    res.set_content(json{{"status", "ok"}, {"active", s.active}, {"queued", s.queued}}.dump(), "application/json");
  });
  http.Get("/v1/models", [im](const httplib::Request&, httplib::Response& res) {
    json m = {{"id", im->options.model_name},
              {"object", "model"},
              {"created", 0},
              {"owned_by", "bigplan"},
              {"max_model_len", im->batcher.info().max_seq_len}};
    res.set_content(json{{"object", "list"}, {"data", json::array({m})}}.dump(), "application/json");
  });
  http.Post("/v1/completions",
            [im](const httplib::Request& req, httplib::Response& res) { im->Completions(req, res); });
  http.Post("/v1/chat/completions",
            [im](const httplib::Request& req, httplib::Response& res) { im->ChatCompletions(req, res); });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 404 ? "no such endpoint: " + req.method + " " + req.path
                                              : "request failed with HTTP " + std::to_string(res.status);
    res.set_content(ErrorBody(msg, res.status == 404 ? "not_found_error" : "invalid_request_error").dump(),
                    "application/json");
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content(ErrorBody("internal error", "server_error").dump(), "application/json");
  });
}

OpenAiServer::~OpenAiServer() = default;

Status OpenAiServer::Bind() {
  if (impl_->options.port == 0) {
    port_ = impl_->http.bind_to_any_port(impl_->options.host);
    if (port_ <= 0) return MakeError(ErrorCode::kIo, impl_->options.host + ": cannot bind any port");
    return Status::Ok();
  }
  if (!impl_->http.bind_to_port(impl_->options.host, impl_->options.port)) {
    return MakeError(ErrorCode::kIo, impl_->options.host + ":" + std::to_string(impl_->options.port) +
                                         ": cannot bind (in use, or not a local address?)");
  }
  port_ = impl_->options.port;
  return Status::Ok();
}

void OpenAiServer::Serve() { impl_->http.listen_after_bind(); }

void OpenAiServer::Stop() { impl_->http.stop(); }

int OpenAiServer::in_flight() const { return impl_->in_flight.load(); }

}  // namespace bigplan::server
