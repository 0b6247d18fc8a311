// CPU kernels of norm and norm_backward (../norm.cpp): float32 and bfloat16 by the fused row
// kernels (norm_simd.inc: one read and one write per value and direction, the rows over the
// threads); float64 and float16 by the ATen composition (../norm_math.h). x is read as rows of a
// 2-d view where its layout allows one (else a contiguous copy); the outputs are contiguous.
// d gamma over blocks of rows fixed by the shape (row_block_sums.h): the bits do not depend on
// the thread count.
#include "../common.h"
#include "../norm_math.h"
#include "norm_simd.h"
#include "row_block_sums.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

// 0 float32, 1 bfloat16, -1 anything else (the composition)
int type_index(at::ScalarType t) { return t == at::kFloat ? 0 : t == at::kBFloat16 ? 1 : -1; }

// x as (rows, D) with a contiguous last dimension: a view where one exists
at::Tensor as_rows(const at::Tensor& x) {
  at::Tensor r = x.reshape({-1, x.size(-1)});
  return r.stride(-1) == 1 ? r : r.contiguous();
}

// The gain the row kernels multiply by, float32: gamma (+ 1), times sqrt(D) for RMSNorm.
std::vector<float> gain(const at::Tensor& gamma, bool rms, bool unit_offset) {
  const at::Tensor g = math::norm_gain(gamma.to(at::kFloat), unit_offset).contiguous();
  std::vector<float> out(g.const_data_ptr<float>(), g.const_data_ptr<float>() + g.numel());
  if (rms) {
    const float s = static_cast<float>(std::sqrt(static_cast<double>(out.size())));
    for (float& v : out) v *= s;
  }
  return out;
}

at::Tensor norm_cpu(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                    std::optional<at::ScalarType> dtype) {
  const at::ScalarType out_type = check_norm_args("norm", x, gamma, dtype);
  at::Tensor out = alloc_norm_output(x, out_type);
  const int ti = type_index(x.scalar_type()), oi = type_index(out_type);
  if (ti < 0 || oi < 0) return out.copy_(math::norm(x, gamma, rms, unit_offset));
  if (x.numel() == 0) return out;
  const at::Tensor xr = as_rows(x);
  const int64_t rows = xr.size(0), D = xr.size(1), xs = xr.stride(0);
  const std::vector<float> g = gain(gamma, rms, unit_offset);
  const auto kernel = simd::norm_kernels().forward[ti][oi];
  const char* src = static_cast<const char*>(xr.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t xb = xr.element_size(), ob = out.element_size();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / D), [&](int64_t b, int64_t e) {
    kernel(src + b * xs * xb, xs, dst + b * D * ob, D, g.data(), e - b, D, rms);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> norm_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                     const at::Tensor& gamma, bool rms, bool unit_offset) {
  check_norm_backward_args("norm_backward", grad, x, gamma);
  auto [dx, dgamma] = alloc_norm_grads(x, gamma);
  const int ti = type_index(x.scalar_type()), gi = type_index(grad.scalar_type());
  if (ti < 0 || gi < 0) {
    const auto [rdx, rdg] = math::norm_backward(grad, x, gamma, rms, unit_offset);
    dx.copy_(rdx);
    dgamma.copy_(rdg);
    return {dx, dgamma};
  }
  const at::Tensor xr = as_rows(x), gr = as_rows(grad);
  const int64_t rows = xr.size(0), D = xr.size(1);
  const std::vector<float> g = gain(gamma, rms, unit_offset);
  const auto kernel = simd::norm_kernels().backward[ti][gi];
  const char* xp = static_cast<const char*>(xr.const_data_ptr());
  const char* gp = static_cast<const char*>(gr.const_data_ptr());
  char* dp = static_cast<char*>(dx.data_ptr());
  const int64_t xb = xr.element_size(), gb = gr.element_size();
  std::vector<float> sum = row_block_sums(rows, D, [&](int64_t r0, int64_t n, float* partial) {
    kernel(gp + r0 * gr.stride(0) * gb, gr.stride(0), xp + r0 * xr.stride(0) * xb, xr.stride(0), dp + r0 * D * xb, D,
           g.data(), partial, n, D, rms);
  });
  const float s = rms ? static_cast<float>(std::sqrt(static_cast<double>(D))) : 1.0f;
  for (float& v : sum) v *= s;
  dgamma.copy_(at::from_blob(sum.data(), {D}, at::TensorOptions().dtype(at::kFloat)));
  return {dx, dgamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("norm", &norm_cpu);
  m.impl("norm_backward", &norm_backward_cpu);
}

}  // namespace arwrap::ops::cpu
