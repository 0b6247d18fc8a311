// The rotary operator (rotary.cpp) as a composition of ATen operators: the reference path of the
// CPU kernel (float64, so gradcheck runs, and float16) and the CUDA kernel (on every dtype), as
// x-transformers computes it (cpu/rotary_simd.inc computes the same).
// Its result is t's dtype (the product with float32 tables computed in float32, rounded once).
#pragma once

#include <ATen/ATen.h>

namespace arwrap::ops::math {

// Each pair (x, y) of the first rot values made (-y, x) (x-transformers' rotate_half); the rest kept.
inline at::Tensor rotate_pairs(const at::Tensor& head) {
  const auto pairs = head.unflatten(-1, {head.size(-1) / 2, 2}).unbind(-1);
  return at::stack({-pairs[1], pairs[0]}, -1).flatten(-2);
}

inline at::Tensor rotary(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  const at::Tensor head = t.narrow(-1, 0, rot);
  at::Tensor out = (head * cos + rotate_pairs(head) * sin).to(t.scalar_type());
  if (rot == t.size(-1)) return out;
  return at::cat({out, t.narrow(-1, rot, t.size(-1) - rot)}, -1);
}

// The adjoint: the rotation by -angle, dt = g cos - rotate_pairs(g sin) (sin moves with its value).
inline at::Tensor rotary_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  const at::Tensor head = grad.narrow(-1, 0, rot);
  at::Tensor out = (head * cos - rotate_pairs(head * sin)).to(grad.scalar_type());
  if (rot == grad.size(-1)) return out;
  return at::cat({out, grad.narrow(-1, rot, grad.size(-1) - rot)}, -1);
}

}  // namespace arwrap::ops::math
