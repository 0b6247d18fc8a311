// DecoderOptions::checkpoint_layers (layers.h, checkpointed_decoder_layer): a decoder layer
// that keeps only its input for the backward and runs itself again there.
//
// The layer is one autograd node (LayerRecompute). Its forward runs decoder_layer without
// recording and saves x and the ten weights (the weights are the parameters: saving them costs
// nothing). Its backward runs decoder_layer again, recording, on detached copies of x and the
// weights, under the forward's random state (dropout draws the same masks) and autocast
// settings, then back-propagates the incoming gradients through that graph and hands the
// gradients of x and the weights on. Where the feed-forward is the lean block (no dropout
// drawn), only the attention block is recorded again: the feed-forward's backward runs straight
// from x and the attention's output, making its input rows and pre-activation again a chunk of
// rows at a time (lean_feed_forward_backward), so the recomputation runs no feed-forward forward
// (two products fewer) and holds no feed-forward activation whole. The recomputation takes the
// kernels the recorded forward takes (RecordedKernelsGuard), so values and gradients are those of
// decoder_layer bit for bit in float32. The graph it builds lives only inside the backward: at
// most one layer's attention activations at a time.
//
// torch.utils.checkpoint's reentrant variant is the same idea in Python; unlike it, this node is
// not twice differentiable (create_graph through it is refused).
#include "layers.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/engine.h>
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

// Whether t's memory is reachable only through this handle (no other tensor, view or saved
// variable shares its storage): then it may be written over.
bool sole_owner(const at::Tensor& t) { return t.use_count() == 1 && t.storage().use_count() == 1; }

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

    // Where the feed-forward is the lean block and the layer output's gradient came, only the
    // attention block is recorded (its output p; the layer is x + p + block(x + p)): the
    // feed-forward's backward runs straight from x and p (lean_feed_forward_backward, which makes
    // the block's input rows and its pre-activation again a chunk at a time, by the recorded
    // forward's kernels), so the recomputation runs no feed-forward forward and holds neither the
    // residual stream x + p nor the pre-activation whole: the same bits, two products fewer.
    const bool ff_direct = dy && lean_feed_forward_applies(d_, training_);
    at::Tensor y, lse;  // y: the recorded output (the layer's, or with ff_direct the attention block's)
    at::Tensor d_residual;  // with ff_direct: the gradient of x + p
    variable_list ff;  // with ff_direct: d (x + p, ff_norm, ff_in_w, ff_in_b, ff_out_w, ff_out_b)
    {
      const at::Device device = inputs[0].device();
      at::Tensor rng_after;
      if (rng_.defined()) {
        rng_after = rng_state(device);
        set_rng_state(device, rng_);
      }
      {
        AutocastScope autocast(autocast_);
        RecordedKernelsGuard same_kernels;
        {
          at::AutoGradMode recording(true);
          at::Tensor* l = with_lse_ ? &lse : nullptr;
          y = ff_direct ? attention(inputs[0], w, d_, ctx_, nullptr, nullptr, l)
                        : decoder_layer(inputs[0], w, d_, ctx_, training_, nullptr, nullptr, l);
        }
        if (ff_direct) {
          // d (x + p) = the block's d input + the output's gradient, written over that gradient
          // where nothing but this call holds it (the engine hands it over), else into new memory
          const at::Tensor& g0 = grads[0];
          const bool ours = sole_owner(g0) && g0.is_contiguous() && g0.scalar_type() == inputs[0].scalar_type() &&
                            g0.sizes() == inputs[0].sizes();
          const at::Tensor into = ours ? g0 : at::empty(inputs[0].sizes(), inputs[0].options());
          ff = lean_feed_forward_backward(g0, inputs[0].detach(), y.detach(), w, d_, into);
          grads[0].reset();
          d_residual = ff[0];
        }
      }
      if (rng_after.defined()) set_rng_state(device, rng_after);
    }
    constexpr size_t kFirstFF = 6;  // inputs: x, then LayerWeights::list(): ff_norm is the sixth weight
    if (ff_direct) {
      for (size_t i = kFirstFF; i < n_in; ++i) {
        if (should_compute_output(i)) out[i] = ff[1 + i - kFirstFF];
      }
      ff.clear();
    }

    // Back through the recorded graph from its roots' gradient edges (what torch::autograd::grad
    // does, with the engine called directly): y's memory goes before the backward runs, as the
    // graph holds no reference to it (residual_add and the output projection keep their inputs).
    torch::autograd::edge_list roots, wanted;
    variable_list grad_outputs;
    if (dy && y.requires_grad()) {
      roots.push_back(torch::autograd::impl::gradient_edge(y));
      // p's gradient is the residual stream's, in p's dtype (residual_add's backward)
      grad_outputs.push_back(ff_direct ? d_residual.to(y.scalar_type()) : grads[0]);
    }
    y.reset();
    if (!ff_direct) grads[0].reset();
    if (dlse) {
      roots.push_back(torch::autograd::impl::gradient_edge(lse));
      grad_outputs.push_back(grads[1]);
    }
    lse.reset();
    std::vector<size_t> where;
    const size_t recorded = ff_direct ? kFirstFF : n_in;
    for (size_t i = 0; i < recorded; ++i) {
      if (!inputs[i].requires_grad()) continue;
      // a leaf the recording did not reach has no accumulator: its gradient stays undefined (zero)
      auto acc = torch::autograd::impl::try_get_grad_accumulator(inputs[i]);
      if (!acc) continue;
      wanted.emplace_back(std::move(acc), 0);
      where.push_back(i);
    }
    variable_list g(wanted.size());
    if (!wanted.empty() && !roots.empty()) {
      g = torch::autograd::Engine::get_default_engine().execute(roots, grad_outputs, /*keep_graph=*/false,
                                                                /*create_graph=*/false,
                                                                /*accumulate_grad=*/false, wanted);
    }
    // x's gradient through the residual: added as the engine adds a second gradient (exact in either order)
    if (ff_direct && should_compute_output(0)) {
      at::Tensor& dx = !where.empty() && where[0] == 0 ? g[0] : out[0];
      if (!dx.defined()) {
        dx = d_residual;
      } else {
        // in place where the engine's result is this call's alone (the projections' fresh d x)
        dx = sole_owner(dx) ? dx.add_(d_residual) : dx + d_residual;
      }
    }
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
