// The attention block's two projections with their own backward (layers.h): each keeps for the
// backward only a tensor something else keeps anyway.
//
// normed_projections: norm(x) then the q, k and v products, as one autograd function that saves
// x (the residual stream, which the layer keeps regardless) and the weights, not the norm's
// output. The ATen composition keeps the normalised x (for gamma's gradient) and the scaled one
// (for the three products' weight gradients): two residual-shaped tensors per layer, float32
// under autocast too. The backward recomputes the norm with recording (norm(), the one
// definition) and back-propagates through it, so the norm's gradient is the composition's.
//
// heads_projection: the output projection of the attention's (b, heads, m, dim_head) output. The
// composition copies it to (b, m, heads * dim_head) for the product and keeps that copy; this
// keeps the attention output itself (the tensor arwrap::attention saves) and makes the copy again
// in the backward.
//
// The products are the forward's (at::linear, on the float32 route of ops/low_precision_mm.h
// where ATen's low-precision CPU GEMM is slow), in autocast's dtype under autocast: the same
// values as project(), bit for bit in float32 (checkpoint_layers compares them).
#include "layers.h"

#include "../ops/low_precision_mm.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace arwrap::layers {

NormRecompute NormRecompute::run(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset) {
  at::AutoGradMode recording(true);
  NormRecompute r;
  r.x = x.detach().requires_grad_(true);
  r.gamma = gamma.detach().requires_grad_(true);
  r.h = norm(r.x, r.gamma, rms, unit_offset);
  return r;
}

std::pair<at::Tensor, at::Tensor> NormRecompute::backward(const at::Tensor& dh) const {
  const auto g = torch::autograd::grad({h}, {x, gamma}, {dh}, /*retain_graph=*/false, /*create_graph=*/false);
  return {g[0], g[1]};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class NormProjections : public torch::autograd::Function<NormProjections> {
 public:
  // weights: the products' weights (out_i, dim), no biases
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gamma,
                               at::TensorList weights, bool rms, bool unit_offset) {
    const at::Tensor h = norm(x, gamma, rms, unit_offset);
    const at::ScalarType dt = product_dtype(h);
    const at::Tensor hc = h.to(dt);
    variable_list out;
    for (const at::Tensor& w : weights) out.push_back(ops::linear_lowp(hc, w.to(dt)));
    std::vector<at::Tensor> saved = {x, gamma};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["unit_offset"] = unit_offset;
    ctx->saved_data["dtype"] = static_cast<int64_t>(dt);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &gamma = saved[1];
    const auto dt = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const NormRecompute rec =
        NormRecompute::run(x, gamma, ctx->saved_data["rms"].toBool(), ctx->saved_data["unit_offset"].toBool());
    const int64_t D = x.size(-1);
    const at::Tensor hc = rec.h.detach().to(dt).reshape({-1, D});
    at::Tensor dh;  // float32 (the norm's dtype), the products' input gradients summed
    variable_list dweights;
    for (size_t i = 2; i < saved.size(); ++i) {
      const at::Tensor& w = saved[i];
      const at::Tensor& gi = grads[i - 2];
      if (!gi.defined()) {
        dweights.emplace_back();
        continue;
      }
      const at::Tensor g = gi.to(dt).reshape({-1, w.size(0)});
      dweights.push_back(ops::mm_lowp(g.t(), hc).to(w.scalar_type()));
      const at::Tensor dhi = ops::mm_lowp(g, w.to(dt)).to(rec.h.scalar_type());
      dh = dh.defined() ? dh.add_(dhi) : dhi;
    }
    // one gradient per input: x, gamma, each weight of the list, then the two flags
    at::Tensor dx, dgamma;
    if (dh.defined()) std::tie(dx, dgamma) = rec.backward(dh.view(x.sizes()));
    variable_list out = {dx, dgamma};
    out.insert(out.end(), dweights.begin(), dweights.end());
    out.resize(out.size() + 2);
    return out;
  }
};

class HeadsProjection : public torch::autograd::Function<HeadsProjection> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& w) {
    const at::ScalarType dt = product_dtype(a);
    const int64_t b = a.size(0), H = a.size(1), m = a.size(2), dh = a.size(3);
    const at::Tensor a2 = a.transpose(1, 2).reshape({b, m, H * dh}).to(dt);
    ctx->save_for_backward({a, w});
    ctx->saved_data["dtype"] = static_cast<int64_t>(dt);
    return ops::linear_lowp(a2, w.to(dt));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &w = saved[1];
    const auto dt = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    const int64_t b = a.size(0), H = a.size(1), m = a.size(2), dh = a.size(3);
    const at::Tensor g = grads[0].to(dt).reshape({-1, w.size(0)});
    at::Tensor da, dw;
    if (ctx->needs_input_grad(1)) {
      const at::Tensor a2 = a.transpose(1, 2).reshape({b * m, H * dh}).to(dt);  // the forward's copy, again
      dw = ops::mm_lowp(g.t(), a2).to(w.scalar_type());
    }
    if (ctx->needs_input_grad(0)) {
      da = ops::mm_lowp(g, w.to(dt)).view({b, m, H, dh}).transpose(1, 2).to(a.scalar_type());
    }
    return {da, dw};
  }
};

}  // namespace

std::vector<at::Tensor> normed_projections(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                                           at::TensorList weights) {
  return NormProjections::apply(x, gamma, weights, rms, unit_offset);
}

at::Tensor heads_projection(const at::Tensor& a, const at::Tensor& w) { return HeadsProjection::apply(a, w); }

}  // namespace arwrap::layers
