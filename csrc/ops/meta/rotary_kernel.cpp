// Meta (shape-only) kernels of rotary and rotary_backward (../rotary.cpp): the real kernels'
// checks and allocation (t's layout where its last dimension is contiguous), no data touched.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

at::Tensor rotary_meta(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary", t, cos, sin);
  return alloc_rotary_output(t);
}

at::Tensor rotary_backward_meta(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary_backward", grad, cos, sin);
  return alloc_rotary_output(grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("rotary", &rotary_meta);
  m.impl("rotary_backward", &rotary_backward_meta);
}

}  // namespace arwrap::ops::meta
