// The launches of the fused cross-entropy's CUDA kernels (cross_entropy_launch.cu), for its
// CUDA kernels cross_entropy_kernel.cpp. They queue work on the current stream and return the
// first CUDA error instead of raising it: no exception is thrown from code nvcc compiled
// (docs/cuda.md). The arguments are checked by the caller (../cross_entropy_entries.h).
#pragma once

#include "../common.h"

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>

namespace arwrap::ops::cuda {

// status (2) int64 on the device: status[0] the count of targets != ignore_index, status[1]
// the first flat position of a target outside [0, V) that is not ignore_index, -1 for none
// (with device_assert, a device-side assertion instead). target: contiguous int64.
cudaError_t launch_validate_targets(const at::Tensor& target, int64_t V, int64_t ignore_index,
                                    const at::Tensor& status, bool device_assert);

// loss and lse into the given outputs; with grad, also dloss/dlogits for an upstream gradient
// of 1 on the reduced loss (grad may be &logits: written in place). status: as filled by
// launch_validate_targets for this target (contiguous).
cudaError_t launch_ce_forward(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& status,
                              int64_t ignore_index, Reduction reduction, double eps, double w, const at::Tensor& loss,
                              const at::Tensor& lse, const at::Tensor* grad);

// dL/dlogits from the saved lse into grad (which may be logits itself).
cudaError_t launch_ce_backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                               const at::Tensor& logits, const at::Tensor& target, const at::Tensor& status,
                               const at::Tensor& lse, int64_t ignore_index, Reduction reduction, double eps,
                               double w, const at::Tensor& grad);

}  // namespace arwrap::ops::cuda
