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

namespace result_internal {
// Where a call came from, as std::source_location would say (built from the compiler builtins that GCC and Clang
// both have: Clang 14, which builds the fuzzers, cannot compile libstdc++'s <source_location>). As a default
// argument, Here() describes the caller of the function that declares it.
struct CallSite {
  const char* file = "";
  unsigned line = 0;
  const char* function = "";
  static constexpr CallSite Here(const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
                                 const char* function = __builtin_FUNCTION()) {
    return CallSite{file, line, function};
  }
};

// A broken caller contract: prints "bigplan: <what>[: <error>] (at file:line in function)" to stderr and aborts.
// Reached only by reading the value of an error, or the error of a success: never an exception.
[[noreturn]] void Die(const char* what, const Error* error, const CallSite& where);
}  // namespace result_internal

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT(runtime/explicit)
  static Status Ok() { return Status(); }

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  // The error. On an OK status: a checked failure (message to stderr naming the caller, then abort).
  const Error& error(result_internal::CallSite where = result_internal::CallSite::Here()) const {
    if (!error_) result_internal::Die("Status::error() called on an OK status", nullptr, where);
    return *error_;
  }
  Error&& take_error(result_internal::CallSite where = result_internal::CallSite::Here()) {
    if (!error_) result_internal::Die("Status::take_error() called on an OK status", nullptr, where);
    return std::move(*error_);
  }

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

  // The value. On an error: a checked failure, never an exception: "bigplan: Result::value() called on an error:
  // <error.ToString()> (at <caller file:line> in <function>)" on stderr, then std::abort(). (operator* and
  // operator-> cannot take the caller's location; they name themselves.)
  T& value(result_internal::CallSite where = result_internal::CallSite::Here()) & { return *Checked(where); }
  const T& value(result_internal::CallSite where = result_internal::CallSite::Here()) const& { return *Checked(where); }
  T&& value(result_internal::CallSite where = result_internal::CallSite::Here()) && { return std::move(*Checked(where)); }
  T& operator*() & { return *Checked(result_internal::CallSite::Here()); }
  const T& operator*() const& { return *Checked(result_internal::CallSite::Here()); }
  T* operator->() { return Checked(result_internal::CallSite::Here()); }
  const T* operator->() const { return Checked(result_internal::CallSite::Here()); }

  // The error. On a value: a checked failure (message naming the caller, then abort).
  const Error& error(result_internal::CallSite where = result_internal::CallSite::Here()) const {
    const Error* e = std::get_if<1>(&v_);
    if (e == nullptr) result_internal::Die("Result::error() called on a value", nullptr, where);
    return *e;
  }
  Error&& take_error(result_internal::CallSite where = result_internal::CallSite::Here()) {
    Error* e = std::get_if<1>(&v_);
    if (e == nullptr) result_internal::Die("Result::take_error() called on a value", nullptr, where);
    return std::move(*e);
  }
  // The outcome without the value: Ok, or a copy of the error.
  Status status() const { return ok() ? Status::Ok() : Status(error()); }

 private:
  T* Checked(const result_internal::CallSite& where) {
    if (T* v = std::get_if<0>(&v_)) return v;
    result_internal::Die("Result::value() called on an error", std::get_if<1>(&v_), where);
  }
  const T* Checked(const result_internal::CallSite& where) const {
    if (const T* v = std::get_if<0>(&v_)) return v;
    result_internal::Die("Result::value() called on an error", std::get_if<1>(&v_), where);
  }

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
