// The launches of shift_tokens' CUDA kernels (shift_tokens_launch.cu), for its CUDA kernel
// shift_tokens_kernel.cpp. They queue work on the current stream and return the first CUDA
// error instead of raising it: no exception is thrown from code nvcc compiled (docs/cuda.md).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace arwrap::ops::cuda {

// input and target (b, m) and (b, n1 - 1) int64 from x (b, n1) contiguous int64, with lens
// (b) contiguous int64 or undefined. status (3) int64 on the device is set here: status[0]
// the first row whose lens is outside [0, n1], status[1] the first flat position in x of a
// token id inside lens that is < 0 and not ignore_index, -1 for none; with device_assert,
// a device-side assertion instead.
cudaError_t launch_shift_tokens(const at::Tensor& x, const at::Tensor& lens, int64_t m, int64_t ignore_index,
                                int64_t pad_value, const at::Tensor& input, const at::Tensor& target,
                                const at::Tensor& status, bool device_assert);

// keys[i, j - 1] = noise[i, j] for j >= 1 (-0 as +0) where keys (b, m - 1) is defined, from
// noise (b, m) contiguous float or double; status[2] (after launch_shift_tokens): the first
// flat position of a NaN in noise.
cudaError_t launch_noise_keys(const at::Tensor& noise, const at::Tensor& keys, const at::Tensor& status,
                              bool device_assert);

}  // namespace arwrap::ops::cuda
