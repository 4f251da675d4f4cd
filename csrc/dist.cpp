// Collectives for data-parallel cnas: libtorch's own c10d (TCPStore rendezvous, Gloo on the CPU,
// NCCL on GPUs), behind a small C ABI that src/dist/mod.rs wraps. tch 0.24 exposes none of c10d.
// Errors and tensors cross the ABI as csrc/cnas.h says.
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/autograd.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "cnas.h"

using cnas::guarded;

namespace {

// One process group: the store keeps the rendezvous alive (rank 0 or torchrun's agent hosts
// it), the backend runs the collectives.
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int size;
  std::chrono::milliseconds timeout;
};

void wait_all(const Group& g, std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  for (auto& w : works) {
    // Gloo enforces the group's timeout inside each operation; the wait bound is a second net.
    w->wait(g.timeout);
  }
}

// Synchronised BatchNorm (training mode): batch statistics over every rank's batch, so a step
// at world size k with batch b per rank matches one step at world size 1 with batch k·b.
// Two all-reduces in the forward pass (sums, then squared deviations: exact, unlike E[x²]-E[x]²)
// and one in the backward pass.
// An optional tensor argument of SyncBatchNorm: absent ones are passed as empty tensors, since
// an autograd Function records every input's device and an undefined tensor has none.
bool has(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::Tensor weight,
                            at::Tensor bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
                            double eps, int64_t group_address) {
    auto* g = reinterpret_cast<Group*>(group_address);
    const auto dtype = x.scalar_type();
    auto xf = x.to(at::kFloat);
    const std::vector<int64_t> dims = {0, 2, 3};
    const int64_t c = xf.size(1);
    const double local_count = static_cast<double>(xf.numel() / c);
    auto sums = at::cat({xf.sum(dims), at::full({1}, local_count, xf.options())});
    std::vector<at::Tensor> v1 = {sums};
    auto w1 = g->backend->allreduce(v1);
    w1->wait(g->timeout);
    // The count stays a tensor: reading it would be a host sync per layer on a GPU.
    auto count = sums.slice(0, c, c + 1);
    auto mean = sums.slice(0, 0, c) / count;
    auto centered = xf - mean.view({1, c, 1, 1});
    auto sq = centered.pow(2).sum(dims);
    std::vector<at::Tensor> v2 = {sq};
    auto w2 = g->backend->allreduce(v2);
    w2->wait(g->timeout);
    auto var = sq / count;
    auto invstd = (var + eps).rsqrt();
    auto xhat = centered * invstd.view({1, c, 1, 1});
    auto y = xhat;
    if (has(weight)) {
      y = y * weight.to(at::kFloat).view({1, c, 1, 1});
    }
    if (has(bias)) {
      y = y + bias.to(at::kFloat).view({1, c, 1, 1});
    }
    {
      at::NoGradGuard no_grad;
      if (has(running_mean)) {
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      }
      if (has(running_var)) {
        auto unbiased = var * (count / (count - 1.0).clamp_min(1.0));
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.scalar_type()), momentum);
      }
    }
    // `centered`, not `xhat`: without weight and bias the output is `xhat` itself, which the
    // layer after may change in place (an in-place ReLU).
    ctx->save_for_backward({centered, invstd, weight, count});
    ctx->saved_data["group"] = group_address;
    ctx->saved_data["has_bias"] = has(bias);
    ctx->saved_data["dtype"] = static_cast<int64_t>(dtype);
    return y.to(dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto invstd = saved[1];
    auto xhat = saved[0] * invstd.view({1, saved[0].size(1), 1, 1});
    auto weight = saved[2];
    auto count = saved[3];
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const std::vector<int64_t> dims = {0, 2, 3};
    const int64_t c = xhat.size(1);

    auto gy = grads[0].to(at::kFloat);
    auto gxhat = has(weight) ? gy * weight.to(at::kFloat).view({1, c, 1, 1}) : gy;
    auto both = at::cat({gxhat.sum(dims), (gxhat * xhat).sum(dims)});
    std::vector<at::Tensor> v = {both};
    auto w = g->backend->allreduce(v);
    w->wait(g->timeout);
    auto mean_g = (both.slice(0, 0, c) / count).view({1, c, 1, 1});
    auto mean_gx = (both.slice(0, c, 2 * c) / count).view({1, c, 1, 1});
    auto gx = (gxhat - mean_g - xhat * mean_gx) * invstd.view({1, c, 1, 1});

    // Weight and bias gradients are this rank's share; the gradient all-reduce averages them.
    at::Tensor gw, gb;
    if (has(weight)) {
      gw = (gy * xhat).sum(dims).to(weight.scalar_type());
    }
    if (has_bias) {
      gb = gy.sum(dims).to(has(weight) ? weight.scalar_type() : at::kFloat);
    }
    return {gx.to(dtype), gw, gb, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Gradient averaging overlapped with the backward pass (what DDP's reducer does): a hook on
// every parameter copies its gradient into its bucket's flat buffer as soon as autograd has it,
// and a bucket whose gradients are all in is all-reduced at once, asynchronously, while the
// backward pass goes on. Buckets are launched strictly in bucket order, the same on every rank.
// The first step buckets the parameters in reverse order (roughly the order the backward pass
// produces their gradients); afterwards the buckets follow the order the gradients really
// arrived in during the first step, as rank 0 saw it, so every rank buckets alike.
struct GradSync {
  Group* group;
  std::vector<at::Tensor> params;
  std::vector<unsigned> hooks;
  int64_t cap_bytes;
  std::mutex mu;
  bool active = false;
  bool rebuilt = false;                       // buckets follow the arrival order
  std::vector<int64_t> order;                 // first step: the order gradients arrived in
  std::vector<char> seen;                     // this step: which gradients arrived
  std::vector<std::vector<size_t>> buckets;   // parameter indices, in launch order
  std::vector<size_t> bucket_of, offset_of;
  std::vector<at::Tensor> flats;
  std::vector<size_t> pending;                // per bucket: gradients still to come
  size_t next = 0;                            // next bucket to launch
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  std::string error;

  // Buckets of at most cap_bytes (at least one tensor, one dtype each), in `ids` order.
  void layout(const std::vector<int64_t>& ids) {
    buckets.clear();
    flats.clear();
    bucket_of.assign(params.size(), 0);
    offset_of.assign(params.size(), 0);
    int64_t bytes = 0;
    for (int64_t id : ids) {
      const size_t i = static_cast<size_t>(id);
      const auto& p = params[i];
      const bool new_bucket = buckets.empty() || bytes >= cap_bytes ||
                              p.scalar_type() != params[buckets.back().front()].scalar_type();
      if (new_bucket) {
        buckets.emplace_back();
        bytes = 0;
      }
      bucket_of[i] = buckets.size() - 1;
      offset_of[i] = static_cast<size_t>(bytes / p.element_size());
      buckets.back().push_back(i);
      bytes += p.numel() * p.element_size();
    }
    for (const auto& b : buckets) {
      int64_t n = 0;
      for (size_t i : b) {
        n += params[i].numel();
      }
      flats.push_back(at::empty({n}, params[b.front()].options().requires_grad(false)));
    }
    pending.assign(buckets.size(), 0);
  }

  void launch_ready() {
    while (next < buckets.size() && pending[next] == 0) {
      std::vector<at::Tensor> one = {flats[next]};
      works.push_back(group->backend->allreduce(one));
      ++next;
    }
  }

  void on_grad(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!active || seen[i] || !error.empty()) {
      return;
    }
    seen[i] = 1;
    if (!rebuilt) {
      order.push_back(static_cast<int64_t>(i));
    }
    try {
      at::NoGradGuard no_grad;
      const size_t b = bucket_of[i];
      flats[b].narrow(0, offset_of[i], params[i].numel()).copy_(grad.reshape({-1}));
      --pending[b];
      launch_ready();
    } catch (const std::exception& e) {
      error = e.what();  // surfaces in finish(): throwing here would abort inside autograd
    }
  }

  void prepare() {
    std::lock_guard<std::mutex> lock(mu);
    active = true;
    error.clear();
    seen.assign(params.size(), 0);
    works.clear();
    next = 0;
    for (size_t b = 0; b < buckets.size(); ++b) {
      pending[b] = buckets[b].size();
    }
  }

  void finish() {
    std::lock_guard<std::mutex> lock(mu);
    active = false;
    if (!error.empty()) {
      throw std::runtime_error(error);
    }
    at::NoGradGuard no_grad;
    // Parameters the graph did not reach this step contribute zeros.
    for (size_t i = 0; i < params.size(); ++i) {
      if (!seen[i]) {
        flats[bucket_of[i]].narrow(0, offset_of[i], params[i].numel()).zero_();
      }
    }
    for (auto& p : pending) {
      p = 0;
    }
    launch_ready();
    for (auto& w : works) {
      w->wait(group->timeout);
    }
    const double scale = 1.0 / group->size;
    for (size_t b = 0; b < buckets.size(); ++b) {
      flats[b].mul_(scale);
      for (size_t i : buckets[b]) {
        auto g = params[i].grad();
        if (g.defined()) {
          g.copy_(flats[b].narrow(0, offset_of[i], params[i].numel()).view_as(g));
        }
      }
    }
    if (!rebuilt) {
      rebuild();
    }
  }

  // After the first step: buckets in the order its gradients arrived (those that never did
  // last), rank 0's order on every rank.
  void rebuild() {
    for (size_t i = 0; i < params.size(); ++i) {
      if (!seen[i]) {
        order.push_back(static_cast<int64_t>(i));
      }
    }
    auto shared = at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(params[0].device());
    std::vector<at::Tensor> one = {shared};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    group->backend->broadcast(one, opts)->wait(group->timeout);
    auto host = shared.cpu().contiguous();
    const int64_t* ids = host.data_ptr<int64_t>();
    layout(std::vector<int64_t>(ids, ids + host.numel()));
    rebuilt = true;
  }
};

}  // namespace

extern "C" {

// Joins the group: the TCPStore at master_addr:port is hosted by this process when host_store
// (rank 0 without torchrun's agent store) and waits for every rank to connect, otherwise this
// process connects to it as a client; keys go under `prefix` (none when empty). Then the
// backend (nccl != 0: NCCL, else Gloo) connects the ranks. Every step waits at most
// timeout_ms. Returns null on failure.
void* cnas_dist_init(const char* master_addr, int port, int rank, int size, int nccl, int64_t timeout_ms,
                     int host_store, const char* prefix) {
  Group* result = nullptr;
  guarded([&] {
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = host_store != 0;
    opts.numWorkers = static_cast<std::size_t>(size);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
    if (prefix != nullptr && *prefix != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    c10::intrusive_ptr<c10d::Backend> backend;
    if (nccl) {
#ifdef CNAS_HAVE_NCCL
      backend = cnas_make_nccl_backend(store, rank, size, timeout);
#else
      throw std::runtime_error("this cnas was built without NCCL (no CUDA/NCCL headers at build time)");
#endif
    } else {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      options->threads = 2;
      backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    }
    result = new Group{store, backend, rank, size, timeout};
  });
  return result;
}

void cnas_dist_destroy(void* group) {
  guarded([&] { delete static_cast<Group*>(group); });
}

// Sends root's tensors to every rank (in place).
int cnas_dist_broadcast(void* group, void** tensors, int n, int root) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    auto list = cnas::tensors(tensors, n);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : list) {
      std::vector<at::Tensor> one = {t};
      c10d::BroadcastOptions opts;
      opts.rootRank = root;
      works.push_back(g.backend->broadcast(one, opts));
    }
    wait_all(g, works);
  });
}

