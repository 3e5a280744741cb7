#include "executor/worker_pool.h"

#include <atomic>

namespace bigplan::executor_internal {

struct WorkerPool::Batch {
  std::vector<std::function<Status()>> tasks;
  std::vector<Status> results;
  std::atomic<size_t> next{0};  // next task to claim
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;  // guarded by mu
};

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Work(Batch* batch) {
  for (;;) {
    const size_t i = batch->next.fetch_add(1);
    if (i >= batch->tasks.size()) return;
    Status s = batch->tasks[i]();
    std::lock_guard<std::mutex> lock(batch->mu);
    batch->results[i] = std::move(s);
    if (++batch->done == batch->tasks.size()) batch->cv.notify_all();
  }
}

void WorkerPool::Loop() {
  for (;;) {
    std::shared_ptr<Batch> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      batch = queue_.front();
      // Leave the batch queued while it has unclaimed tasks, so other threads help with it too.
      if (batch->next.load() + 1 >= batch->tasks.size()) queue_.pop_front();
    }
    Work(batch.get());
  }
}

Status WorkerPool::RunAll(std::vector<std::function<Status()>> tasks) {
  if (tasks.empty()) return Status::Ok();
  auto batch = std::make_shared<Batch>();
  batch->tasks = std::move(tasks);
  batch->results.resize(batch->tasks.size());
  if (batch->tasks.size() > 1 && !threads_.empty()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(batch);
    }
    cv_.notify_all();
  }
  Work(batch.get());
  {
    std::unique_lock<std::mutex> lock(batch->mu);
    batch->cv.wait(lock, [&] { return batch->done == batch->tasks.size(); });
  }
  {
    // Every task is claimed: drop the batch from the queue if no worker did.
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it == batch) {
        queue_.erase(it);
        break;
      }
    }
  }
  for (Status& s : batch->results) {
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

}  // namespace bigplan::executor_internal
