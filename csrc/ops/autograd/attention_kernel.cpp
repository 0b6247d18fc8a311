// Autograd kernel of attention: a C++ torch::autograd::Function, so that gradients work the
// same from Python, TorchScript, torch.compile and pure C++. It saves only q, k, v, out and
// lse (and the key mask); the backward recomputes the probabilities from lse
// (arwrap::attention_backward), with the gradient of lse (the z-loss) folded in.
#include "../attention_args.h"
#include "../detail.h"
#include "function.h"

#include <ATen/ops/zeros_like.h>

namespace arwrap::ops::autograd {
namespace {

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, std::optional<double> scale, bool causal) {
    const double s = attention_scale(q, scale);
    at::Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, lse) = detail::attention(q, k, v, key_mask, s, causal);
    }
    ctx->save_for_backward({q, k, v, out, lse, key_mask.has_value() ? *key_mask : at::Tensor()});
    ctx->saved_data["scale"] = s;
    ctx->saved_data["causal"] = causal;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& out = saved[3];
    if (!grads[0].defined() && !grads[1].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), {}, {}, {}};
    std::optional<at::Tensor> mask, grad_lse;
    if (saved[5].defined()) mask = saved[5];
    if (grads[1].defined()) grad_lse = grads[1];
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(out);
    auto [dq, dk, dv] = detail::attention_backward(grad_out, grad_lse, saved[0], saved[1], saved[2], out, saved[4],
                                                   mask, ctx->saved_data["scale"].toDouble(),
                                                   ctx->saved_data["causal"].toBool());
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& key_mask,
                                                      std::optional<double> scale, bool causal) {
  auto r = AttentionFunction::apply(q, k, v, key_mask, scale, causal);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("attention", &attention_autograd);
  fall_through(m, {"attention_backward"});
}

}  // namespace arwrap::ops::autograd
