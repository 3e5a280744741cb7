#include "executor/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace bigplan::executor_internal {
namespace {

TEST(WorkerPool, RunsEveryTaskOnce) {
  WorkerPool pool(3);
  EXPECT_EQ(pool.threads(), 3);
  std::vector<std::atomic<int>> runs(100);
  std::vector<std::function<Status()>> tasks;
  for (int i = 0; i < 100; ++i) {
    tasks.push_back([&runs, i] {
      runs[i].fetch_add(1);
      return Status::Ok();
    });
  }
  ASSERT_TRUE(pool.RunAll(std::move(tasks)).ok());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(runs[i].load(), 1) << i;
  EXPECT_TRUE(pool.RunAll({}).ok());
}

TEST(WorkerPool, TasksRunInParallel) {
  // Four tasks that each wait until all four have started: only finishes if they run at the same time.
  WorkerPool pool(3);
  std::atomic<int> started{0};
  std::vector<std::function<Status()>> tasks;
  for (int i = 0; i < 4; ++i) {
    tasks.push_back([&started] {
      started.fetch_add(1);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (started.load() < 4) {
        if (std::chrono::steady_clock::now() > deadline) return Status(MakeError(ErrorCode::kInternal, "not parallel"));
        std::this_thread::yield();
      }
      return Status::Ok();
    });
  }
  Status s = pool.RunAll(std::move(tasks));
  EXPECT_TRUE(s.ok()) << s.error().ToString();
}

TEST(WorkerPool, ErrorsPropagateAfterEveryTaskRan) {
  WorkerPool pool(2);
  std::atomic<int> ran{0};
  std::vector<std::function<Status()>> tasks;
  for (int i = 0; i < 10; ++i) {
    tasks.push_back([&ran, i]() -> Status {
      ran.fetch_add(1);
      if (i == 3 || i == 7) return MakeError(ErrorCode::kIo, "read " + std::to_string(i) + " failed");
      return Status::Ok();
    });
  }
  Status s = pool.RunAll(std::move(tasks));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kIo);
  EXPECT_EQ(s.error().message, "read 3 failed");  // the lowest-indexed failure
  EXPECT_EQ(ran.load(), 10);
}

TEST(WorkerPool, NoThreadsRunsOnTheCaller) {
  WorkerPool pool(0);
  const auto caller = std::this_thread::get_id();
  bool all_on_caller = true;
  std::vector<std::function<Status()>> tasks;
  for (int i = 0; i < 5; ++i) {
    tasks.push_back([&] {
      all_on_caller &= std::this_thread::get_id() == caller;
      return Status::Ok();
    });
  }
  ASSERT_TRUE(pool.RunAll(std::move(tasks)).ok());
  EXPECT_TRUE(all_on_caller);
}

TEST(WorkerPool, ManySmallTasksFromManyCallersDoNotDeadlock) {
  WorkerPool pool(2);
  std::atomic<int64_t> sum{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 6; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 200; ++round) {
        std::vector<std::function<Status()>> tasks;
        for (int i = 0; i < 8; ++i) {
          tasks.push_back([&sum, i] {
            sum.fetch_add(i);
            return Status::Ok();
          });
        }
        EXPECT_TRUE(pool.RunAll(std::move(tasks)).ok());
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(sum.load(), 6 * 200 * 28);
}

TEST(WorkerPool, NestedRunAllFinishes) {
  WorkerPool pool(1);
  std::atomic<int> leaves{0};
  std::vector<std::function<Status()>> outer;
  for (int i = 0; i < 4; ++i) {
    outer.push_back([&] {
      std::vector<std::function<Status()>> inner;
      for (int j = 0; j < 4; ++j) {
        inner.push_back([&] {
          leaves.fetch_add(1);
          return Status::Ok();
        });
      }
      return pool.RunAll(std::move(inner));
    });
  }
  ASSERT_TRUE(pool.RunAll(std::move(outer)).ok());
  EXPECT_EQ(leaves.load(), 16);
}

TEST(WorkerPool, ShutdownJoinsIdleAndBusyThreads) {
  std::atomic<bool> finished{false};
  {
    WorkerPool pool(4);
    std::thread caller([&] {
      std::vector<std::function<Status()>> tasks;
      for (int i = 0; i < 8; ++i) {
        tasks.push_back([] {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          return Status::Ok();
        });
      }
      EXPECT_TRUE(pool.RunAll(std::move(tasks)).ok());
      finished = true;
    });
    caller.join();
  }  // the destructor joins the four threads (idle now)
  EXPECT_TRUE(finished.load());
  for (int i = 0; i < 20; ++i) WorkerPool idle(3);  // start and stop quickly, nothing queued
}

}  // namespace
}  // namespace bigplan::executor_internal
