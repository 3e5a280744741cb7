// A fixed pool of worker threads for short parallel pieces of work (internal to executor/). Plain C++.
//
// The threads are started once, by the constructor, and joined by the destructor. RunAll hands a batch of tasks
// to the pool and runs tasks of the same batch on the calling thread too, so a batch always finishes even when
// every pool thread is busy with other batches (or the pool has no threads): there is no deadlock however many
// callers share the pool, and a task may itself call RunAll.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "support/result.h"

namespace bigplan::executor_internal {

class WorkerPool {
 public:
  // Starts `threads` worker threads (0 is allowed: RunAll then runs everything on its caller).
  explicit WorkerPool(int threads);
  // Waits for the tasks being run to finish and joins the threads. Batches still queued are run by their
  // callers (RunAll never returns before its batch is done).
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int threads() const { return static_cast<int>(threads_.size()); }

  // Runs every task once, in parallel on the pool and the calling thread, and returns when all have finished:
  // OK, or the error of the lowest-indexed task that failed (every task runs even when one fails). Thread-safe.
  Status RunAll(std::vector<std::function<Status()>> tasks);

 private:
  struct Batch;
  void Loop();
  static void Work(Batch* batch);

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Batch>> queue_;  // batches with tasks not yet claimed
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace bigplan::executor_internal
