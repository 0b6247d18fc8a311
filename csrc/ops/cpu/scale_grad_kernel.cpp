// CPU kernel of scale_grad_ (../scale_grad.cpp): reads the scale on the host (no
// synchronisation on the CPU) and skips the pass when it is 1.
#include "../common.h"

#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace arwrap::ops::cpu {
namespace {

void scale_grad_cpu(const at::Tensor& grad, const at::Tensor& scale) {
  check_scale_grad_args(grad, scale);
  const double s = scale.item<double>();
  if (s != 1.0) grad.mul_(at::Scalar(s));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) { m.impl("scale_grad_", &scale_grad_cpu); }

}  // namespace arwrap::ops::cpu
