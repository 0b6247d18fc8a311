// Meta (shape-only) kernel of attention, attention_backward and attention_backward_: the same
// checks and allocations (strides included; attention_backward_ allocates nothing) as the real
// kernels (../attention_args.h), without touching data. It makes the operator work with fake
// tensors, torch.compile and torch.export.
#include "../attention_args.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& key_mask,
                                                  std::optional<double> scale, bool /*causal*/) {
  attention_scale(q, scale);
  return alloc_attention_outputs(q, check_attention_args("attention", q, k, v, key_mask));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_meta(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double /*scale*/, bool /*causal*/) {
  const AttentionShape s = check_attention_args("attention_backward", q, k, v, key_mask);
  check_attention_backward_args(grad_out, grad_lse, out, lse, s);
  return alloc_attention_grads(q, s);
}

void attention_backward_inplace_meta(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                                     const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                     const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double /*scale*/,
                                     bool /*causal*/) {
  check_attention_backward_args(grad_out, grad_lse, out, lse, check_attention_args("attention_backward_", q, k, v, key_mask));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("attention", &attention_meta);
  m.impl("attention_backward", &attention_backward_meta);
  m.impl("attention_backward_", &attention_backward_inplace_meta);
}

}  // namespace arwrap::ops::meta
