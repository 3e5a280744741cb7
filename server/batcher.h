// Continuous batching of text generation requests over one Executor: requests join the running batch at the next
// step (each in its own KV-cache row, Executor::StepRows) and leave at their stop; at most the plan's max_batch
// run at once, the rest wait in a queue in arrival order. One worker thread drives the executor; callers read a
// job's text as it is generated from any thread. No HTTP here (see server/openai_server.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "executor/executor.h"
#include "support/result.h"
#include "text/tokenizer.h"

namespace bigplan::server {

struct CompletionRequest {
  std::vector<int64_t> prompt;    // token ids (not empty)
  int max_tokens = 16;            // new tokens at most (>= 1)
  float temperature = 1.0f;       // <= 0: greedy (argmax, ties to the lowest id)
  float top_p = 1.0f;             // nucleus sampling (1: off)
  int top_k = 0;                  // 0: off
  std::optional<uint64_t> seed;   // sampling seed (none: random)
  std::vector<std::string> stop;  // stop strings (the text ends before the first one)
  bool ignore_eos = false;        // go on past the model's end-of-sequence ids
};

// What a job produced: text chunks as they are generated, then one final event.
struct JobEvent {
  std::string text;           // a chunk (never part of a UTF-8 character)
  bool done = false;          // the final event
  std::string finish_reason;  // final: "stop" (EOS or a stop string), "length", "cancelled", "error"
  std::string error;          // final, finish_reason "error": what failed
  int prompt_tokens = 0;      // final
  int completion_tokens = 0;  // final
};

class Job {
 public:
  // The next event, waiting up to `timeout_ms`; nullopt on timeout.
  std::optional<JobEvent> Next(int timeout_ms);
  // Ends the job at the next step (its row is freed); it then reports finish_reason "cancelled".
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Batcher;
  void Push(JobEvent e);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<JobEvent> events_;
  std::atomic<bool> cancelled_{false};
};

struct BatcherStats {
  uint64_t steps = 0;         // StepRows passes
  uint64_t rows_stepped = 0;  // sum of rows over the passes
  uint64_t completed = 0;     // jobs finished (any reason)
  uint64_t generated_tokens = 0;
  int active = 0;
  int queued = 0;
  int max_active = 0;  // the most rows in one pass so far
};

class Batcher {
 public:
  // `exec` and `tokenizer` must outlive the Batcher. `eos` are the model's end-of-sequence ids.
  Batcher(Executor& exec, const text::Tokenizer& tokenizer, std::vector<int64_t> eos);
  ~Batcher();  // cancels what is left and joins the worker

  // Queues a request. kInvalidArgument (with the numbers) when the prompt is empty, holds ids outside the
  // vocabulary, or prompt + max_tokens exceeds the plan's max_seq_len; kBusy after Drain().
  Result<std::shared_ptr<Job>> Submit(CompletionRequest request);

  // Stops admitting requests (Submit answers kBusy) and returns when every queued and running job has finished.
  void Drain();

  BatcherStats stats() const;
  const ModelInfo& info() const { return exec_.info(); }

 private:
  struct Active;
  void Loop();

  Executor& exec_;
  const text::Tokenizer& tok_;
  std::vector<int64_t> eos_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // work arrived / worker idle
  std::deque<std::pair<CompletionRequest, std::shared_ptr<Job>>> queue_;
  std::vector<std::unique_ptr<Active>> active_;
  bool draining_ = false;
  bool stopping_ = false;
  BatcherStats stats_;
  std::thread worker_;
};

}  // namespace bigplan::server
