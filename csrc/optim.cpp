// Multi-tensor optimizer steps for cnas: libtorch's fused SGD, foreach gradient clipping and
// dropping gradients, none of which tch 0.24 exposes (it skips operators on tensor lists).
// On a GPU each call is a handful of kernel launches for all parameters instead of several
// per parameter, which is what a launch-bound supernet step needs; on the CPU the same calls
// run libtorch's own loops. Errors and tensors cross the ABI as csrc/cnas.h says.
#include <ATen/core/grad_mode.h>

#include <vector>

#include "cnas.h"

using cnas::guarded;
using cnas::tensors;

extern "C" {

// The one definition of csrc/cnas.h's entry point (here: every build compiles this file).
const char* cnas_last_error() { return cnas::last_error().c_str(); }

// Drops the gradients of the parameters (PyTorch's zero_grad(set_to_none=True)): no kernel
// runs, and the next backward pass allocates fresh ones only for what it reaches.
int cnas_grads_set_none(void** params, int n) {
  return guarded([&] {
    for (int i = 0; i < n; ++i) {
      cnas::tensor(params[i]).mutable_grad().reset();
    }
  });
}

// PyTorch 1.5's zero_grad(): gradients that exist are zeroed in place and kept, so every
// parameter that has had a gradient takes part in later SGD steps (weight decay and momentum
// move it even when the step's loss does not reach it). `materialize[i]` != 0 gives parameter i
// a zero gradient when it has none (a resumed run re-creating the kept gradients).
int cnas_grads_zero(void** params, int n, const int* materialize) {
  return guarded([&] {
    std::vector<at::Tensor> grads;
    grads.reserve(n > 0 ? n : 0);
    for (int i = 0; i < n; ++i) {
      auto& p = cnas::tensor(params[i]);
      if (p.grad().defined()) {
        grads.push_back(p.grad());
      } else if (materialize != nullptr && materialize[i] != 0) {
        p.mutable_grad() = at::zeros_like(p);
      }
    }
    at::NoGradGuard no_grad;
    if (!grads.empty()) {
      at::_foreach_zero_(grads);
    }
  });
}

// One SGD update of every parameter (all with a gradient, one device and dtype) with
// momentum buffers `bufs` (n of them, or none when momentum is 0): torch.optim.SGD's rule with
// dampening 0. `first_step` means the buffers hold nothing yet and are set to the gradient.
int cnas_fused_sgd(void** params, void** bufs, int n, double weight_decay, double momentum, double lr,
                   int nesterov, int first_step) {
  return guarded([&] {
    if (n <= 0) {
      return;
    }
    auto ps = tensors(params, n);
    std::vector<at::Tensor> grads;
    grads.reserve(n);
    for (auto& p : ps) {
      grads.push_back(p.grad());
    }
    std::vector<at::Tensor> momentum_buffers;
    if (momentum != 0.0) {
      momentum_buffers = tensors(bufs, n);
    }
    at::NoGradGuard no_grad;
    at::_fused_sgd_(ps, grads, momentum_buffers, weight_decay, momentum, lr, /*dampening=*/0.0,
                    nesterov != 0, /*maximize=*/false, first_step != 0);
  });
}

// torch.nn.utils.clip_grad_norm_ (foreach form): scales the gradients of `params` that have
// one so that their joint L2 norm is at most max_norm, without reading anything back. Returns
// the norm before clipping as a new 0-dim tensor (null on error).
void* cnas_clip_grad_norm(void** params, int n, double max_norm) {
  void* out = nullptr;
  guarded([&] {
    std::vector<at::Tensor> grads;
    for (auto& p : tensors(params, n)) {
      if (p.grad().defined()) {
        grads.push_back(p.grad());
      }
    }
    at::NoGradGuard no_grad;
    if (grads.empty()) {
      out = cnas::give(at::zeros({}, at::kFloat));
      return;
    }
    auto norms = at::_foreach_norm(grads, 2);
    auto total = at::linalg_vector_norm(at::stack(norms), 2);
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    at::_foreach_mul_(grads, coef);
    out = cnas::give(std::move(total));
  });
  return out;
}
}
