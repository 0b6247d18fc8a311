// CUDA kernel of scale_grad_: the checks and the launch of scale_grad_launch.cu (whose
// comment says what the kernel does); a strided grad goes through at::mul_. Errors are raised
// here, in code the host compiler built (docs/cuda.md). Built with the CUDA kernels only.
#ifdef ARWRAP_WITH_CUDA
#include "../common.h"
#include "scale_grad_launch.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

void scale_grad_cuda(const at::Tensor& grad, const at::Tensor& scale) {
  check_scale_grad_args(grad, scale);
  TORCH_CHECK_VALUE(grad.is_cuda(), "scale_grad_: grad (", grad.device(), ") must be on a CUDA device");
  if (!grad.is_contiguous()) {
    grad.mul_(scale.reshape({}));
    return;
  }
  const c10::cuda::CUDAGuard guard(grad.device());
  C10_CUDA_CHECK(launch_scale_grad(grad, scale.contiguous()));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) { m.impl("scale_grad_", &scale_grad_cuda); }

}  // namespace arwrap::ops::cuda
#endif  // ARWRAP_WITH_CUDA
