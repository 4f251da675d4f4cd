// What every cnas shim shares: the C ABI's error convention and how tensors cross it. Rust
// declares the entry points in one place, src/sys.rs.
//
// - No C++ exception crosses the ABI: entry points run their body in `guarded`, which turns an
//   exception into a failure value (-1 or null) and keeps its message for cnas_last_error, per
//   thread, so Rust reads it on the calling thread right after the failed call.
// - Tensors cross as `at::Tensor*` (torch-sys's C_tensor, what tch's `as_ptr` gives), borrowed
//   for the call; a shim that keeps one copies the handle (a new reference). A tensor returned
//   to Rust is a new heap `at::Tensor` (`give`), which tch frees.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <exception>
#include <string>
#include <vector>

extern "C" {
// This thread's last error message: empty, or the failure of the last shim call that failed
// (defined in optim.cpp).
const char* cnas_last_error();
}

namespace cnas {

// One message for all shims (an inline function's static is one object across the files).
inline std::string& last_error() {
  static thread_local std::string message;
  return message;
}

// Runs `f` and returns its result, or `failed` when it throws (the message kept).
template <typename T, typename F>
T guarded_value(T failed, F&& f) {
  try {
    last_error().clear();
    return f();
  } catch (const std::exception& e) {
    last_error() = e.what();
  } catch (...) {
    last_error() = "unknown C++ exception in a cnas shim";
  }
  return failed;
}

// Runs `f`: 0, or -1 when it throws.
template <typename F>
int guarded(F&& f) {
  return guarded_value(-1, [&] {
    f();
    return 0;
  });
}

// The tensor behind a borrowed handle.
inline at::Tensor& tensor(void* ptr) { return *static_cast<at::Tensor*>(ptr); }

// The `n` tensors behind borrowed handles (new references to the same tensors).
inline std::vector<at::Tensor> tensors(void** ptrs, int n) {
  std::vector<at::Tensor> out;
  out.reserve(n > 0 ? n : 0);
  for (int i = 0; i < n; ++i) {
    out.push_back(tensor(ptrs[i]));
  }
  return out;
}

// Hands a tensor to Rust, which owns (and frees) the returned handle.
inline void* give(at::Tensor t) { return new at::Tensor(std::move(t)); }

}  // namespace cnas

#ifdef CNAS_HAVE_NCCL
#include <c10/util/intrusive_ptr.h>

// csrc/dist_nccl.cpp (compiled only where the CUDA and NCCL headers exist), for csrc/dist.cpp.
namespace c10d {
class Backend;
class Store;
}  // namespace c10d
c10::intrusive_ptr<c10d::Backend> cnas_make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                          int size, std::chrono::milliseconds timeout);
#endif
