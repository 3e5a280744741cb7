// Errors as values. Library code returns Result<T> (or Status for no value); tools turn an error into a
// message and an exit code in one place (see support/tool_main.h). No library function throws.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace bigplan {

// What went wrong, in categories a caller may branch on. The message always names the file, tensor,
// device or field concerned.
enum class ErrorCode {
  kInvalidArgument,  // bad flag, bad budget string, malformed user input
  kNotFound,         // a file, tensor or key that should exist does not
  kCorrupt,          // a file exists but its bytes are not what its format requires
  kMismatch,         // two inputs disagree (checkpoint vs description, plan vs checkpoint)
  kInfeasible,       // the request cannot be satisfied (budget too small)
  kIncompatible,     // a file of ours, but of a version this build cannot read
  kUnsupported,      // a valid request this build does not implement (unknown architecture, dtype)
  kIo,               // the operating system refused (open, read, mmap, write)
  kDevice,           // CUDA or LibTorch reported a failure
  kBusy,             // the object is in use (e.g. concurrent calls on one executor)
  kInternal,         // a broken invariant inside bigplan
};

const char* ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;

  // "corrupt: model-00001.safetensors: header length 999 exceeds file size 12"
  std::string ToString() const;
};

inline Error MakeError(ErrorCode code, std::string message) { return Error{code, std::move(message)}; }

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT(runtime/explicit)
  static Status Ok() { return Status(); }

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return *error_; }
  Error&& take_error() { return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(runtime/explicit)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(runtime/explicit)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(v_); }
  Error&& take_error() { return std::get<1>(std::move(v_)); }
  // The outcome without the value: Ok, or a copy of the error.
  Status status() const { return ok() ? Status::Ok() : Status(error()); }

 private:
  std::variant<T, Error> v_;
};



// Prefix an error's message with context, keeping its code: "loading plan p.plan: <original>".
inline Error WithContext(Error e, const std::string& context) {
  e.message = context + ": " + e.message;
  return e;
}

}  // namespace bigplan

// Propagate errors: BIGPLAN_RETURN_IF_ERROR(status_expr); BIGPLAN_ASSIGN_OR_RETURN(auto x, result_expr);
#define BIGPLAN_CONCAT_INNER(a, b) a##b
#define BIGPLAN_CONCAT(a, b) BIGPLAN_CONCAT_INNER(a, b)

#define BIGPLAN_RETURN_IF_ERROR(expr)                     \
  do {                                                    \
    auto _bigplan_status = (expr);                        \
    if (!_bigplan_status.ok()) return _bigplan_status.take_error(); \
  } while (0)

#define BIGPLAN_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.take_error();              \
  decl = std::move(tmp).value()

#define BIGPLAN_ASSIGN_OR_RETURN(decl, expr) \
  BIGPLAN_ASSIGN_OR_RETURN_IMPL(BIGPLAN_CONCAT(_bigplan_result_, __LINE__), decl, expr)