// Sums each tensor over the ranks (in place). All are started before any is waited for, so
// Gloo's worker threads pipeline them.
int cnas_dist_allreduce_sum(void* group, void** tensors, int n) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    auto list = cnas::tensors(tensors, n);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : list) {
      std::vector<at::Tensor> one = {t};
      works.push_back(g.backend->allreduce(one));
    }
    wait_all(g, works);
  });
}

int cnas_dist_barrier(void* group) {
  return guarded([&] {
    auto& g = *static_cast<Group*>(group);
    auto w = g.backend->barrier();
    w->wait(g.timeout);
  });
}

// Training-mode BatchNorm with statistics over every rank's batch; weight, bias may be null.
// Returns a new tensor (owned by the caller), or null on failure.
void* cnas_dist_sync_batch_norm(void* group, void* x, void* weight, void* bias, void* running_mean,
                                void* running_var, double momentum, double eps) {
  void* out = nullptr;
  guarded([&] {
    const auto& input = cnas::tensor(x);
    auto opt = [&](void* p) { return p ? cnas::tensor(p) : at::empty({0}, input.options()); };
    auto y = SyncBatchNorm::apply(input, opt(weight), opt(bias), opt(running_mean),
                                  opt(running_var), momentum, eps, reinterpret_cast<int64_t>(group));
    out = cnas::give(y);
  });
  return out;
}

