// Matrix-vector products on the host CPU over bf16 and row-quantized weights, split across a pool of persistent
// threads. Plain C++ (no LibTorch): the offloaded layers' host-side rows during GPU decode.
//
// A matrix W has `rows` rows (outputs) and `cols` columns (inputs); row r starts at base + r * row_stride bytes.
// Rows are in formats/quant.h's row-quantized layout (fp8 e4m3 or int8 values with float32 scales, int4 values
// with bf16 scale and zero, one record per group of columns), or plain bf16 values for quant::Format::kNone (the
// group is then ignored); row_stride may add padding after quant::RowBytes. The kernels also need an even group
// for int4 (a group starts on a byte).
//
// Sums accumulate in float32 (products w * x rounded to float32, several partial sums per row), so a result
// differs from the exact sum by a few float32 roundings of sum |w * x|; each weight is decoded exactly and scaled
// with one rounding (int4: one FMA). Kernels are chosen at run time: AVX-512 (F, BW, DQ, VL) or AVX2 + FMA (both
// with F16C), or portable code; no instruction-set flags are needed at compile time. Decoding never passes through
// float32 subnormals, so the results do not depend on the denormals-are-zero flag (only products or sums below
// 2^-126 may be flushed when flush-to-zero is set). kFp8E4M3 scales must stay below 2^120 in magnitude (the vector
// kernels multiply them by 256; larger ones give infinities there).
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <thread>
#include <vector>

#include "formats/quant.h"
#include "support/result.h"

namespace bigplan::cpu_matvec {

// The row layout: quant::Format, where kNone stands for plain bf16 rows.
using Format = quant::Format;
// "bf16" for plain rows, else the quantized format's name (for messages and benchmark labels).
const char* RowsName(Format format);

// The kernels' instruction sets, in increasing order. kAuto: the best one this CPU supports.
enum class Isa { kAuto, kScalar, kAvx2, kAvx512 };
const char* IsaName(Isa isa);
// The best instruction set this CPU supports (kAvx512, kAvx2 or kScalar; never kAuto).
Isa DetectIsa();

struct Matrix {
  Format format = Format::kNone;  // kNone: bf16 rows
  const uint8_t* base = nullptr;  // row 0; need not be aligned
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t group = 0;       // columns per scale record (quantized formats); ignored for bf16 rows
  int64_t row_stride = 0;  // bytes from one row to the next, >= quant::RowBytes(format, cols, group)
  // Quantized formats: bytes from a row's start to its first scale record; 0: right after its `cols` columns' data.
  // More: the first `cols` columns of longer rows (their records where the longer rows keep them), e.g. a split
  // expert's first columns of its down matrix. The row stride must hold the records past it.
  int64_t record_offset = 0;
};

// Checks a matrix's shape and layout (not its bytes): quant::RowBytes accepts the format, columns and group, int4
// groups are even, the stride holds a row (and its records past record_offset). kInvalidArgument naming the problem.
Status Validate(const Matrix& w);

// One product over rows [row_begin, row_end) of w, for each b < batch:
//   y[b * y_stride + (r - row_begin)] = sum_j W[r, j] * x[b * w.cols + j]
// x is float32 [batch, w.cols]; y must not overlap x or another job's y. Jobs may share x and w.
struct Job {
  Matrix w;
  int64_t row_begin = 0;
  int64_t row_end = 0;
  const float* x = nullptr;
  float* y = nullptr;
  int64_t y_stride = 0;  // >= row_end - row_begin
};

inline constexpr int kMaxBatch = 16;

// Persistent worker threads that run a list of jobs together, split into pieces of rows balanced by bytes read
// (each thread takes the next piece when it finishes one, so a slow thread delays the call by one piece at most).
// The calling thread computes too, and Run returns as soon as every piece is done: a worker that the OS has not
// scheduled in time (busy cores) costs nothing. Idle threads spin for about 50 microseconds after a call, then
// sleep (futex); Run does not allocate once it has seen the largest job list it will get.
class MatVecPool {
 public:
  // At most this many jobs per call (pieces are counted in 16 bits).
  static constexpr int kMaxJobs = 32768;

  // `threads` computing threads in all, the caller included (0: std::thread::hardware_concurrency()). `isa`
  // forces an instruction set (tests); one the CPU lacks falls back to the best one it has (see isa()).
  explicit MatVecPool(int threads = 0, Isa isa = Isa::kAuto);
  ~MatVecPool();
  MatVecPool(const MatVecPool&) = delete;
  MatVecPool& operator=(const MatVecPool&) = delete;

  int threads() const { return threads_; }
  // The instruction set the kernels use (never kAuto). A matrix whose group is not a multiple of the vector
  // width (16 columns for kAvx512, 8 for kAvx2) runs the portable kernel.
  Isa isa() const { return isa_; }

  // Runs every job for `batch` inputs (1..kMaxBatch) and returns when all are done. kInvalidArgument (naming the
  // job) for a bad matrix, row range, null pointer, y_stride or batch, or more than kMaxJobs jobs: then nothing is
  // written. kBusy when another thread is inside Run on this pool.
  Status Run(std::span<const Job> jobs, int batch);

 private:
  struct Piece {  // the jobs' rows cut into pieces; a thread takes pieces in order
    int32_t job;
    int64_t row_begin;
    int64_t row_end;
  };
  void WorkerLoop();
  // Claims and runs pieces of the published call until none is left.
  void Work();

  int threads_ = 1;
  Isa isa_ = Isa::kScalar;
  std::vector<std::thread> workers_;

  // The current call (written by Run before it publishes claims_, read only by a thread holding a claimed piece,
  // which keeps the call alive: Run returns only when every piece is done).
  std::span<const Job> jobs_;
  int batch_ = 1;
  std::vector<Piece> pieces_;

  // (call number << 32) | (piece count << 16) | next piece: a thread claims piece i by raising "next" from i to
  // i + 1 with a compare-and-swap, so a thread that wakes after its call ended can never claim a later call's
  // piece by mistake.
  std::atomic<uint64_t> claims_{0};
  std::atomic<int> done_pieces_{0};      // pieces of the current call finished; Run waits on it
  std::atomic<uint32_t> generation_{0};  // bumped after each publish and at shutdown; idle workers wait on it
  std::atomic<bool> stop_{false};
  std::atomic<bool> in_run_{false};
};

}  // namespace bigplan::cpu_matvec
