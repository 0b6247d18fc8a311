// The small-batch linear of decoding: see small_batch_linear.h.
#include "small_batch_linear.h"

#include "../ops/tracing.h"
#include "../ops/cpu/softmax_simd.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>

#include <algorithm>

namespace arwrap::layers {

namespace {
// float32 on the CPU with real data (not fake or functional tensors under torch.compile: their
// trace takes at::linear)
bool float_cpu(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && ops::has_real_data(t);
}
}  // namespace

bool small_batch_linear_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!x.defined() || !weight.defined() || !float_cpu(x) || !float_cpu(weight) || weight.dim() != 2 || x.dim() < 1 ||
      x.size(-1) != weight.size(1) || weight.size(1) == 0 || x.numel() / weight.size(1) > kSmallBatchMaxRows)
    return false;
  if (bias.defined() && (!float_cpu(bias) || bias.dim() != 1 || bias.size(0) != weight.size(0))) return false;
  const bool wants_grad = at::GradMode::is_enabled() &&
                          (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  return !wants_grad && !at::autocast::is_autocast_enabled(at::kCPU);
}

at::Tensor small_batch_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK_VALUE(small_batch_linear_applies(x, weight, bias),
                    "small_batch_linear: expects float32 CPU tensors, x (..., K) with at most ", kSmallBatchMaxRows,
                    " rows, weight (N, K), bias (N,) or none, and no gradient; got x ",
                    x.defined() ? c10::str(x.scalar_type(), " ", x.sizes()) : "undefined", ", weight ",
                    weight.defined() ? c10::str(weight.scalar_type(), " ", weight.sizes()) : "undefined");
  const int64_t K = weight.size(1), N = weight.size(0), M = x.numel() / K;
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const at::Tensor bc = bias.defined() ? bias.contiguous() : at::Tensor();
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  at::Tensor y = at::empty(out_sizes, x.options());
  const float* xp = xc.const_data_ptr<float>();
  const float* wp = wc.const_data_ptr<float>();
  const float* bp = bc.defined() ? bc.const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();
  const auto dot = ops::cpu::simd::kernels().dot;
  // rows of W in blocks of about 64 KiB: enough work per task, and each thread streams its own range
  const int64_t grain = std::max<int64_t>(1, (64 * 1024 / 4) / K);
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* w = wp + n * K;
      const float b = bp ? bp[n] : 0.0f;
      for (int64_t m = 0; m < M; ++m) yp[m * N + n] = dot(w, xp + m * K, static_cast<long>(K)) + b;
    }
  });
  return y;
}

}  // namespace arwrap::layers
