// The attention block's q, k and v projections with their own backward (layers.h,
// normed_projections): norm(x) then the three products, as one autograd function that saves x
// (the residual stream, which the layer keeps regardless) and the weights, not the norm's
// output. The ATen composition keeps the normalised x (for gamma's gradient) and the scaled one
// (for the three products' weight gradients): two residual-shaped tensors per layer, float32
// under autocast too. The norm is the norm operator (ops/norm.cpp), below autograd: its
// forward writes the products' input in their dtype (autocast's cast fused into the pass), the
// backward recomputes that input with the same kernel and takes (d x, d gamma) from the
// operator's backward (norm_values, norm_grads: also the feed-forward block's).
//
// The products are the forward's (at::linear, on the float32 route of ops/low_precision_mm.h
// where ATen's low-precision CPU GEMM is slow), in autocast's dtype under autocast: the same
// values as project(), bit for bit in float32 (checkpoint_layers compares them). The output
// projection needs nothing of the kind: arwrap::attention lays its output out so that the
// heads' merge is a view, and the product saves that same storage.
#include "layers.h"

#include "../ops/detail.h"
#include "../ops/low_precision_mm.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace arwrap::layers {

void check_not_twice_differentiated(const char* block) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "TransformerWrapper: the ", block,
              " keeps only what its own backward needs and is not twice differentiable (backward with "
              "create_graph=True); set ARWRAP_LEAN_LAYERS=0 for the plain ATen composition, which is twice "
              "differentiable");
}

at::Tensor norm_values(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                       at::ScalarType dtype) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  return ops::detail::norm(x, gamma, rms, unit_offset, dtype);
}

std::pair<at::Tensor, at::Tensor> norm_grads(const at::Tensor& dh, const at::Tensor& x, const at::Tensor& gamma,
                                             bool rms, bool unit_offset) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  const auto [dx, dgamma] = ops::detail::norm_backward(dh, x, gamma, rms, unit_offset);
  return {dx, dgamma};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class NormProjections : public torch::autograd::Function<NormProjections> {
 public:
  // weights: the products' weights (out_i, dim), no biases
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gamma,
                               at::TensorList weights, bool rms, bool unit_offset) {
    const at::ScalarType dt = product_dtype(x);
    const at::Tensor hc = norm_values(x, gamma, rms, unit_offset, dt);  // in the products' dtype
    variable_list out;
    for (const at::Tensor& w : weights) out.push_back(ops::linear_lowp(hc, w.to(dt)));
    // the weights, not their casts (made again in the backward: memory before a cast's time)
    std::vector<at::Tensor> saved = {x, gamma};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["unit_offset"] = unit_offset;
    ctx->saved_data["dtype"] = static_cast<int64_t>(dt);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_twice_differentiated("attention block's normed q, k, v projections");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &gamma = saved[1];
    const auto dt = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const bool rms = ctx->saved_data["rms"].toBool(), unit_offset = ctx->saved_data["unit_offset"].toBool();
    const int64_t D = x.size(-1);
    const at::Tensor hc = norm_values(x, gamma, rms, unit_offset, dt).reshape({-1, D});  // the forward's, again
    // x's dtype (float32), the products' input gradients summed. Under autocast each product is
    // rounded to its dtype and added in float32 (autocast's sum of the three casts' gradients),
    // by addmm_acc_: bf16 products added into dh in one pass each, no float32 temporaries.
    at::Tensor dh;
    variable_list dweights;
    for (size_t i = 0; i + 2 < saved.size(); ++i) {
      const at::Tensor& w = saved[2 + i];
      const at::Tensor& gi = grads[i];
      if (!gi.defined()) {
        dweights.emplace_back();
        continue;
      }
      const at::Tensor g = gi.to(dt).reshape({-1, w.size(0)});
      dweights.push_back(ops::mm_lowp(g.t(), hc).to(w.scalar_type()));
      if (dt != x.scalar_type() && dt == at::kBFloat16 && x.device().is_cpu() && !ops::lowp_gemm_upcasts(g)) {
        const bool first = !dh.defined();
        if (first) dh = at::empty({g.size(0), D}, x.options());
        ops::addmm_acc_(dh, g, w.to(dt), first);
        continue;
      }
      const at::Tensor dhi = ops::mm_lowp(g, w.to(dt)).to(x.scalar_type());
      dh = dh.defined() ? dh.add_(dhi) : dhi;
    }
    // one gradient per input: x, gamma, each weight of the list, then the two flags
    at::Tensor dx, dgamma;
    if (dh.defined()) std::tie(dx, dgamma) = norm_grads(dh.view(x.sizes()), x, gamma, rms, unit_offset);
    variable_list out = {dx, dgamma};
    out.insert(out.end(), dweights.begin(), dweights.end());
    out.resize(out.size() + 2);
    return out;
  }
};

}  // namespace

std::vector<at::Tensor> normed_projections(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                                           at::TensorList weights) {
  return NormProjections::apply(x, gamma, weights, rms, unit_offset);
}

}  // namespace arwrap::layers
