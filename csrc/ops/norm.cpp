// norm: the native net's pre-norm, x-transformers' LayerNorm (layer_norm without affine, eps 1e-5,
// times gamma) or RMSNorm (F.normalize(x) * sqrt(dim) * g), with gamma's unit offset, and its
// backward. Internal: the native net's norms call it (modules/layers.cpp, the lean blocks); on the
// CPU one fused pass per direction in float32 and bfloat16 (cpu/norm_simd.inc), where the ATen
// composition makes a normalised temporary, a scaled one and, under autocast, the cast for the
// products, and its backward a fourth (the recomputed composition) besides.
//
//   norm(Tensor x, Tensor gamma, bool rms, bool unit_offset, ScalarType? dtype=None) -> Tensor
//       (..., dim), contiguous, in dtype (x's when none: autocast's for the products' input,
//       rounded once from the float32 result, the values of the composition's cast)
//   norm_backward(Tensor grad, Tensor x, Tensor gamma, bool rms, bool unit_offset) -> (Tensor, Tensor)
//       (d x in x's dtype, d gamma in gamma's), from d out in any floating dtype; the row
//       statistics recomputed from x (one more pass over a row already in cache), so the
//       forward saves x and gamma only
//
// With g = gamma (+ 1 with unit_offset), x̂ the normalised row (LayerNorm: (x - mean) rstd;
// RMSNorm: x / max(|x|, 1e-12) and g scaled by sqrt(dim)), out = x̂ g and
//   LayerNorm: d x = rstd (u - mean(u) - x̂ mean(u x̂)),  u = d out g
//   RMSNorm:   d x = (u - x̂ (u . x̂)) / max(|x|, 1e-12) (u / 1e-12 where |x| < 1e-12)
//   d gamma = sum over rows of d out x̂ (sqrt(dim) more for RMSNorm)
// A row whose sum of squares overflows float32 (values beyond ~1e19: a diverged run) is NaN in
// the fused CPU kernel, forward and backward, where 1 / sqrt(inf) would make it a silent 0 with a
// 0 gradient (ATen's layer_norm, and so the composition this operator runs on CUDA and in
// float64/float16, gives that 0): the divergence shows in the loss.
// d gamma is summed over fixed blocks of rows, then over the blocks in order: the same bits for
// any thread count. This file: the schemas and the typed entries (detail::norm*). Kernels: cpu/,
// cuda/, meta/norm_kernel.cpp; autograd/norm_kernel.cpp (twice differentiable through the ATen
// composition of the backward, ../norm_math.h, when a graph is being made).
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace detail {

at::Tensor norm(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                std::optional<at::ScalarType> dtype) {
  static const auto op = ARWRAP_TYPED_OP(norm);
  return op.call(x, gamma, rms, unit_offset, dtype);
}

std::tuple<at::Tensor, at::Tensor> norm_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
                                                 bool rms, bool unit_offset) {
  static const auto op = ARWRAP_TYPED_OP(norm_backward);
  return op.call(grad, x, gamma, rms, unit_offset);
}

}  // namespace detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def("norm(Tensor x, Tensor gamma, bool rms, bool unit_offset, ScalarType? dtype=None) -> Tensor");
  m.def("norm_backward(Tensor grad, Tensor x, Tensor gamma, bool rms, bool unit_offset) -> (Tensor, Tensor)");
}

}  // namespace arwrap::ops
