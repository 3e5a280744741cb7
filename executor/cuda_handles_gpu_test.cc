// CudaStream / CudaEvent on CUDA device 0: create, record, wait, synchronize, time, move and destroy real handles.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "executor/cuda_handles.h"

namespace bigplan::executor_internal {
namespace {

void RequireDevice() {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "this test needs a CUDA device";
  ASSERT_GT(count, 0) << "this test needs a CUDA device";
}

TEST(CudaHandlesGpu, CreateRecordSynchronizeDestroy) {
  RequireDevice();
  Result<CudaStream> stream = CudaStream::Create(0, "test stream");
  ASSERT_TRUE(stream.ok()) << stream.error().ToString();
  ASSERT_NE(stream->get(), nullptr);
  EXPECT_EQ(stream->device(), 0);
  Result<CudaEvent> start = CudaEvent::Create(0, /*timing=*/true, "start");
  Result<CudaEvent> end = CudaEvent::Create(0, /*timing=*/true, "end");
  Result<CudaEvent> ready = CudaEvent::Create(0, /*timing=*/false, "ready");
  ASSERT_TRUE(start.ok() && end.ok() && ready.ok());

  // Some work between two timing events: a 64 MiB device memset.
  void* buffer = nullptr;
  ASSERT_EQ(cudaMalloc(&buffer, 64 << 20), cudaSuccess);
  ASSERT_TRUE(CudaCheck(cudaEventRecord(start->get(), stream->get()), "record start").ok());
  ASSERT_EQ(cudaMemsetAsync(buffer, 1, 64 << 20, stream->get()), cudaSuccess);
  ASSERT_TRUE(CudaCheck(cudaEventRecord(end->get(), stream->get()), "record end").ok());
  ASSERT_TRUE(CudaCheck(cudaEventRecord(ready->get(), stream->get()), "record ready").ok());

  // A second stream waits on the event; both finish.
  Result<CudaStream> other = CudaStream::Create(0, "other stream");
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(CudaCheck(cudaStreamWaitEvent(other->get(), ready->get(), 0), "wait").ok());
  ASSERT_TRUE(CudaCheck(cudaStreamSynchronize(other->get()), "sync other").ok());
  ASSERT_TRUE(CudaCheck(cudaEventSynchronize(end->get()), "sync end").ok());
  EXPECT_EQ(cudaEventQuery(ready->get()), cudaSuccess);
  float ms = -1;
  ASSERT_EQ(cudaEventElapsedTime(&ms, start->get(), end->get()), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  // A timing-disabled event cannot be timed.
  EXPECT_NE(cudaEventElapsedTime(&ms, start->get(), ready->get()), cudaSuccess);
  cudaGetLastError();

  // Moves carry the handle; the moved-from owner is empty and its destruction destroys nothing.
  cudaStream_t raw = stream->get();
  CudaStream moved = std::move(*stream);
  EXPECT_EQ(moved.get(), raw);
  EXPECT_EQ(stream->get(), nullptr);
  ASSERT_TRUE(CudaCheck(cudaStreamSynchronize(moved.get()), "sync moved").ok());
  // Assigning over an owner destroys its old handle; the new one still works.
  moved = std::move(*other);
  ASSERT_TRUE(CudaCheck(cudaStreamSynchronize(moved.get()), "sync reassigned").ok());
  cudaFree(buffer);
}

TEST(CudaHandlesGpu, ManyEventsInAVectorAreDestroyed) {
  RequireDevice();
  std::vector<CudaEvent> events;
  for (int i = 0; i < 1000; ++i) {
    Result<CudaEvent> e = CudaEvent::Create(0, i % 2 == 0, "event " + std::to_string(i));
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    events.push_back(std::move(*e));
  }
  events.clear();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaHandlesGpu, BadDeviceIsAnError) {
  RequireDevice();
  Result<CudaStream> s = CudaStream::Create(1000, "stream of a device that does not exist");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kDevice);
  EXPECT_NE(s.error().message.find("cuda:1000"), std::string::npos) << s.error().message;
}

}  // namespace
}  // namespace bigplan::executor_internal
