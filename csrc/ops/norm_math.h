// The norm operator (norm.cpp) as a composition of ATen operators: the reference path of the CPU
// kernel (float64, so gradcheck runs, and float16), the CUDA kernel (every dtype), and the
// backward autograd differentiates again (create_graph). The forward is x-transformers' own
// composition (cpu/norm_simd.inc computes the same in one pass); the backward is its analytic
// gradient (norm.cpp's formulas), in x's dtype.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

namespace arwrap::ops::math {

constexpr double kLayerNormEps = 1e-5;  // nn.LayerNorm's default, x-transformers' LayerNorm
constexpr double kRmsNormEps = 1e-12;   // F.normalize's, x-transformers' RMSNorm

// gamma as the forward multiplies it: + 1 with unit_offset (the stored value is gamma - 1)
inline at::Tensor norm_gain(const at::Tensor& gamma, bool unit_offset) { return unit_offset ? gamma + 1.0 : gamma; }

// x-transformers' LayerNorm (layer_norm without affine, then times g) or RMSNorm
// (x / max(|x|, eps) * sqrt(dim) * g), in x's dtype
inline at::Tensor norm(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset) {
  const at::Tensor g = norm_gain(gamma, unit_offset);
  // normalise, then scale, as x-transformers does: layer_norm's fused affine backward
  // reduces gamma's gradient in an order that depends on the thread count
  if (!rms) return at::layer_norm(x, {x.size(-1)}, {}, {}, kLayerNormEps) * g;
  const at::Tensor n = at::linalg_vector_norm(x, 2, {-1}, true).clamp_min(kRmsNormEps);
  return x / n * (g * std::sqrt(static_cast<double>(x.size(-1))));
}

// (d x, d gamma) from d out, in x's and gamma's dtypes
inline std::tuple<at::Tensor, at::Tensor> norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                                        const at::Tensor& gamma, bool rms, bool unit_offset) {
  const at::Tensor dy = grad.to(x.scalar_type());
  const at::Tensor g = norm_gain(gamma, unit_offset).to(x.scalar_type());
  const int64_t D = x.size(-1);
  at::Tensor dx, xh;
  if (!rms) {
    const at::Tensor xc = x - x.mean(-1, true);
    const at::Tensor rstd = at::rsqrt(xc.square().mean(-1, true) + kLayerNormEps);
    xh = xc * rstd;
    const at::Tensor u = dy * g;
    dx = rstd * (u - u.mean(-1, true) - xh * (u * xh).mean(-1, true));
  } else {
    const double s = std::sqrt(static_cast<double>(D));
    const at::Tensor len = at::linalg_vector_norm(x, 2, {-1}, true);
    const at::Tensor n = len.clamp_min(kRmsNormEps);
    xh = x / n;
    const at::Tensor u = dy * (g * s);
    // where |x| < eps the divisor is the constant eps: no gradient through it
    dx = (u - xh * (u * xh).sum(-1, true) * (len >= kRmsNormEps)) / n;
    xh = xh * s;
  }
  at::Tensor dgamma = (dy * xh).reshape({-1, D}).sum(0);
  return {dx, dgamma.to(gamma.scalar_type())};
}

}  // namespace arwrap::ops::math
