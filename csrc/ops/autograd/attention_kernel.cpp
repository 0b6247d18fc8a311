// Autograd kernel of attention: a C++ torch::autograd::Function, so that gradients work the
// same from Python, TorchScript, torch.compile and pure C++. It saves only q, k, v, out and
// lse (and the key mask); the backward recomputes the probabilities from lse
// (arwrap::attention_backward), with the gradient of lse (the z-loss) folded in.
//
// attention_consuming (detail.h) is the same Function for a caller that hands q, k and v over
// (the native net's layer): where the graph is not kept, its backward writes the gradients over
// them (arwrap::attention_backward_), so a layer's backward allocates no dq, dk, dv of its own
// while every earlier layer's saved tensors are alive (B, float32: 24 MB of a checkpoint_layers
// step's 95 MB peak). With retain_graph they must stay as they are: the out-of-place backward.
// The written tensors' version counters are bumped, so a holder the caller did not know of
// gets autograd's "modified by an inplace operation" error instead of silently wrong values.
#include "../attention_args.h"
#include "../detail.h"
#include "function.h"

#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/graph_task.h>

namespace arwrap::ops::autograd {
namespace {

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, std::optional<double> scale, bool causal,
                               bool consume) {
    const double s = attention_scale(q, scale);
    at::Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, lse) = detail::attention(q, k, v, key_mask, s, causal);
    }
    ctx->save_for_backward({q, k, v, out, lse, key_mask.has_value() ? *key_mask : at::Tensor()});
    ctx->saved_data["scale"] = s;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["consume"] = consume;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& out = saved[3];
    if (!grads[0].defined() && !grads[1].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), {}, {}, {}, {}};
    std::optional<at::Tensor> mask, grad_lse;
    if (saved[5].defined()) mask = saved[5];
    if (grads[1].defined()) grad_lse = grads[1];
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(out);
    const double scale = ctx->saved_data["scale"].toDouble();
    const bool causal = ctx->saved_data["causal"].toBool();
    if (ctx->saved_data["consume"].toBool() && !torch::autograd::get_current_graph_task_keep_graph()) {
      const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2];
      {
        at::AutoDispatchBelowADInplaceOrView guard;
        detail::attention_backward_(grad_out, grad_lse, q, k, v, out, saved[4], mask, scale, causal);
      }
      for (const at::Tensor& t : {q, k, v}) torch::autograd::impl::bump_version(t);
      return {q.detach(), k.detach(), v.detach(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [dq, dk, dv] =
        detail::attention_backward(grad_out, grad_lse, saved[0], saved[1], saved[2], out, saved[4], mask, scale, causal);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& key_mask,
                                                      std::optional<double> scale, bool causal) {
  auto r = AttentionFunction::apply(q, k, v, key_mask, scale, causal, false);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("attention", &attention_autograd);
  fall_through(m, {"attention_backward", "attention_backward_"});
}

}  // namespace arwrap::ops::autograd

namespace arwrap::ops::detail {
std::tuple<at::Tensor, at::Tensor> attention_consuming(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const std::optional<at::Tensor>& key_mask,
                                                       std::optional<double> scale, bool causal) {
  auto r = autograd::AttentionFunction::apply(q, k, v, key_mask, scale, causal, true);
  return {r[0], r[1]};
}
}  // namespace arwrap::ops::detail
