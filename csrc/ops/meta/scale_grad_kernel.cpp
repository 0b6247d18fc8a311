// Meta (shape-only) kernel of scale_grad_ (../scale_grad.cpp): the checks, nothing written.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

void scale_grad_meta(const at::Tensor& grad, const at::Tensor& scale) { check_scale_grad_args(grad, scale); }

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) { m.impl("scale_grad_", &scale_grad_meta); }

}  // namespace arwrap::ops::meta
