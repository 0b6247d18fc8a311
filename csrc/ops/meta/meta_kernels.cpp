// Meta (shape-only) kernels: the same checks and allocations as the real kernels
// (common.h), without touching data. They make the operators work with fake
// tensors, torch.compile and torch.export.
#include "../common.h"

#include <torch/library.h>

#include <array>

namespace arwrap::ops::meta {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_meta(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    int64_t /*ignore_index*/, int64_t /*pad_value*/, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  check_shift_tokens_args(x, lens, noise, mask_prob, mask_token_id, keep_last);
  auto out = alloc_shift_tokens_outputs(x, mask_prob, keep_last);
  return {out.input, out.target, out.mask};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_meta(const at::Tensor& logits, const at::Tensor& target,
                                                              int64_t /*ignore_index*/, int64_t reduction,
                                                              double label_smoothing, double z_loss_weight) {
  check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
  auto out = alloc_cross_entropy_outputs(logits, target, to_reduction(reduction));
  return {out.loss, out.lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_grad_meta(
    const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index, int64_t reduction,
    double label_smoothing, double z_loss_weight) {
  auto [loss, lse] = cross_entropy_forward_meta(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight);
  return {loss, lse, at::empty(logits.sizes(), logits.options())};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_grad_inplace_meta(
    const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index, int64_t reduction,
    double label_smoothing, double z_loss_weight) {
  return cross_entropy_forward_meta(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight);
}

at::Tensor cross_entropy_backward_meta(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                       const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                       int64_t /*ignore_index*/, int64_t reduction, double label_smoothing,
                                       double z_loss_weight) {
  check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
  check_cross_entropy_backward_args(grad_loss, grad_lse, logits, target, lse, to_reduction(reduction));
  return at::empty(logits.sizes(), logits.options());
}

void cross_entropy_backward_inplace_meta(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                         const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                         int64_t /*ignore_index*/, int64_t reduction, double label_smoothing,
                                         double z_loss_weight) {
  check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
  check_cross_entropy_backward_args(grad_loss, grad_lse, logits, target, lse, to_reduction(reduction));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_meta(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t /*ignore_index*/, int64_t reduction, double eps, double w,
    std::array<bool, 3> mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, eps, w);
  auto out = alloc_cross_entropy_outputs(hidden.select(-1, 0), target, to_reduction(reduction));
  auto e = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };
  const bool has_bias = bias.has_value() && bias->defined();
  return {out.loss, out.lse, mask[0] ? at::empty(hidden.sizes(), hidden.options()) : e(hidden),
          mask[1] ? at::empty(weight.sizes(), weight.options()) : e(weight),
          mask[2] && has_bias ? at::empty(bias->sizes(), bias->options()) : e(weight)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_meta(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double eps, double w, std::array<bool, 3> mask) {
  auto r = linear_cross_entropy_forward_meta(hidden, weight, bias, target, ignore_index, reduction, eps, w, mask);
  return {std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward_meta);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_meta);
  m.impl("shift_tokens", &shift_tokens_meta);
  m.impl("cross_entropy_forward", &cross_entropy_forward_meta);
  m.impl("cross_entropy_forward_grad", &cross_entropy_forward_grad_meta);
  m.impl("cross_entropy_forward_grad_", &cross_entropy_forward_grad_inplace_meta);
  m.impl("cross_entropy_backward", &cross_entropy_backward_meta);
  m.impl("cross_entropy_backward_", &cross_entropy_backward_inplace_meta);
}

}  // namespace arwrap::ops::meta
