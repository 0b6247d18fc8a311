// Autograd key of scale_grad_ (../scale_grad.cpp): an internal operator of the fused
// backwards (autograd/cross_entropy_kernel.cpp, autograd/linear_cross_entropy_kernel.cpp),
// called below autograd and not differentiable itself, so it falls through.
#include "function.h"

namespace arwrap::ops::autograd {

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) { fall_through(m, {"scale_grad_"}); }

}  // namespace arwrap::ops::autograd
