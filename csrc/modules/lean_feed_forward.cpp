// The feed-forward block with its own backward (layers.h, lean_feed_forward): the norm, Linear,
// GELU/SiLU (or its GLU), Linear, as one torch::autograd::Function that saves the block's input
// y (the residual stream, which the layer keeps anyway), the pre-activation and nothing else; its
// backward recomputes the norm's output (norm_values: the norm operator, the forward's kernel;
// its gradient from the operator's backward, norm_grads) and the activation's output instead of
// keeping them, so the block keeps (dim + inner) values per row where the composition of ATen
// ops keeps (3 dim + 2 inner). The activation's output, d pre-activation and the first bias's
// gradient come from one in-place pass (activation_backward_recompute_: the output over
// d activation, d pre-activation over the pre-activation, which is this block's alone; with
// retain_graph over a copy of it): one exp per value and no separate column sum.
//
// Under autocast the products run in the autocast dtype, as at::linear under autocast does: the
// normed input and the weights are cast to it (the same .to() autocast makes), the
// pre-activation is kept in it, the gradients of the weights and the input come back in theirs
// (float32).
#include "layers.h"

#include "../ops/detail.h"
#include "../ops/low_precision_mm.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/graph_task.h>

namespace arwrap::layers {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The activation of the pre-activation f (its GLU: the first half times act(second half)), by
// the activation operator (ops/activation.cpp: one fused pass on the CPU), below autograd.
at::Tensor activate(const at::Tensor& f, bool glu, bool swish) {
  const at::AutoDispatchBelowADInplaceOrView guard;
  return ops::detail::activation(f, glu, swish);
}

class LeanFeedForward : public torch::autograd::Function<LeanFeedForward> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& w_in,
                            const at::Tensor& b_in, const at::Tensor& w_out, const at::Tensor& b_out, bool glu,
                            bool swish, bool rms, bool unit_offset) {
    const at::ScalarType dt = product_dtype(y);
    const at::Tensor hc = norm_values(y, gamma, rms, unit_offset, dt), wi = w_in.to(dt), bi = b_in.to(dt),
                     bo = b_out.to(dt);
    const at::Tensor wo = w_out.to(dt);
    // the products on the float32 route where ATen's low-precision CPU GEMM is slow (low_precision_mm.h)
    const at::Tensor f = ops::linear_lowp(hc, wi, bi);
    const at::Tensor out = ops::linear_lowp(activate(f, glu, swish), wo, bo);
    // the weights' casts are made again in the backward: kept, they cost more memory (A bf16: 29 MB
    // of a 363 MB peak) than their making costs time (about 1% of T's bf16 step)
    ctx->save_for_backward({y, gamma, f, w_in, w_out});
    ctx->saved_data["glu"] = glu;
    ctx->saved_data["swish"] = swish;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["unit_offset"] = unit_offset;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    check_not_twice_differentiated("feed-forward block");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &gamma = saved[1], &f = saved[2], &w_in = saved[3], &w_out = saved[4];
    const bool glu = ctx->saved_data["glu"].toBool(), swish = ctx->saved_data["swish"].toBool();
    const at::ScalarType dt = f.scalar_type();
    const int64_t out_dim = w_out.size(0), D = y.size(-1);
    // the products' weights, cast as the forward cast them. (w_out cast into transposed memory, for
    // d activation = g w_out, measured no faster once the product's output is not freshly mapped
    // memory: (4096, 512) x (512, 2048) bf16 3.26 ms either way, and its cast took 10x a plain one.)
    const at::Tensor wi = w_in.to(dt), wo = w_out.to(dt);
    const at::Tensor g = grads[0].to(dt).reshape({-1, out_dim});
    const at::Tensor d_b_out = g.sum(0).to(w_out.scalar_type());
    // One inner-wide temporary besides f (the backward of the last layer runs while every
    // layer's saved tensors are alive: the step's peak). One pass recomputes the activation's
    // output over d activation and writes d pre-activation over f, which is this block's alone:
    // where the graph is freed after this backward, f itself; with retain_graph f must stay as it
    // is for the next one, so a copy (one more inner-wide temporary, only then). The pass also
    // sums d f over the rows: the bias gradient.
    at::Tensor da = ops::mm_lowp(g, wo);
    const int64_t w = f.size(-1);
    at::Tensor df = torch::autograd::get_current_graph_task_keep_graph() ? f.reshape({-1, w}).clone()
                                                                         : f.view({-1, w});
    at::Tensor d_b_in;
    {
      const at::AutoDispatchBelowADInplaceOrView guard;
      d_b_in = ops::detail::activation_backward_recompute_(da, df, glu, swish).to(w_in.scalar_type());
    }
    const at::Tensor d_w_out = ops::mm_lowp(g.t(), da).to(w_out.scalar_type());
    da.reset();
    const bool rms = ctx->saved_data["rms"].toBool(), unit_offset = ctx->saved_data["unit_offset"].toBool();
    const at::Tensor h2 = norm_values(y, gamma, rms, unit_offset, dt).reshape({-1, D});  // the forward's, again
    const at::Tensor d_w_in = ops::mm_lowp(df.t(), h2).to(w_in.scalar_type());
    // d h in the products' dtype: the norm's backward widens it as it reads (autocast's cast, exact)
    const at::Tensor d_h = ops::mm_lowp(df, wi).view(y.sizes());
    df.reset();
    const auto [d_y, d_gamma] = norm_grads(d_h, y, gamma, rms, unit_offset);
    return {d_y, d_gamma, d_w_in, d_b_in, d_w_out, d_b_out, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor lean_feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d) {
  return LeanFeedForward::apply(y, w.ff_norm, w.ff_in_w, w.ff_in_b, w.ff_out_w, w.ff_out_b, d.ff_glu(), d.ff_swish(),
                                d.use_rmsnorm(), d.norm_add_unit_offset());
}

}  // namespace arwrap::layers
