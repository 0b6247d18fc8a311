// CUDA kernels of activation, activation_backward and activation_backward_
// (../activation.cpp): the ATen composition (../activation_math.h), which runs ATen's own
// CUDA element-wise kernels; no kernel of ours. A .cpp: it composes dispatched operators,
// so it is compiled in every build. It has not yet run on a GPU (tests/ops/test_activation.py's
// CUDA cases, marked cuda, skip without one).
#include "../activation_math.h"
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

at::Tensor activation_cuda(const at::Tensor& f, bool glu, bool swish) {
  check_activation_args("activation", f, glu);
  return math::activation(f, glu, swish).contiguous();
}

at::Tensor activation_backward_cuda(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  check_activation_backward_args("activation_backward", grad, f, check_activation_args("activation_backward", f, glu));
  return math::activation_backward(grad, f, glu, swish).contiguous();
}

void activation_backward_inplace_cuda(const at::Tensor& grad, const at::Tensor& f, bool swish) {
  check_activation_backward_args("activation_backward_", grad, f,
                                 check_activation_args("activation_backward_", f, false));
  at::Tensor out = grad;  // the schema's Tensor(a!): written in place
  if (swish) at::silu_backward_out(out, grad, f);
  else at::gelu_backward_out(out, grad, f);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("activation", &activation_cuda);
  m.impl("activation_backward", &activation_backward_cuda);
  m.impl("activation_backward_", &activation_backward_inplace_cuda);
}

}  // namespace arwrap::ops::cuda
