// Meta (shape-only) kernels of activation and its two backwards (activation_backward,
// activation_backward_recompute_; ../activation.cpp): the real kernels' checks and allocations, no data touched.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

at::Tensor activation_meta(const at::Tensor& f, bool glu, bool /*swish*/) {
  return alloc_activation_output(f, check_activation_args("activation", f, glu));
}

at::Tensor activation_backward_meta(const at::Tensor& grad, const at::Tensor& f, bool glu, bool /*swish*/) {
  check_activation_backward_args("activation_backward", grad, f, check_activation_args("activation_backward", f, glu));
  return at::empty(f.sizes(), f.options().memory_format(at::MemoryFormat::Contiguous));
}

at::Tensor activation_backward_recompute_meta(const at::Tensor& grad, const at::Tensor& f, bool glu, bool /*swish*/) {
  check_activation_backward_args("activation_backward_recompute_", grad, f,
                                 check_activation_args("activation_backward_recompute_", f, glu));
  return at::empty({f.size(-1)}, f.options().dtype(f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("activation", &activation_meta);
  m.impl("activation_backward", &activation_backward_meta);
  m.impl("activation_backward_recompute_", &activation_backward_recompute_meta);
}

}  // namespace arwrap::ops::meta
