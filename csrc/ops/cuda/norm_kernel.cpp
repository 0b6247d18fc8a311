// CUDA kernels of norm and norm_backward (../norm.cpp): the ATen composition (../norm_math.h),
// which runs ATen's own CUDA kernels, written into the layout the Meta kernel gives; no kernel of
// ours. A .cpp: it composes dispatched operators, so it is compiled in every build. It has not
// yet run on a GPU (tests/ops/test_norm.py's CUDA cases, marked cuda, skip without one).
#include "../common.h"
#include "../norm_math.h"

#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

at::Tensor norm_cuda(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                     std::optional<at::ScalarType> dtype) {
  return alloc_norm_output(x, check_norm_args("norm", x, gamma, dtype)).copy_(math::norm(x, gamma, rms, unit_offset));
}

std::tuple<at::Tensor, at::Tensor> norm_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& gamma, bool rms, bool unit_offset) {
  check_norm_backward_args("norm_backward", grad, x, gamma);
  auto [dx, dgamma] = alloc_norm_grads(x, gamma);
  const auto [rdx, rdg] = math::norm_backward(grad, x, gamma, rms, unit_offset);
  dx.copy_(rdx);
  dgamma.copy_(rdg);
  return {dx, dgamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("norm", &norm_cuda);
  m.impl("norm_backward", &norm_backward_cuda);
}

}  // namespace arwrap::ops::cuda