// Overlapped gradient averaging for `params` (see GradSync); null on failure.
void* cnas_dist_grad_sync_new(void* group, void** params, int n, int64_t bucket_bytes) {
  GradSync* out = nullptr;
  guarded([&] {
    auto sync = std::make_unique<GradSync>();
    sync->group = static_cast<Group*>(group);
    sync->params = cnas::tensors(params, n);
    sync->cap_bytes = bucket_bytes;
    std::vector<int64_t> reverse;
    for (int i = n - 1; i >= 0; --i) {
      reverse.push_back(i);
    }
    sync->layout(reverse);
    GradSync* raw = sync.get();
    for (size_t i = 0; i < sync->params.size(); ++i) {
      sync->hooks.push_back(sync->params[i].register_hook([raw, i](const at::Tensor& grad) { raw->on_grad(i, grad); }));
    }
    out = sync.release();
  });
  return out;
}

// Before the backward pass.
int cnas_dist_grad_sync_prepare(void* sync) {
  return guarded([&] { static_cast<GradSync*>(sync)->prepare(); });
}

// After the backward pass: the averaged gradients are in the parameters' .grad.
int cnas_dist_grad_sync_finish(void* sync) {
  return guarded([&] { static_cast<GradSync*>(sync)->finish(); });
}

// Buckets of the current layout.
int cnas_dist_grad_sync_buckets(void* sync) {
  auto* s = static_cast<GradSync*>(sync);
  std::lock_guard<std::mutex> lock(s->mu);
  return static_cast<int>(s->buckets.size());
}

void cnas_dist_grad_sync_free(void* sync) {
  guarded([&] {
    auto* s = static_cast<GradSync*>(sync);
    for (size_t i = 0; i < s->hooks.size(); ++i) {
      s->params[i].remove_hook(s->hooks[i]);
    }
    delete s;
  });
}

// Whether this build can use NCCL.
int cnas_dist_has_nccl() {
#ifdef CNAS_HAVE_NCCL
  return 1;
#else
  return 0;
#endif
}
}
