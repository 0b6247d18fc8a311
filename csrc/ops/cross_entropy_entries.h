// The entry points of cross_entropy's five internal operators, written once for every
// backend (CPU: cpu/cross_entropy_kernel.cpp, CUDA: cuda/cross_entropy_kernel.cpp): the
// argument checks, the output allocation and the in-place rules. A backend supplies
// its row sweeps as static functions of a struct:
//
//   struct Backend {
//     // a contiguous gradient buffer shaped like logits
//     static at::Tensor empty_grad(const at::Tensor& logits);
//     // loss and lse into the given outputs; with grad, also dloss/dlogits for an
//     // upstream gradient of 1 (grad may be &logits: written in place)
//     static void forward(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
//                         Reduction reduction, double label_smoothing, double z_loss_weight,
//                         const at::Tensor& loss, const at::Tensor& lse, const at::Tensor* grad);
//     // dL/dlogits from the saved lse into grad (which may be logits itself)
//     static void backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
//                          const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
//                          int64_t ignore_index, Reduction reduction, double label_smoothing,
//                          double z_loss_weight, const at::Tensor& grad);
//   };
//
// and registers them with register_cross_entropy_kernels<Backend>(m) inside its
// TORCH_LIBRARY_IMPL(arwrap, <key>, m). The Meta kernels (meta/cross_entropy_kernel.cpp) are
// the same entries over a backend whose sweeps do nothing (as xformers' kIsMeta): the checks,
// the in-place rules and the allocation are the real ones, written once here.
#pragma once

#include "common.h"

#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace arwrap::ops {

// Writing the gradient over the logits needs each element to be its own memory.
inline void check_cross_entropy_inplace(const at::Tensor& logits) {
  TORCH_CHECK_VALUE(logits.stride(-1) == 1,
                    "cross_entropy: inplace_backward needs logits with unit stride in the last dimension, got strides ",
                    logits.strides());
  at::assert_no_internal_overlap(logits);  // rows sharing memory would read gradients written by others
}

template <typename Backend>
struct CrossEntropyEntries {
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& logits, const at::Tensor& target,
                                                    int64_t ignore_index, int64_t reduction, double label_smoothing,
                                                    double z_loss_weight) {
    check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
    const Reduction red = to_reduction(reduction);
    auto out = alloc_cross_entropy_outputs(logits, target, red);
    Backend::forward(logits, target, ignore_index, red, label_smoothing, z_loss_weight, out.loss, out.lse, nullptr);
    return {out.loss, out.lse};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_grad(const at::Tensor& logits,
                                                                     const at::Tensor& target, int64_t ignore_index,
                                                                     int64_t reduction, double label_smoothing,
                                                                     double z_loss_weight) {
    check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
    const Reduction red = to_reduction(reduction);
    auto out = alloc_cross_entropy_outputs(logits, target, red);
    at::Tensor grad = Backend::empty_grad(logits);  // contiguous
    Backend::forward(logits, target, ignore_index, red, label_smoothing, z_loss_weight, out.loss, out.lse, &grad);
    return {out.loss, out.lse, grad};
  }

  static std::tuple<at::Tensor, at::Tensor> forward_grad_inplace(const at::Tensor& logits, const at::Tensor& target,
                                                                 int64_t ignore_index, int64_t reduction,
                                                                 double label_smoothing, double z_loss_weight) {
    check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
    check_cross_entropy_inplace(logits);
    const Reduction red = to_reduction(reduction);
    auto out = alloc_cross_entropy_outputs(logits, target, red);
    Backend::forward(logits, target, ignore_index, red, label_smoothing, z_loss_weight, out.loss, out.lse, &logits);
    return {out.loss, out.lse};
  }

  static at::Tensor backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                             const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                             int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight) {
    check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
    check_cross_entropy_backward_args(grad_loss, grad_lse, logits, target, lse, to_reduction(reduction));
    at::Tensor grad = Backend::empty_grad(logits);
    Backend::backward(grad_loss, grad_lse, logits, target, lse, ignore_index, to_reduction(reduction),
                      label_smoothing, z_loss_weight, grad);
    return grad;
  }

  static void backward_inplace(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                               const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                               int64_t ignore_index, int64_t reduction, double label_smoothing,
                               double z_loss_weight) {
    check_cross_entropy_args(logits, target, label_smoothing, z_loss_weight);
    check_cross_entropy_backward_args(grad_loss, grad_lse, logits, target, lse, to_reduction(reduction));
    check_cross_entropy_inplace(logits);
    Backend::backward(grad_loss, grad_lse, logits, target, lse, ignore_index, to_reduction(reduction),
                      label_smoothing, z_loss_weight, logits);
  }
};

template <typename Backend>
void register_cross_entropy_kernels(torch::Library& m) {
  using E = CrossEntropyEntries<Backend>;
  m.impl("cross_entropy_forward", &E::forward);
  m.impl("cross_entropy_forward_grad", &E::forward_grad);
  m.impl("cross_entropy_forward_grad_", &E::forward_grad_inplace);
  m.impl("cross_entropy_backward", &E::backward);
  m.impl("cross_entropy_backward_", &E::backward_inplace);
}

}  // namespace arwrap::ops
