// Autograd kernels of rotary and rotary_backward (../rotary.cpp): C++ torch::autograd::Functions
// that save only the tables. rotary's backward is rotary_backward (the rotation by -angle), whose
// own backward is rotary: both are linear in their tensor, so any order of derivative is exact.
// The tables are constants: one that requires grad is refused (its gradient is not computed).
#include "../detail.h"
#include "function.h"

namespace arwrap::ops::autograd {
namespace {

void check_constant_tables(const char* op, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK_VALUE(!cos.requires_grad() && !sin.requires_grad(), op,
                    ": cos and sin are constant tables and get no gradient; pass them without requires_grad");
}

// The rotation by +angle (kBackward false: rotary) or by -angle (true: rotary_backward); each one's
// backward is the other, applied to the incoming gradient with the saved tables.
template <bool kBackward>
class RotaryFunction : public torch::autograd::Function<RotaryFunction<kBackward>> {
 public:
  static at::Tensor rotate(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin, bool backward) {
    return backward ? detail::rotary_backward(t, cos, sin) : detail::rotary(t, cos, sin);
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = rotate(t, cos, sin, kBackward);
    }
    ctx->save_for_backward({cos, sin});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {rotate(grads[0], saved[0], saved[1], !kBackward), at::Tensor(), at::Tensor()};
  }
};

at::Tensor rotary_autograd(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  check_constant_tables("rotary", cos, sin);
  return RotaryFunction<false>::apply(t, cos, sin);
}

at::Tensor rotary_backward_autograd(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin) {
  check_constant_tables("rotary_backward", cos, sin);
  return RotaryFunction<true>::apply(grad, cos, sin);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("rotary", &rotary_autograd);
  m.impl("rotary_backward", &rotary_backward_autograd);
}

}  // namespace arwrap::ops::autograd
