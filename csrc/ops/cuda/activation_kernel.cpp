// CUDA kernels of activation and its two backwards (activation_backward,
// activation_backward_recompute_; ../activation.cpp): the ATen composition (../activation_math.h), which runs ATen's own
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

at::Tensor activation_backward_recompute_cuda(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish) {
  check_activation_backward_args("activation_backward_recompute_", grad, f,
                                 check_activation_args("activation_backward_recompute_", f, glu));
  const at::Tensor out = math::activation(f, glu, swish), df = math::activation_backward(grad, f, glu, swish);
  grad.copy_(out);  // the schema's Tensor(a!) and Tensor(b!): written in place
  f.copy_(df);
  return df.reshape({-1, f.size(-1)}).sum(0, false, f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("activation", &activation_cuda);
  m.impl("activation_backward", &activation_backward_cuda);
  m.impl("activation_backward_recompute_", &activation_backward_recompute_cuda);
}

}  // namespace arwrap::ops::cuda
