// attention_lse: the log-sum-exp of every attention row, for the attention z-loss
// (x-transformers' calc_z_loss squares the sum of it over layers):
//   lse[b, h, i] = log sum_j exp(scale * q[b,h,i] . k[b,h,j])   over the keys row i may see
// Internal operator: attention_lse_backward (dq, dk from the saved lse).
//
// This file: the schemas, the typed entries (detail::) and the public C++ entry of
// <arwrap/ops.h>. Kernel: composite/attention_lse_kernel.cpp (one ATen kernel for
// every device and Meta); autograd: autograd/attention_lse_kernel.cpp.
#include <arwrap/ops.h>

#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

namespace arwrap {
namespace ops::detail {

at::Tensor attention_lse(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                         double scale, bool causal) {
  static const auto op = ARWRAP_TYPED_OP(attention_lse);
  return op.call(q, k, key_mask, scale, causal);
}

std::tuple<at::Tensor, at::Tensor> attention_lse_backward(const at::Tensor& grad, const at::Tensor& q,
                                                          const at::Tensor& k,
                                                          const std::optional<at::Tensor>& key_mask, double scale,
                                                          bool causal, const at::Tensor& lse) {
  static const auto op = ARWRAP_TYPED_OP(attention_lse_backward);
  return op.call(grad, q, k, key_mask, scale, causal, lse);
}

}  // namespace ops::detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def("attention_lse(Tensor q, Tensor k, Tensor? key_mask, float scale, bool causal) -> Tensor");
  m.def(
      "attention_lse_backward(Tensor grad, Tensor q, Tensor k, Tensor? key_mask, float scale, bool causal, "
      "Tensor lse) -> (Tensor, Tensor)");
}

at::Tensor attention_lse(const at::Tensor& q, const at::Tensor& k, const AttentionLseOptions& options) {
  // the dispatcher needs a device: say which argument is missing before it does
  TORCH_CHECK_VALUE(q.defined() && k.defined(), "attention_lse: q and k must be defined, got ",
                    q.defined() ? "k" : "q", " undefined");
  TORCH_CHECK_VALUE(q.dim() == 4, "attention_lse: q must be (batch, heads, seq, dim_head), got ", q.sizes());
  const double scale = options.scale().has_value() ? *options.scale() : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  return ops::detail::attention_lse(q, k, options.key_mask(), scale, options.causal());
}

}  // namespace arwrap
