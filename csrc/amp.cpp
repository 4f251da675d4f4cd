// Mixed precision for cnas: libtorch's autocast with a chosen dtype on a chosen device.
// tch 0.24 can only switch CUDA autocast on with its default dtype (float16); bf16 needs no
// gradient scaling, and CPU autocast lets the same code path run in tests without a GPU.
#include <ATen/autocast_mode.h>

#include "cnas.h"

namespace {
c10::DeviceType device_type(int cuda) { return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }
}  // namespace

extern "C" {

// Turns bf16 autocast on for the device; returns whether it was on before, or -1 on error.
int cnas_autocast_enter_bf16(int cuda) {
  return cnas::guarded_value(-1, [&] {
    const auto dev = device_type(cuda);
    const int previous = at::autocast::is_autocast_enabled(dev) ? 1 : 0;
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::set_autocast_dtype(dev, at::kBFloat16);
    at::autocast::increment_nesting();
    return previous;
  });
}

// Leaves the autocast region: restores the previous state; the cache of low-precision weight
// copies is dropped when the outermost region ends (weights change between steps).
int cnas_autocast_exit(int cuda, int previous) {
  return cnas::guarded([&] {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), previous != 0);
  });
}

// Whether autocast is on for the device (for tests).
int cnas_autocast_enabled(int cuda) {
  return cnas::guarded_value(-1, [&] { return at::autocast::is_autocast_enabled(device_type(cuda)) ? 1 : 0; });
}
}
