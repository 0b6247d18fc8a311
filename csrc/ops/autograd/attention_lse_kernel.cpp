// Autograd kernel of attention_lse: a C++ torch::autograd::Function, so that gradients
// work the same from Python, TorchScript, torch.compile and pure C++.
#include "../detail.h"
#include "function.h"

#include <ATen/ops/zeros_like.h>

namespace arwrap::ops::autograd {
namespace {

// attention_lse: saves q, k and the lse; the backward recomputes the scores in
// row blocks (arwrap::attention_lse_backward).
class AttentionLseFunction : public torch::autograd::Function<AttentionLseFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const std::optional<at::Tensor>& key_mask, double scale, bool causal) {
    at::Tensor lse;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      lse = detail::attention_lse(q, k, key_mask, scale, causal);
    }
    at::Tensor mask = key_mask.has_value() ? *key_mask : at::Tensor();
    ctx->save_for_backward({q, k, lse, mask});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["causal"] = causal;
    return lse;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    std::optional<at::Tensor> mask;
    if (saved[3].defined()) mask = saved[3];
    at::Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(saved[2]);
    auto [dq, dk] = detail::attention_lse_backward(grad.contiguous(), saved[0], saved[1], mask,
                                                   ctx->saved_data["scale"].toDouble(),
                                                   ctx->saved_data["causal"].toBool(), saved[2]);
    return {dq, dk, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor attention_lse_autograd(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                  double scale, bool causal) {
  return AttentionLseFunction::apply(q, k, key_mask, scale, causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("attention_lse", &attention_lse_autograd);
  fall_through(m, {"attention_lse_backward"});
}

}  // namespace arwrap::ops::autograd
