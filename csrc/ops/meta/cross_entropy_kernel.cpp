// Meta (shape-only) kernel of cross_entropy: the very entries of the real kernels
// (../cross_entropy_entries.h: checks, in-place rules, output allocation) over row sweeps
// that do nothing, as xformers' kernels take kIsMeta and skip only the launch. It makes the
// operator work with fake tensors, torch.compile and torch.export.
#include "../cross_entropy_entries.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

struct MetaRows {
  static at::Tensor empty_grad(const at::Tensor& logits) { return at::empty(logits.sizes(), logits.options()); }
  static void forward(const at::Tensor& /*logits*/, const at::Tensor& /*target*/, int64_t /*ignore_index*/,
                      Reduction /*reduction*/, double /*label_smoothing*/, double /*z_loss_weight*/,
                      const at::Tensor& /*loss*/, const at::Tensor& /*lse*/, const at::Tensor* /*grad*/) {}
  static void backward(const at::Tensor& /*grad_loss*/, const std::optional<at::Tensor>& /*grad_lse*/,
                       const at::Tensor& /*logits*/, const at::Tensor& /*target*/, const at::Tensor& /*lse*/,
                       int64_t /*ignore_index*/, Reduction /*reduction*/, double /*label_smoothing*/,
                       double /*z_loss_weight*/, const at::Tensor& /*grad*/) {}
};

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) { register_cross_entropy_kernels<MetaRows>(m); }

}  // namespace arwrap::ops::meta
