// Bucketed gradient averaging, overlapped with backward (the scheme of torch's DDP reducer, small).
//
// Parameters are packed in reverse order (backward produces the last layers' gradients first) into
// buckets of at most bucket_bytes per (dtype, device). A post-accumulate-grad hook on each parameter
// marks it ready; when every parameter of bucket k is ready and buckets 0..k-1 are launched, bucket k
// is copied into its flat buffer, divided by the world size and its all-reduce started, while
// backward goes on. Launching strictly in bucket order keeps every rank's sequence of collectives
// the same. finish() launches what is left (a parameter without a gradient contributes zeros) and
// an all-reduce of the "has a gradient" flags, waits, and copies the mean back into .grad of every
// parameter that has a gradient on some rank (one unused on every rank keeps no .grad, as in one
// process, so the optimizer skips it alike). Traffic per step: one flat copy in and out of each gradient,
// plus the ring all-reduce of bytes_per_step().
#include "backend.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>  // at::NoGradGuard: torch 2.11 does not bring it in through ATen.h
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <map>
#include <mutex>

namespace arwrap::distributed {

struct GradientReducer::State {
  ProcessGroup pg;
  std::vector<at::Tensor> params;
  GradientReducerOptions options;

  struct Bucket {
    std::vector<int64_t> index;  // parameters, in bucket order
    std::vector<int64_t> offset;
    at::Tensor flat;
    int64_t pending = 0;
    bool launched = false;
    Work work;
  };
  std::vector<Bucket> buckets;
  std::vector<int64_t> bucket_of;
  std::vector<char> ready;
  at::Tensor has_grad;  // float32 flags, all-reduced in finish()
  std::mutex mu;
  bool armed = false;
  size_t next_launch = 0;
  int64_t overlapped = 0;
  double wait_s = 0, launch_s = 0;

  void launch(size_t b) {
    const auto t0 = std::chrono::steady_clock::now();
    Bucket& k = buckets[b];
    {
      at::NoGradGuard no_grad;
      for (size_t j = 0; j < k.index.size(); ++j) {
        const auto& p = params[static_cast<size_t>(k.index[j])];
        auto dst = k.flat.narrow(0, k.offset[j], p.numel());
        const auto& g = p.grad();
        if (g.defined()) dst.copy_(g.reshape(-1));
        else dst.zero_();  // no gradient here (unused, or nothing counted): still join, with zeros
      }
      if (pg.world_size() > 1) k.flat.div_(static_cast<double>(pg.world_size()));
    }
    k.work = pg.all_reduce_sum_async(k.flat, "all-reduce of gradient bucket " + std::to_string(b) + " of " +
                                                 std::to_string(buckets.size()));
    k.launched = true;
    launch_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // under mu: start every consecutive full bucket from next_launch
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      launch(next_launch++);
      ++overlapped;
    }
  }

  void on_grad_ready(int64_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || ready[static_cast<size_t>(i)]) return;
    ready[static_cast<size_t>(i)] = 1;
    --buckets[static_cast<size_t>(bucket_of[static_cast<size_t>(i)])].pending;
    launch_ready();
  }
};

namespace {

struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
  std::weak_ptr<GradientReducer::State> state;
  int64_t index;
  ReadyHook(std::weak_ptr<GradientReducer::State> s, int64_t i) : state(std::move(s)), index(i) {}
  void operator()(const torch::autograd::Variable&) override {
    if (auto s = state.lock()) s->on_grad_ready(index);
  }
};

}  // namespace

