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
    const int64_t D = x.size(-1), rows = x.numel() / std::max<int64_t>(D, 1);
    const size_t n_w = saved.size() - 2;
    const at::Tensor x2 = x.reshape({rows, D});
    // Over chunks of rows (chunk_rows, by dh's float32 row): the recomputed norm output and dh
    // hold a chunk, not the batch, beside the q, k, v gradients (in checkpoint_layers' backward
    // they made the step's peak). The weights' gradients are summed over the chunks in float32
    // (float64 for float64 weights), as the feed-forward block's are.
    const auto acc = x.options().dtype(ops::is_low_precision(saved[2]) ? at::kFloat : saved[2].scalar_type());
    std::vector<at::Tensor> g(n_w), wc(n_w), dw(n_w);
    bool any = false;
    for (size_t i = 0; i < n_w; ++i) {
      if (!grads[i].defined()) continue;
      any = true;
      g[i] = grads[i].reshape({rows, saved[2 + i].size(0)});
      wc[i] = saved[2 + i].to(dt);
      dw[i] = rows > 0 ? at::empty(saved[2 + i].sizes(), acc) : at::zeros(saved[2 + i].sizes(), acc);  // set by chunk 0
    }
    // dx made in x's shape and written through a 2-d view: a view handed back would keep its base
    // alive, and the engine could not add the residual's gradient into it in place
    at::Tensor dx, dx2, dgamma;
    if (any) {
      dx = at::empty(x.sizes(), x.options());
      dx2 = dx.view({rows, D});
      dgamma = at::zeros_like(gamma);
    }
    const int64_t step = chunk_rows(rows, D * static_cast<int64_t>(sizeof(float)));
    for (int64_t r = 0; any && r < rows; r += step) {
      const int64_t n = std::min(step, rows - r);
      const at::Tensor x_r = x2.narrow(0, r, n);
      const at::Tensor hc = norm_values(x_r, gamma, rms, unit_offset, dt);  // the forward's, again
      // x's dtype (float32), the products' input gradients summed. Under autocast each product is
      // rounded to its dtype and added in float32 (autocast's sum of the three casts' gradients),
      // by addmm_acc_: bf16 products added into dh in one pass each, no float32 temporaries.
      at::Tensor dh;
      for (size_t i = 0; i < n_w; ++i) {
        if (!g[i].defined()) continue;
        const at::Tensor g_r = g[i].narrow(0, r, n).to(dt);
        ops::addmm_acc_(dw[i], g_r.t(), hc, r == 0);
        if (dt != x.scalar_type() && dt == at::kBFloat16 && x.device().is_cpu() && !ops::lowp_gemm_upcasts(g_r)) {
          const bool first = !dh.defined();
          if (first) dh = at::empty({n, D}, x.options());
          ops::addmm_acc_(dh, g_r, wc[i], first);
          continue;
        }
        const at::Tensor dhi = ops::mm_lowp(g_r, wc[i]).to(x.scalar_type());
        dh = dh.defined() ? dh.add_(dhi) : dhi;
      }
      const auto [dx_r, dgamma_r] = norm_grads(dh, x_r, gamma, rms, unit_offset);
      dx2.narrow(0, r, n).copy_(dx_r);
      dgamma.add_(dgamma_r);
    }
    variable_list dweights(n_w);
    for (size_t i = 0; i < n_w; ++i) {
      if (dw[i].defined()) dweights[i] = dw[i].to(saved[2 + i].scalar_type());
    }
    // one gradient per input: x, gamma, each weight of the list, then the two flags
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
