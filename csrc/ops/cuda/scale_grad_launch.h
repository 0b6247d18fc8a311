// The launch of scale_grad_'s CUDA kernel (scale_grad_launch.cu), for its CUDA kernel
// scale_grad_kernel.cpp; it returns the CUDA error instead of raising it (docs/cuda.md).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

namespace arwrap::ops::cuda {

// grad *= *scale unless *scale == 1, on the current stream; grad contiguous (float64,
// float32, bf16, fp16), scale a contiguous one-element float32 or float64 tensor on grad's device.
cudaError_t launch_scale_grad(const at::Tensor& grad, const at::Tensor& scale);

}  // namespace arwrap::ops::cuda
