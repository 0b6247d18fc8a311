// Autograd kernel of cross_entropy: a C++ torch::autograd::Function, so that gradients
// work the same from Python, TorchScript, torch.compile and pure C++.
//
// cross_entropy picks one of two strategies in its forward:
//  * fused (reduction mean/sum, lse not returned, logits require grad): the
//    forward also computes dloss/dlogits for an upstream gradient of 1, reading
//    the logits once and writing the gradient once; backward only rescales it when
//    the upstream gradient is not 1 (scale_grad_, which reads it on the device: no
//    host sync on a GPU). With inplace_backward the gradient is written
//    over the logits (their version counter is bumped, so a node that saved them
//    fails loudly instead of computing with clobbered values).
//  * plain (reduction none, or lse returned): the forward saves lse; backward
//    reads the logits once and writes the gradient (over the logits with
//    inplace_backward).
// In-place writes are skipped (out-of-place instead, same results) when the
// logits are traced (fake or functional tensors, a dispatch mode is active), as
// under torch.compile, which plans its own buffers.
#include "../common.h"
#include "../detail.h"
#include "../tracing.h"
#include "function.h"
#include "scaled_grads.h"

#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

namespace arwrap::ops::autograd {
namespace {

class CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               int64_t ignore_index, c10::string_view reduction_str, double label_smoothing,
                               double z_loss_weight,
                               bool inplace_backward, bool return_lse, bool needs_grad) {
    const Reduction reduction = parse_reduction(reduction_str);
    const auto reduction_code = static_cast<int64_t>(reduction);
    // in place only where each element is its own memory (not expanded or overlapping rows)
    const bool inplace = inplace_backward && logits.stride(-1) == 1 && has_real_data(logits) &&
                         provably_non_overlapping(logits);
    ctx->set_materialize_grads(false);
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = reduction_code;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["z_loss_weight"] = z_loss_weight;
    ctx->saved_data["inplace"] = inplace;

    at::AutoDispatchBelowADInplaceOrView guard;
    if (!needs_grad) {
      auto [loss, lse] =
          detail::cross_entropy_forward(logits, target, ignore_index, reduction_code, label_smoothing, z_loss_weight);
      ctx->mark_non_differentiable({lse});
      return {loss, lse};
    }
    if (reduction != Reduction::None && !return_lse) {
      ctx->saved_data["fused"] = true;
      at::Tensor loss, lse, grad;
      if (inplace) {
        std::tie(loss, lse) = detail::cross_entropy_forward_grad_(logits, target, ignore_index, reduction_code,
                                                                  label_smoothing, z_loss_weight);
        torch::autograd::impl::bump_version(logits);
        grad = logits;
      } else {
        std::tie(loss, lse, grad) = detail::cross_entropy_forward_grad(logits, target, ignore_index, reduction_code,
                                                                       label_smoothing, z_loss_weight);
      }
      ctx->save_for_backward({grad});
      ctx->mark_non_differentiable({lse});
      return {loss, lse};
    }
    ctx->saved_data["fused"] = false;
    auto [loss, lse] =
        detail::cross_entropy_forward(logits, target, ignore_index, reduction_code, label_smoothing, z_loss_weight);
    ctx->save_for_backward({logits, target, lse});
    if (!return_lse) ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_loss = grads[0];
    const at::Tensor& grad_lse = grads[1];
    const bool inplace = ctx->saved_data["inplace"].toBool();
    variable_list out(9);
    auto saved = ctx->get_saved_variables();

    if (ctx->saved_data["fused"].toBool()) {
      if (!grad_loss.defined()) return out;
      ScaledGrads scaled(ctx, grad_loss, "cross_entropy");  // in place once, then from the carried scale
      // The logits' buffer of inplace_backward is refused once rescaled: it may have been
      // handed on and accumulated into.
      TORCH_CHECK(scaled.first() || !inplace || scaled.carried() == 1.0,
                  "cross_entropy(inplace_backward=True): this graph's gradient buffer was already rescaled by an "
                  "earlier backward; run backward once, or use inplace_backward=False with retain_graph=True");
      out[0] = scaled(saved[0]);
      return out;
    }

    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& logits = saved[0];
    const at::Tensor& target = saved[1];
    const at::Tensor& lse = saved[2];
    if (!grad_loss.defined() && !grad_lse.defined()) return out;
    const auto ignore_index = ctx->saved_data["ignore_index"].toInt();
    const auto reduction_code = ctx->saved_data["reduction"].toInt();
    const double label_smoothing = ctx->saved_data["label_smoothing"].toDouble();
    const double z_loss_weight = ctx->saved_data["z_loss_weight"].toDouble();
    // an undefined upstream gradient of the loss (only lse is used) counts as zero
    const at::Tensor grad_loss_or_zero = grad_loss.defined() ? grad_loss
                                         : reduction_code == 0 ? at::zeros_like(lse)
                                                               : at::zeros({}, lse.options());
    std::optional<at::Tensor> glse;
    if (grad_lse.defined()) glse = grad_lse;
    if (inplace && has_real_data(logits)) {
      detail::cross_entropy_backward_(grad_loss_or_zero, glse, logits, target, lse, ignore_index, reduction_code,
                                      label_smoothing, z_loss_weight);
      torch::autograd::impl::bump_version(logits);
      out[0] = logits;
    } else {
      out[0] = detail::cross_entropy_backward(grad_loss_or_zero, glse, logits, target, lse, ignore_index,
                                              reduction_code, label_smoothing, z_loss_weight);
    }
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& target,
                                                          int64_t ignore_index, c10::string_view reduction,
                                                          double label_smoothing, double z_loss_weight,
                                                          bool inplace_backward, bool return_lse) {
  const bool needs_grad = at::GradMode::is_enabled() && logits.requires_grad();
  auto outs = CrossEntropyFunction::apply(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight,
                                          inplace_backward, return_lse, needs_grad);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("cross_entropy", &cross_entropy_autograd);
  fall_through(m, {"cross_entropy_forward", "cross_entropy_forward_grad", "cross_entropy_forward_grad_",
                   "cross_entropy_backward", "cross_entropy_backward_"});
}

}  // namespace arwrap::ops::autograd
