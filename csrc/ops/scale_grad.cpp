// scale_grad_: grad *= scale, skipped when scale is exactly 1, with scale a one-element
// tensor read where it lives. The fused cross-entropy's backward uses it to bring the
// gradient its forward wrote (for an upstream gradient of 1) to the real upstream
// gradient, in place: on a GPU the upstream gradient is a device tensor, and reading it
// on the host would be a synchronisation, so the CUDA kernel (cuda/scale_grad_kernel.cu)
// reads it on the device and returns at once when it is 1 (the common `loss.backward()`),
// leaving the buffer unread. The CPU kernel reads it directly. Internal (not
// differentiable); a strided grad is scaled by at::mul_ (same result, no skip on CUDA).
//
//   scale_grad_(Tensor(a!) grad, Tensor scale) -> ()
#include <ATen/core/Tensor.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace {

void check_scale_grad_args(const at::Tensor& grad, const at::Tensor& scale) {
  TORCH_CHECK_VALUE(at::isFloatingType(grad.scalar_type()), "scale_grad_: grad must be floating point, got ",
                    grad.scalar_type());
  TORCH_CHECK_VALUE(scale.numel() == 1 && (scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kDouble),
                    "scale_grad_: scale must be a one-element float32 or float64 tensor, got ", scale.scalar_type(),
                    " of shape ", scale.sizes());
  TORCH_CHECK_VALUE(scale.device() == grad.device(), "scale_grad_: scale (", scale.device(), ") must be on grad's device (",
                    grad.device(), ")");
}

void scale_grad_cpu(const at::Tensor& grad, const at::Tensor& scale) {
  check_scale_grad_args(grad, scale);
  const double s = scale.item<double>();
  if (s != 1.0) grad.mul_(at::Scalar(s));
}

void scale_grad_meta(const at::Tensor& grad, const at::Tensor& scale) { check_scale_grad_args(grad, scale); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(arwrap, m) { m.def("scale_grad_(Tensor(a!) grad, Tensor scale) -> ()"); }

TORCH_LIBRARY_IMPL(arwrap, CPU, m) { m.impl("scale_grad_", &scale_grad_cpu); }
TORCH_LIBRARY_IMPL(arwrap, Meta, m) { m.impl("scale_grad_", &scale_grad_meta); }
TORCH_LIBRARY_IMPL(arwrap, Autograd, m) { m.impl("scale_grad_", torch::CppFunction::makeFallthrough()); }

}  // namespace arwrap::ops
