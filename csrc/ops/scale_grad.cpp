// scale_grad_: grad *= scale, skipped when scale is exactly 1, with scale a one-element
// tensor read where it lives. The fused cross-entropy's backward uses it to bring the
// gradient its forward wrote (for an upstream gradient of 1) to the real upstream
// gradient, in place: on a GPU the upstream gradient is a device tensor, and reading it
// on the host would be a synchronisation, so the CUDA kernel (cuda/scale_grad_launch.cu)
// reads it on the device and returns at once when it is 1 (the common `loss.backward()`),
// leaving the buffer unread. The CPU kernel reads it directly. Internal (not
// differentiable); a strided grad is scaled by at::mul_ (same result, no skip on CUDA).
//
//   scale_grad_(Tensor(a!) grad, Tensor scale) -> ()
//
// This file: the schema and the typed entry (detail::scale_grad_). Kernels: cpu/, cuda/,
// meta/scale_grad_kernel.*; autograd/scale_grad_kernel.cpp falls through (internal).
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace detail {

void scale_grad_(const at::Tensor& grad, const at::Tensor& scale) {
  static const auto op = ARWRAP_TYPED_OP(scale_grad_);
  op.call(grad, scale);
}

}  // namespace detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) { m.def("scale_grad_(Tensor(a!) grad, Tensor scale) -> ()"); }

}  // namespace arwrap::ops
