// Meta (shape-only) kernels of norm and norm_backward (../norm.cpp): the real kernels' checks and
// allocation, no data touched.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

at::Tensor norm_meta(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                     std::optional<at::ScalarType> dtype) {
  return alloc_norm_output(x, check_norm_args("norm", x, gamma, dtype));
}

std::tuple<at::Tensor, at::Tensor> norm_backward_meta(const at::Tensor& grad, const at::Tensor& x,
                                                      const at::Tensor& gamma, bool rms, bool unit_offset) {
  check_norm_backward_args("norm_backward", grad, x, gamma);
  return alloc_norm_grads(x, gamma);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("norm", &norm_meta);
  m.impl("norm_backward", &norm_backward_meta);
}

}  // namespace arwrap::ops::meta
