// attention: causal (or not) scaled dot-product attention with an optional key mask, and the
// log-sum-exp of every row from the same pass (x-transformers' attention z-loss reads it):
//   out[b, h, i] = sum_j p_ij v[b, h, j],  p_ij = exp(s_ij - lse_i),
//   s_ij = scale q[b, h, i] . k[b, h, j],  lse_i = log sum_j exp(s_ij)
// over the keys row i may see: key_mask[b, j] true and, if causal, j <= i + (keys - queries)
// (so a cache prefill and the training step are one code path). A row that sees no key gives
// a zero output and lse -inf. Internal operators: attention_backward (dq, dk, dv from the saved
// out and lse, with the gradient of lse folded in) and attention_backward_, the same written over
// q, k and v (dq over q, dk over k, dv over v): for a caller that owns them and needs them no
// more (the native net's layer, attention_consuming), so the backward allocates no gradients
// of its own. The fused CPU kernel packs a head's q, k, v and dout before it writes anything of
// that head, so it writes straight over them; elsewhere (other dtypes, other devices,
// overlapping memory) the out-of-place backward, then a copy.
//
// This file: the schemas, the typed entries (detail::) and the public C++ entry of
// <arwrap/ops.h>. Kernels: cpu/attention_kernel.cpp (fused, cpu/attention_simd.inc),
// cuda/attention_kernel.cpp (PyTorch's efficient attention), meta/attention_kernel.cpp;
// autograd/ and autocast/attention_kernel.cpp.
#include <arwrap/ops.h>

#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap {
namespace ops::detail {

std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const std::optional<at::Tensor>& key_mask, std::optional<double> scale,
                                             bool causal) {
  static const auto op = ARWRAP_TYPED_OP(attention);
  return op.call(q, k, v, key_mask, scale, causal);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double scale, bool causal) {
  static const auto op = ARWRAP_TYPED_OP(attention_backward);
  return op.call(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
}

void attention_backward_(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                         const std::optional<at::Tensor>& key_mask, double scale, bool causal) {
  static const auto op = ARWRAP_TYPED_OP(attention_backward_);
  op.call(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
}

}  // namespace ops::detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? key_mask=None, float? scale=None, bool causal=True) -> "
        "(Tensor out, Tensor lse)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? key_mask, float scale, bool causal) -> (Tensor, Tensor, Tensor)");
  m.def(
      "attention_backward_(Tensor grad_out, Tensor? grad_lse, Tensor(a!) q, Tensor(b!) k, Tensor(c!) v, Tensor out, "
      "Tensor lse, Tensor? key_mask, float scale, bool causal) -> ()");
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionOptions& options) {
  return std::get<0>(attention_with_lse(q, k, v, options));
}

std::tuple<at::Tensor, at::Tensor> attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const AttentionOptions& options) {
  // the dispatcher needs a device: say which argument is missing before it does
  TORCH_CHECK_VALUE(q.defined() && k.defined() && v.defined(), "attention: q, k and v must be defined");
  return ops::detail::attention(q, k, v, options.key_mask(), options.scale(), options.causal());
}

}  // namespace arwrap
