// DecoderOptions::checkpoint_layers (layers.h, checkpointed_decoder_layer): a decoder layer
// that keeps only its input for the backward and runs itself again there.
//
// The layer is one autograd node (LayerRecompute). Its forward runs decoder_layer without
// recording and saves x and the ten weights (the weights are the parameters: saving them costs
// nothing). Its backward runs decoder_layer again, recording, on detached copies of x and the
// weights, under the forward's random state (dropout draws the same masks) and autocast
// settings, then back-propagates the incoming gradients through that graph
// (torch::autograd::grad) and hands the gradients of x and the weights on. The recomputation
// takes the kernels the recorded forward takes (RecordedKernelsGuard), so values and gradients
// are those of decoder_layer bit for bit in float32. The graph it builds lives only inside the
// backward: at most one layer's activations at a time.
//
// torch.utils.checkpoint's reentrant variant is the same idea in Python; unlike it, this node is
// not twice differentiable (create_graph through it is refused).
#include "layers.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
#include <mutex>
#include <type_traits>

namespace arwrap::layers {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The autocast settings of one device type, read now and put back later.
struct AutocastState {
  at::DeviceType device;
  bool enabled;
  at::ScalarType dtype;
  static AutocastState read(at::DeviceType device) {
    return {device, at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
  }
  void apply() const {
    at::autocast::set_autocast_enabled(device, enabled);
    at::autocast::set_autocast_dtype(device, dtype);
  }
};

// Autocast as `wanted` (the CPU's and x's device type's) for a scope, without its cast cache:
// the cache keeps the low-precision copy of a weight, and a copy made without recording has no
// gradient edge, so a later use of it under recording would lose the weight's gradient.
class AutocastScope {
 public:
  explicit AutocastScope(const std::vector<AutocastState>& wanted) : cache_(at::autocast::is_autocast_cache_enabled()) {
    for (const auto& w : wanted) {
      before_.push_back(AutocastState::read(w.device));
      w.apply();
    }
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastScope() {
    for (auto it = before_.rbegin(); it != before_.rend(); ++it) it->apply();
    at::autocast::set_autocast_cache_enabled(cache_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  std::vector<AutocastState> before_;
  bool cache_;
};

std::vector<AutocastState> autocast_now(const at::Device& device) {
  std::vector<AutocastState> s = {AutocastState::read(at::kCPU)};
  if (device.type() != at::kCPU) s.push_back(AutocastState::read(device.type()));
  return s;
}

// The state of the generator dropout draws from on `device` (the default one).
at::Tensor rng_state(const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_rng_state(const at::Device& device, const at::Tensor& state) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

bool draws_random(const DecoderOptions& d, bool training) {
  return training && (d.attn_dropout() > 0 || d.ff_dropout() > 0);
}

// The owning pointer of an autograd node: std::shared_ptr up to torch 2.11 (the GPU machine's
// torch), c10::intrusive_ptr in later releases (Node then derives from intrusive_ptr_target).
// The branch not taken is never instantiated, since the condition depends on T.
template <class T, class... Args>
auto make_node(Args&&... args) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, T>) {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  } else {
    return std::make_shared<T>(std::forward<Args>(args)...);
  }
}

struct LayerRecompute : public torch::autograd::Node {
  LayerRecompute(const DecoderOptions& d, const AttentionContext& ctx, bool training, bool with_lse)
      : d_(d), ctx_(ctx), training_(training), with_lse_(with_lse) {}

  std::string name() const override { return "arwrap::LayerRecompute (checkpoint_layers)"; }

  void release_variables() override {
    x_.reset_data();
    for (auto& w : w_) w.reset_data();
    released_ = true;
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!released_,
                "checkpoint_layers: this layer's backward already ran and freed what it kept; pass "
                "retain_graph=True to the first backward to run it twice");
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "checkpoint_layers: a layer that recomputes itself is not twice differentiable "
                "(backward with create_graph=True); build the net with checkpoint_layers=False for that");
    const size_t n_in = 1 + w_.size();
    variable_list out(n_in);
    const bool dy = grads[0].defined(), dlse = with_lse_ && grads.size() > 1 && grads[1].defined();
    if (!dy && !dlse) return out;

    // the inputs again, as leaves of a graph of their own
    variable_list inputs;
    inputs.reserve(n_in);
    auto leaf = [&](const SavedVariable& s, size_t i) {
      const at::Tensor t = s.unpack().detach();
      inputs.push_back(t.requires_grad_(should_compute_output(i)));
    };
    leaf(x_, 0);
    for (size_t i = 0; i < w_.size(); ++i) leaf(w_[i], i + 1);
    const LayerWeights w = LayerWeights::from_list(at::TensorList(inputs).slice(1));

    at::Tensor y, lse;
    {
      const at::Device device = inputs[0].device();
      at::Tensor rng_after;
      if (rng_.defined()) {
        rng_after = rng_state(device);
        set_rng_state(device, rng_);
      }
      {
        at::AutoGradMode recording(true);
        AutocastScope autocast(autocast_);
        RecordedKernelsGuard same_kernels;
        y = decoder_layer(inputs[0], w, d_, ctx_, training_, nullptr, nullptr, with_lse_ ? &lse : nullptr);
      }
      if (rng_after.defined()) set_rng_state(device, rng_after);
    }

    variable_list outputs, grad_outputs, wanted;
    std::vector<size_t> where;
    if (dy) {
      outputs.push_back(y);
      grad_outputs.push_back(grads[0]);
    }
    if (dlse) {
      outputs.push_back(lse);
      grad_outputs.push_back(grads[1]);
    }
    for (size_t i = 0; i < n_in; ++i) {
      if (inputs[i].requires_grad()) {
        wanted.push_back(inputs[i]);
        where.push_back(i);
      }
    }
    if (wanted.empty()) return out;
    const variable_list g = torch::autograd::grad(outputs, wanted, grad_outputs, /*retain_graph=*/false,
                                                  /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t j = 0; j < where.size(); ++j) out[where[j]] = g[j];
    return out;
  }

  DecoderOptions d_;
  AttentionContext ctx_;
  bool training_;
  bool with_lse_;
  SavedVariable x_;
  std::vector<SavedVariable> w_;
  at::Tensor rng_;  // the generator's state before the forward, when the layer draws dropout masks
  std::vector<AutocastState> autocast_;
  bool released_ = false;
};

}  // namespace

at::Tensor checkpointed_decoder_layer(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d,
                                      const AttentionContext& ctx, bool training, at::Tensor* lse) {
  const std::vector<at::Tensor> weights = w.list();
  auto node = make_node<LayerRecompute>(d, ctx, training, lse != nullptr);
  node->set_next_edges(torch::autograd::collect_next_edges(x, weights));
  node->autocast_ = autocast_now(x.device());
  if (draws_random(d, training)) node->rng_ = rng_state(x.device());

  at::Tensor y, l;
  {
    at::AutoGradMode not_recording(false);
    AutocastScope autocast(node->autocast_);  // as it is, without the cast cache
    RecordedKernelsGuard same_kernels;
    y = decoder_layer(x, w, d, ctx, training, nullptr, nullptr, lse ? &l : nullptr);
  }
  node->x_ = SavedVariable(x, /*is_output=*/false);
  for (const at::Tensor& t : weights) node->w_.emplace_back(t, /*is_output=*/false);
  torch::autograd::set_history(y, node);
  if (lse) {
    torch::autograd::set_history(l, node);
    *lse = l;
  }
  return y;
}

}  // namespace arwrap::layers
