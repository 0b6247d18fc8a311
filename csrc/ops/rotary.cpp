// rotary: the rotary position embedding (RoFormer, Su et al. 2021) of q or k, as x-transformers
// applies it (rotate_half over interleaved pairs), with its backward. Internal: the native net's
// attention calls it (modules/layers.cpp); on the CPU one fused pass per direction in float32 and
// bfloat16 (cpu/rotary_simd.inc), where the ATen composition makes five t-sized temporaries
// (a reshaped copy of a strided t, the negated half, the stacked pairs, two products).
//
//   rotary(Tensor t, Tensor cos, Tensor sin) -> Tensor               (..., m, d), t's dtype
//   rotary_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor   d t from d out
//
// With c, s the tables' row i (the position of t's row; (m, rot), rot even, at most d) and pairs
// (x, y) = t[2j], t[2j+1] for 2j < rot:
//   out[2j] = x c[2j] - y s[2j],   out[2j+1] = y c[2j+1] + x s[2j+1],   out[rot:] = t[rot:]
//   backward, g = d out:  dt[2j] = g[2j] c[2j] + g[2j+1] s[2j+1],  dt[2j+1] = g[2j+1] c[2j+1] - g[2j] s[2j]
// The backward is linear in grad: its own derivative is rotary (autograd/rotary_kernel.cpp).
// The tables are constants (no gradient). This file: the schemas and the typed entries
// (detail::rotary*). Kernels: cpu/, cuda/, meta/rotary_kernel.cpp; autograd/rotary_kernel.cpp.
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace detail {

at::Tensor rotary(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  static const auto op = ARWRAP_TYPED_OP(rotary);
  return op.call(t, cos, sin);
}

at::Tensor rotary_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  static const auto op = ARWRAP_TYPED_OP(rotary_backward);
  return op.call(grad, cos, sin);
}

}  // namespace detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def("rotary(Tensor t, Tensor cos, Tensor sin) -> Tensor");
  m.def("rotary_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor");
}

}  // namespace arwrap::ops
