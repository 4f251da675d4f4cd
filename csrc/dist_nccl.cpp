// NCCL backend for csrc/dist.cpp, in its own file because its headers need CUDA's and NCCL's
// (the nvidia-* wheels'); build.rs compiles it only where they exist and libtorch_cuda.so is
// there. It can only run on a GPU machine.
#include <chrono>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

// Declares cnas_make_nccl_backend, so a definition that drifts from dist.cpp's use fails here.
#include "cnas.h"

c10::intrusive_ptr<c10d::Backend> cnas_make_nccl_backend(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  // The watchdog aborts a collective (and the process, with its error) after this long, so a
  // dead peer never leaves the others hanging.
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
}
