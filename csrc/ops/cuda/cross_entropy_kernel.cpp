// CUDA kernels of the fused cross-entropy's internal operators: the entries written once for
// every backend (../cross_entropy_entries.h: checks, allocation, in-place rules) over the
// launches of cross_entropy_launch.cu, with the target check of ARWRAP_SYNC_CHECKS=1. Every
// error is raised here, in code the host compiler built, after the nvcc-compiled launches have
// returned: an exception thrown through nvcc's frames crashed the process on the GPU machine
// (docs/cuda.md). Built with the CUDA kernels only (a CPU build compiles this file to nothing).
#ifdef ARWRAP_WITH_CUDA
#include "../common.h"
#include "../cross_entropy_entries.h"
#include "../sync_checks.h"
#include "cross_entropy_launch.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

void check_cuda(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.is_cuda(), "cross_entropy: expected CUDA tensors, got logits on ", logits.device());
}

// Validates target (contiguous, on the device) and returns the 2-element int64 device
// tensor of launch_validate_targets (status[0]: the count of non-ignored targets). Without
// ARWRAP_SYNC_CHECKS nothing is copied to the host: a bad target asserts on the device.
at::Tensor validate_targets(const at::Tensor& target, int64_t V, int64_t ignore_index) {
  const at::Tensor status = at::empty({2}, target.options().dtype(at::kLong));
  const bool on_host = host_checks(target);
  C10_CUDA_CHECK(launch_validate_targets(target, V, ignore_index, status, !on_host));
  if (on_host && target.numel() > 0) {
    const int64_t pos = status[1].item<int64_t>();  // a host synchronisation
    TORCH_CHECK_INDEX(pos == -1, "cross_entropy: target must be in [0, ", V, ") or ignore_index (", ignore_index,
                      "), got ", pos == -1 ? 0 : target.view(-1)[pos].item<int64_t>(), " at flat position ", pos);
  }
  return status;
}

struct CudaRows {
  static at::Tensor empty_grad(const at::Tensor& logits) { return at::empty(logits.sizes(), logits.options()); }

  static void forward(const at::Tensor& logits, const at::Tensor& target_in, int64_t ignore_index,
                      Reduction reduction, double eps, double w, const at::Tensor& loss, const at::Tensor& lse,
                      const at::Tensor* grad) {
    check_cuda(logits);
    const c10::cuda::CUDAGuard guard(logits.device());
    const at::Tensor target = target_in.contiguous();
    const at::Tensor status = validate_targets(target, logits.size(-1), ignore_index);
    C10_CUDA_CHECK(launch_ce_forward(logits, target, status, ignore_index, reduction, eps, w, loss, lse, grad));
  }

  static void backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                       const at::Tensor& logits, const at::Tensor& target_in, const at::Tensor& lse,
                       int64_t ignore_index, Reduction reduction, double eps, double w, const at::Tensor& grad) {
    // (the arguments are checked by the entry, cross_entropy_entries.h)
    check_cuda(logits);
    const bool has_glse = grad_lse.has_value() && grad_lse->defined();
    TORCH_CHECK_VALUE(!has_glse || grad_lse->device() == logits.device(), "cross_entropy_backward: grad_lse (",
                      has_glse ? grad_lse->device() : logits.device(), ") must be on ", logits.device());
    const c10::cuda::CUDAGuard guard(logits.device());
    const at::Tensor target = target_in.contiguous();
    const at::Tensor status = validate_targets(target, logits.size(-1), ignore_index);
    C10_CUDA_CHECK(launch_ce_backward(grad_loss, grad_lse, logits, target, status, lse, ignore_index, reduction, eps,
                                      w, grad));
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) { register_cross_entropy_kernels<CudaRows>(m); }

}  // namespace arwrap::ops::cuda
#endif  // ARWRAP_WITH_CUDA
