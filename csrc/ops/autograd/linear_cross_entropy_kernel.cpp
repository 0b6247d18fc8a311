// Autograd kernel of linear_cross_entropy: a C++ torch::autograd::Function, so that gradients
// work the same from Python, TorchScript, torch.compile and pure C++.
//
// linear_cross_entropy: with reduction mean/sum and lse not returned, the forward
// produces the gradients (for an upstream gradient of 1) in the same sweep over the
// row tiles, and backward rescales them; otherwise backward recomputes the tiles.
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

class LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& target, int64_t ignore_index,
                               c10::string_view reduction_str, double label_smoothing, double z_loss_weight,
                               bool return_lse, std::array<bool, 3> output_mask) {
    const Reduction reduction = parse_reduction(reduction_str);
    const auto reduction_code = static_cast<int64_t>(reduction);
    const bool any = output_mask[0] || output_mask[1] || output_mask[2];
    // no bias is passed as an empty placeholder (an undefined tensor cannot be a Function input)
    const bool has_bias = bias.dim() == 1;
    std::optional<at::Tensor> b;
    if (has_bias) b = bias;
    ctx->set_materialize_grads(false);
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = reduction_code;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["z_loss_weight"] = z_loss_weight;
    ctx->saved_data["output_mask"] = c10::List<bool>({output_mask[0], output_mask[1], output_mask[2]});
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool fused = any && reduction != Reduction::None && !return_lse;
    auto [loss, lse, gh, gw, gb] = detail::linear_cross_entropy_forward(
        hidden, weight, b, target, ignore_index, reduction_code, label_smoothing, z_loss_weight,
        fused ? output_mask : std::array<bool, 3>{false, false, false});
    ctx->saved_data["fused"] = fused;
    if (fused) {
      ctx->save_for_backward({gh, gw, gb});
    } else if (any) {
      ctx->save_for_backward({hidden, weight, bias, target});
    }
    if (!(return_lse && any)) ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_loss = grads[0];
    const at::Tensor& grad_lse = grads[1];
    auto output_mask = ctx->saved_data["output_mask"].toBoolList();
    variable_list out(10);
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["fused"].toBool()) {
      if (!grad_loss.defined()) return out;
      ScaledGrads scaled(ctx, grad_loss, "linear_cross_entropy");  // in place once, then from the carried scale
      for (int k = 0; k < 3; ++k) {
        if (output_mask.get(k) && saved[k].numel() != 0) out[k] = scaled(saved[k]);
      }
      return out;
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& hidden = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& bias = saved[2];
    const at::Tensor& target = saved[3];
    if (!grad_loss.defined() && !grad_lse.defined()) return out;
    const auto reduction_code = ctx->saved_data["reduction"].toInt();
    const auto ld = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    // an undefined upstream gradient of the loss (only lse is used) counts as zero
    const at::Tensor grad_loss_or_zero = grad_loss.defined() ? grad_loss
                                         : reduction_code == 0 ? at::zeros(target.sizes(), hidden.options().dtype(ld))
                                                               : at::zeros({}, hidden.options().dtype(ld));
    std::optional<at::Tensor> glse, b;
    if (grad_lse.defined()) glse = grad_lse;
    if (bias.dim() == 1) b = bias;
    auto [gh, gw, gb] = detail::linear_cross_entropy_backward(
        grad_loss_or_zero, glse, hidden, weight, b, target, ctx->saved_data["ignore_index"].toInt(), reduction_code,
        ctx->saved_data["label_smoothing"].toDouble(), ctx->saved_data["z_loss_weight"].toDouble(),
        {output_mask.get(0), output_mask.get(1), output_mask.get(2)});
    if (output_mask.get(0)) out[0] = gh;
    if (output_mask.get(1)) out[1] = gw;
    if (output_mask.get(2) && gb.numel() > 0) out[2] = gb;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_autograd(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, c10::string_view reduction, double label_smoothing,
    double z_loss_weight, bool return_lse) {
  // checked here too: below, a 0-dim placeholder stands for "no bias"
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const bool grad_mode = at::GradMode::is_enabled();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? *bias : at::empty({}, hidden.options());  // 0-dim placeholder: no bias
  std::array<bool, 3> output_mask{grad_mode && hidden.requires_grad(), grad_mode && weight.requires_grad(),
                                  grad_mode && has_bias && b.requires_grad()};
  auto outs = LinearCrossEntropyFunction::apply(hidden, weight, b, target, ignore_index, reduction, label_smoothing,
                                                z_loss_weight, return_lse, output_mask);
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("linear_cross_entropy", &linear_cross_entropy_autograd);
  fall_through(m, {"linear_cross_entropy_forward", "linear_cross_entropy_backward"});
}

}  // namespace arwrap::ops::autograd
