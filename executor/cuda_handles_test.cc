// CudaStream / CudaEvent without a GPU: empty owners, moves, and (on a machine without a CUDA device) the kDevice
// error of Create. No CUDA call is made for an empty owner, so this runs anywhere.
#include "executor/cuda_handles.h"

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace bigplan::executor_internal {
namespace {

TEST(CudaHandles, EmptyOwnersHoldNothing) {
  CudaStream s;
  CudaEvent e;
  EXPECT_EQ(s.get(), nullptr);
  EXPECT_EQ(e.get(), nullptr);
  EXPECT_FALSE(s);
  EXPECT_FALSE(e);
  EXPECT_EQ(s.device(), -1);
  EXPECT_EQ(e.device(), -1);
  s.reset();  // no-op, no CUDA call
  e.reset();
  EXPECT_EQ(s.get(), nullptr);
}

TEST(CudaHandles, MovesOfEmptyOwnersStayEmpty) {
  CudaStream a;
  CudaStream b(std::move(a));
  EXPECT_FALSE(b);
  CudaStream c;
  c = std::move(b);
  EXPECT_FALSE(c);
  CudaStream& self = c;
  c = std::move(self);  // self-move keeps it as it was
  EXPECT_FALSE(c);
  std::vector<CudaEvent> events(8);  // containers of empty owners grow and go without CUDA calls
  events.resize(64);
  for (const CudaEvent& e : events) EXPECT_EQ(e.get(), nullptr);
  CudaEvent moved = std::move(events.front());
  EXPECT_FALSE(moved);
}

TEST(CudaHandles, ErrorsNameWhatFailed) {
  EXPECT_TRUE(CudaCheck(cudaSuccess, "nothing").ok());
  Status s = CudaCheck(cudaErrorInvalidValue, "copying w to cuda:0");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kDevice);
  EXPECT_NE(s.error().message.find("copying w to cuda:0: "), std::string::npos) << s.error().message;
}

TEST(CudaHandles, CreateWithoutADeviceIsAnError) {
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
    GTEST_SKIP() << "a CUDA device is present: cuda_handles_gpu_test covers Create";
  }
  cudaGetLastError();
  Result<CudaStream> s = CudaStream::Create(0, "the copy stream of cuda:0");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kDevice);
  EXPECT_NE(s.error().message.find("the copy stream of cuda:0: cudaStreamCreate on cuda:0"), std::string::npos)
      << s.error().message;
  Result<CudaEvent> e = CudaEvent::Create(0, /*timing=*/true, "step 3 start");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code, ErrorCode::kDevice);
  EXPECT_NE(e.error().message.find("step 3 start: cudaEventCreate on cuda:0"), std::string::npos)
      << e.error().message;
}

}  // namespace
}  // namespace bigplan::executor_internal
