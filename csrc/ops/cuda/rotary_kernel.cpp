// CUDA kernels of rotary and rotary_backward (../rotary.cpp): the ATen composition
// (../rotary_math.h), which runs ATen's own CUDA element-wise kernels, written into the layout
// the Meta kernel gives (alloc_rotary_output); no kernel of ours. A .cpp: it composes dispatched
// operators, so it is compiled in every build. It has not yet run on a GPU
// (tests/ops/test_rotary.py's CUDA cases, marked cuda, skip without one).
#include "../common.h"
#include "../rotary_math.h"

#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

at::Tensor rotary_cuda(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary", t, cos, sin);
  return alloc_rotary_output(t).copy_(math::rotary(t, cos, sin));
}

at::Tensor rotary_backward_cuda(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  check_rotary_args("rotary_backward", grad, cos, sin);
  return alloc_rotary_output(grad).copy_(math::rotary_backward(grad, cos, sin));
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("rotary", &rotary_cuda);
  m.impl("rotary_backward", &rotary_backward_cuda);
}

}  // namespace arwrap::ops::cuda
