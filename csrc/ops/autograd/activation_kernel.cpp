// Autograd kernel of activation (../activation.cpp): a C++ torch::autograd::Function that
// saves f only and calls arwrap::activation_backward. The backward operators are internal and
// fall through (a second derivative of the activation is not supported).
#include "../detail.h"
#include "function.h"

namespace arwrap::ops::autograd {
namespace {

class ActivationFunction : public torch::autograd::Function<ActivationFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& f, bool glu, bool swish) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = detail::activation(f, glu, swish);
    }
    ctx->save_for_backward({f});
    ctx->saved_data["glu"] = glu;
    ctx->saved_data["swish"] = swish;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor df = detail::activation_backward(grads[0], saved[0], ctx->saved_data["glu"].toBool(),
                                                      ctx->saved_data["swish"].toBool());
    return {df, at::Tensor(), at::Tensor()};
  }
};

at::Tensor activation_autograd(const at::Tensor& f, bool glu, bool swish) {
  return ActivationFunction::apply(f, glu, swish);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("activation", &activation_autograd);
  fall_through(m, {"activation_backward", "activation_backward_recompute_"});
}

}  // namespace arwrap::ops::autograd
