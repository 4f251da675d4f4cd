// Draws from a fresh libtorch CPU generator, for the few places where cnas must reproduce a
// draw the released CNAS code makes with `torch.Generator().manual_seed(seed)` (the
// curriculum's operation order): tch 0.24 has no generator objects, and the global one would
// be disturbed.
#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>

#include "cnas.h"

extern "C" {

// torch.randperm(n, generator=torch.Generator().manual_seed(seed)) into out[0..n]. Returns 0,
// or -1 when libtorch refuses.
int cnas_randperm(int64_t n, uint64_t seed, int64_t* out) {
  return cnas::guarded([&] {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto perm = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong)).contiguous();
    const int64_t* data = perm.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      out[i] = data[i];
    }
  });
}
}