GradientReducer::GradientReducer(ProcessGroup pg, std::vector<at::Tensor> params, GradientReducerOptions options)
    : state_(std::make_shared<State>()) {
  TORCH_CHECK_VALUE(options.bucket_bytes > 0, "GradientReducer: bucket_bytes must be positive, got ",
                    options.bucket_bytes);
  auto& s = *state_;
  s.pg = std::move(pg);
  s.options = options;
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_VALUE(params[i].defined() && params[i].requires_grad(), "GradientReducer: params[", i,
                      "] is undefined or does not require grad");
    TORCH_CHECK_VALUE(params[i].is_leaf(), "GradientReducer: params[", i, "] is not a leaf tensor");
  }
  s.params = std::move(params);
  s.bucket_of.assign(s.params.size(), -1);
  s.ready.assign(s.params.size(), 0);

  // reverse order, one open bucket per (dtype, device)
  std::map<std::pair<int, std::string>, int64_t> open;
  std::vector<int64_t> bytes;
  for (int64_t i = static_cast<int64_t>(s.params.size()) - 1; i >= 0; --i) {
    const auto& p = s.params[static_cast<size_t>(i)];
    const auto key = std::make_pair(static_cast<int>(p.scalar_type()), p.device().str());
    const int64_t nbytes = p.numel() * static_cast<int64_t>(p.element_size());
    auto it = open.find(key);
    if (it == open.end() || bytes[static_cast<size_t>(it->second)] + nbytes > options.bucket_bytes) {
      if (it == open.end() || !s.buckets[static_cast<size_t>(it->second)].index.empty()) {
        s.buckets.emplace_back();
        bytes.push_back(0);
        open[key] = static_cast<int64_t>(s.buckets.size()) - 1;
      }
    }
    const int64_t b = open[key];
    auto& k = s.buckets[static_cast<size_t>(b)];
    k.offset.push_back(k.index.empty() ? 0 : k.offset.back() + s.params[static_cast<size_t>(k.index.back())].numel());
    k.index.push_back(i);
    bytes[static_cast<size_t>(b)] += nbytes;
    s.bucket_of[static_cast<size_t>(i)] = b;
  }
  s.has_grad = at::zeros({static_cast<int64_t>(s.params.size())}, at::kFloat);
  for (auto& k : s.buckets) {
    const auto& last = s.params[static_cast<size_t>(k.index.back())];
    k.flat = at::empty({k.offset.back() + last.numel()}, last.options().requires_grad(false));
  }
  if (s.options.overlap && s.pg.is_distributed()) {
    for (size_t i = 0; i < s.params.size(); ++i)
      torch::autograd::impl::set_post_acc_grad_hooks(s.params[i],
                                                     std::make_unique<ReadyHook>(state_, static_cast<int64_t>(i)));
  }
}

GradientReducer::~GradientReducer() {
  if (state_->options.overlap && state_->pg.is_distributed())
    for (auto& p : state_->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
}

void GradientReducer::prepare_for_backward() {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  TORCH_CHECK(s.next_launch == 0, "GradientReducer: prepare_for_backward() called again before finish()");
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (auto& k : s.buckets) k.pending = static_cast<int64_t>(k.index.size());
  s.overlapped = 0;
  s.launch_s = 0;
  s.armed = s.options.overlap && s.pg.is_distributed();
}

void GradientReducer::finish() {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.armed) {  // no overlap this step: nothing was launched from backward
    s.overlapped = 0;
    s.launch_s = 0;
  }
  s.armed = false;
  if (!s.pg.is_distributed()) {
    s.wait_s = 0;
    return;
  }
  for (; s.next_launch < s.buckets.size(); ++s.next_launch) s.launch(s.next_launch);
  s.next_launch = 0;
  {
    auto* f = s.has_grad.data_ptr<float>();
    for (size_t i = 0; i < s.params.size(); ++i) f[i] = s.params[i].grad().defined() ? 1.f : 0.f;
  }
  Work flags = s.pg.all_reduce_sum_async(s.has_grad, "all-reduce of the gradient flags");
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& k : s.buckets) {
    k.launched = false;
    Work w = std::move(k.work);
    k.work = Work();
    w.wait();
  }
  flags.wait();
  s.wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  at::NoGradGuard no_grad;
  const auto* used = s.has_grad.data_ptr<float>();
  for (auto& k : s.buckets) {
    for (size_t j = 0; j < k.index.size(); ++j) {
      if (used[k.index[j]] == 0.f) continue;  // no rank has a gradient for it
      auto& p = s.params[static_cast<size_t>(k.index[j])];
      auto src = k.flat.narrow(0, k.offset[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(src);
      else p.mutable_grad() = src.clone();
    }
  }
}

int64_t GradientReducer::num_buckets() const { return static_cast<int64_t>(state_->buckets.size()); }
int64_t GradientReducer::bytes_per_step() const {
  int64_t n = 0;
  for (const auto& k : state_->buckets) n += k.flat.numel() * static_cast<int64_t>(k.flat.element_size());
  return n;
}
double GradientReducer::last_wait_seconds() const { return state_->wait_s; }
double GradientReducer::last_launch_seconds() const { return state_->launch_s; }
int64_t GradientReducer::last_buckets_overlapped() const { return state_->overlapped; }

}  // namespace arwrap::distributed
