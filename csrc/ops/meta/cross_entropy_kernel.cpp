// Meta (shape-only) kernel of cross_entropy: the same checks and allocations as the real
// kernels (../common.h), without touching data. It makes the operator work with fake
// tensors, torch.compile and torch.export.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

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

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward_meta);
  m.impl("cross_entropy_forward_grad", &cross_entropy_forward_grad_meta);
  m.impl("cross_entropy_forward_grad_", &cross_entropy_forward_grad_inplace_meta);
  m.impl("cross_entropy_backward", &cross_entropy_backward_meta);
  m.impl("cross_entropy_backward_", &cross_entropy_backward_inplace_meta);
}

}  // namespace arwrap::ops::meta
