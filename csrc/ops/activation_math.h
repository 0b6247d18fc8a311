// The activation operator (activation.cpp) as a composition of ATen operators: the reference
// path of the CPU kernel (float64, so gradcheck runs, and float16) and the CUDA kernel (on
// every dtype). The fused CPU kernels (cpu/activation_simd.inc) compute the same functions.
#pragma once

#include <ATen/ATen.h>

namespace arwrap::ops::math {

inline at::Tensor act(const at::Tensor& x, bool swish) { return swish ? at::silu(x) : at::gelu(x); }

inline at::Tensor act_backward(const at::Tensor& grad, const at::Tensor& x, bool swish) {
  return swish ? at::silu_backward(grad, x) : at::gelu_backward(grad, x);
}

inline at::Tensor activation(const at::Tensor& f, bool glu, bool swish) {
  if (!glu) return act(f, swish);
  const auto parts = f.chunk(2, -1);
  return parts[0] * act(parts[1], swish);
}

inline at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  if (!glu) return act_backward(grad, f, swish);
  const auto parts = f.chunk(2, -1);
  return at::cat({grad * act(parts[1], swish), act_backward(grad * parts[0], parts[1], swish)}, -1);
}

}  // namespace arwrap::ops::math
