// Meta (shape-only) kernel of linear_cross_entropy: the same checks and allocations as the real
// kernels (../common.h), without touching data. It makes the operator work with fake
// tensors, torch.compile and torch.export.
#include "../common.h"

#include <torch/library.h>

#include <array>

namespace arwrap::ops::meta {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_meta(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t /*ignore_index*/, int64_t reduction, double label_smoothing, double z_loss_weight,
    std::array<bool, 3> output_mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  auto out = alloc_cross_entropy_outputs(hidden.select(-1, 0), target, to_reduction(reduction));
  auto e = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };
  const bool has_bias = bias.has_value() && bias->defined();
  return {out.loss, out.lse, output_mask[0] ? at::empty(hidden.sizes(), hidden.options()) : e(hidden),
          output_mask[1] ? at::empty(weight.sizes(), weight.options()) : e(weight),
          output_mask[2] && has_bias ? at::empty(bias->sizes(), bias->options()) : e(weight)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_meta(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double label_smoothing, double z_loss_weight, std::array<bool, 3> output_mask) {
  auto r = linear_cross_entropy_forward_meta(hidden, weight, bias, target, ignore_index, reduction, label_smoothing,
                                             z_loss_weight, output_mask);
  return {std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward_meta);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_meta);
}

}  // namespace arwrap::ops::meta
