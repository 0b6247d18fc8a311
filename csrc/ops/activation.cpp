// activation: the feed-forward's GELU (erf) or SiLU, or its GLU (x-transformers' GLU: the
// first half of f times act of the second half), with its backward. Internal: the native
// net's feed-forward blocks call it (modules/lean_feed_forward.cpp, modules/layers.cpp); on
// the CPU one fused pass per direction in float32 and bfloat16 (cpu/activation_simd.inc),
// where ATen's GLU backward makes four inner-wide temporaries and a concatenation.
//
//   activation(Tensor f, bool glu, bool swish) -> Tensor                     (..., inner)
//   activation_backward(Tensor grad, Tensor f, bool glu, bool swish) -> Tensor   df, f's shape
//   activation_backward_recompute_(Tensor(a!) grad, Tensor(b!) f, bool glu, bool swish) -> Tensor
//                                   grad := activation(f) (the output, recomputed), f := df;
//                                   returns df summed over its rows in float32 (float64 for
//                                   float64 f; the gradient of a bias added to f), over fixed
//                                   blocks of rows, then in order
//
// f (..., w) with w = inner, or 2 inner with glu. The in-place backward is for a backward that
// kept only the pre-activation and needs the output too (for the second product's weight
// gradient): one pass and one exp per value for the output, d f and d bias, with no inner-wide
// temporary of its own (the feed-forward backward's peak is the step's); it writes both results
// over its inputs, so the caller must own f (the lean feed-forward does).
// This file: the schemas and the typed entries (detail::activation*). Kernels: cpu/, cuda/,
// meta/activation_kernel.cpp; autograd/activation_kernel.cpp (the backward is not
// differentiable again).
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace detail {

at::Tensor activation(const at::Tensor& f, bool glu, bool swish) {
  static const auto op = ARWRAP_TYPED_OP(activation);
  return op.call(f, glu, swish);
}

at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  static const auto op = ARWRAP_TYPED_OP(activation_backward);
  return op.call(grad, f, glu, swish);
}

at::Tensor activation_backward_recompute_(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  static const auto op = ARWRAP_TYPED_OP(activation_backward_recompute_);
  return op.call(grad, f, glu, swish);
}

}  // namespace detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def("activation(Tensor f, bool glu, bool swish) -> Tensor");
  m.def("activation_backward(Tensor grad, Tensor f, bool glu, bool swish) -> Tensor");
  m.def("activation_backward_recompute_(Tensor(a!) grad, Tensor(b!) f, bool glu, bool swish) -> Tensor");
}

}  // namespace arwrap::ops
