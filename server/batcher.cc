#include "server/batcher.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "executor/sampling.h"
#include "text/streamer.h"

namespace bigplan::server {

std::optional<JobEvent> Job::Next(int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return !events_.empty(); })) {
    return std::nullopt;
  }
  JobEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void Job::Push(JobEvent e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

struct Batcher::Active {
  CompletionRequest req;
  std::shared_ptr<Job> job;
  int row = 0;
  int64_t pos = 0;            // tokens cached in the row
  std::vector<int64_t> next;  // tokens to feed at the next step
  int generated = 0;
  std::mt19937_64 rng;
  std::unique_ptr<text::TextStreamer> streamer;
};

Batcher::Batcher(Executor& exec, const text::Tokenizer& tokenizer, std::vector<int64_t> eos)
    : exec_(exec), tok_(tokenizer), eos_(std::move(eos)) {
  worker_ = std::thread([this] { Loop(); });
}

Batcher::~Batcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [r, job] : queue_) job->Cancel();
    for (auto& a : active_) a->job->Cancel();
  }
  cv_.notify_all();
  worker_.join();
}

Result<std::shared_ptr<Job>> Batcher::Submit(CompletionRequest r) {
  const ModelInfo& info = exec_.info();
  if (r.prompt.empty()) return MakeError(ErrorCode::kInvalidArgument, "the prompt is empty");
  for (int64_t id : r.prompt) {
    if (id < 0 || id >= info.vocab_size) {
      return MakeError(ErrorCode::kInvalidArgument, "prompt token id " + std::to_string(id) + " is outside [0, " +
                                                        std::to_string(info.vocab_size) + ")");
    }
  }
  if (r.max_tokens < 1) return MakeError(ErrorCode::kInvalidArgument, "max_tokens must be at least 1");
  if (static_cast<int64_t>(r.prompt.size()) + r.max_tokens > info.max_seq_len) {
    return MakeError(ErrorCode::kInvalidArgument, "the prompt's " + std::to_string(r.prompt.size()) +
                                                      " tokens + max_tokens " + std::to_string(r.max_tokens) +
                                                      " exceed the plan's context of " +
                                                      std::to_string(info.max_seq_len) + " tokens");
  }
  auto job = std::make_shared<Job>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_ || stopping_) return MakeError(ErrorCode::kBusy, "the server is shutting down");
    queue_.emplace_back(std::move(r), job);
    ++stats_.queued;
  }
  cv_.notify_all();
  return job;
}

void Batcher::Drain() {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  cv_.wait(lock, [&] { return queue_.empty() && active_.empty(); });
}

BatcherStats Batcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Batcher::Loop() {
  const ModelInfo& info = exec_.info();
  const int max_rows = static_cast<int>(info.max_batch);
  std::vector<bool> row_used(max_rows, false);
  auto finish = [&](Active& a, const std::string& reason, const std::string& error = "") {
    JobEvent e;
    e.done = true;
    e.finish_reason = reason;
    e.error = error;
    e.prompt_tokens = static_cast<int>(a.req.prompt.size());
    e.completion_tokens = a.generated;
    a.job->Push(std::move(e));
  };
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !active_.empty(); });
      // Cancelled jobs leave (a dropped client's row is freed at once).
      for (auto it = active_.begin(); it != active_.end();) {
        if ((*it)->job->cancelled()) {
          finish(**it, "cancelled");
          row_used[(*it)->row] = false;
          ++stats_.completed;
          it = active_.erase(it);
        } else {
          ++it;
        }
      }
      // Newcomers join in arrival order while rows are free.
      while (!queue_.empty() && static_cast<int>(active_.size()) < max_rows) {
        auto [req, job] = std::move(queue_.front());
        queue_.pop_front();
        --stats_.queued;
        auto a = std::make_unique<Active>();
        a->req = std::move(req);
        a->job = job;
        if (job->cancelled()) {
          finish(*a, "cancelled");
          ++stats_.completed;
          continue;
        }
        a->row = static_cast<int>(std::find(row_used.begin(), row_used.end(), false) - row_used.begin());
        row_used[a->row] = true;
        a->next = a->req.prompt;
        a->rng.seed(a->req.seed ? *a->req.seed : std::random_device{}());
        a->streamer = std::make_unique<text::TextStreamer>(tok_, a->req.stop);
        active_.push_back(std::move(a));
      }
      stats_.active = static_cast<int>(active_.size());
      if (active_.empty()) {
        cv_.notify_all();  // Drain() waits for this
        if (stopping_ && queue_.empty()) return;
        continue;
      }
    }
    // One pass for every active row. Only this thread touches active_'s entries' generation state.
    std::vector<RowStep> rows;
    std::vector<Active*> order;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& a : active_) {
        rows.push_back(RowStep{.row = a->row, .start_pos = a->pos, .tokens = a->next});
        order.push_back(a.get());
      }
    }
    auto logits = exec_.StepRows(rows);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.rows_stepped += rows.size();
    stats_.max_active = std::max(stats_.max_active, static_cast<int>(rows.size()));
    std::vector<Active*> done;
    if (!logits.ok()) {
      for (Active* a : order) {
        finish(*a, "error", logits.error().ToString());
        done.push_back(a);
      }
    } else {
      for (size_t j = 0; j < order.size(); ++j) {
        Active& a = *order[j];
        a.pos += static_cast<int64_t>(a.next.size());
        const int64_t token = sampling::SampleToken(logits->row(static_cast<int64_t>(j), 0), logits->vocab, a.req.temperature,
                                                      a.req.top_k, a.req.top_p, a.rng);
        ++a.generated;
        ++stats_.generated_tokens;
        const bool eos = !a.req.ignore_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end();
        if (eos) {
          const std::string rest = a.streamer->Finish();
          if (!rest.empty()) a.job->Push(JobEvent{.text = rest});
          finish(a, "stop");
          done.push_back(&a);
          continue;
        }
        bool stop = false;
        const std::string chunk = a.streamer->Next(token, &stop);
        if (!chunk.empty()) a.job->Push(JobEvent{.text = chunk});
        if (stop) {
          finish(a, "stop");
          done.push_back(&a);
        } else if (a.generated >= a.req.max_tokens || a.pos + 1 > info.max_seq_len) {
          const std::string rest = a.streamer->Finish();
          if (!rest.empty()) a.job->Push(JobEvent{.text = rest});
          finish(a, "length");
          done.push_back(&a);
        } else {
          a.next = {token};
        }
      }
    }
    for (Active* a : done) {
      row_used[a->row] = false;
      ++stats_.completed;
      active_.erase(std::find_if(active_.begin(), active_.end(), [&](const auto& p) { return p.get() == a; }));
    }
    stats_.active = static_cast<int>(active_.size());
    if (active_.empty() && queue_.empty()) cv_.notify_all();
  }
}

}  // namespace bigplan::server
