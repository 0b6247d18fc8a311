// Autograd kernel of norm (../norm.cpp): a C++ torch::autograd::Function that saves x and gamma
// (not the output, nor the row statistics: norm_backward recomputes them) and calls
// arwrap::norm_backward. When a graph is being made of the backward (create_graph), the backward
// is the ATen composition of the same formulas (../norm_math.h), which autograd differentiates
// again. norm_backward itself is internal and falls through.
#include "../detail.h"
#include "../norm_math.h"
#include "function.h"

namespace arwrap::ops::autograd {
namespace {

class NormFunction : public torch::autograd::Function<NormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gamma, bool rms,
                            bool unit_offset, std::optional<at::ScalarType> dtype) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = detail::norm(x, gamma, rms, unit_offset, dtype);
    }
    ctx->save_for_backward({x, gamma});
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["unit_offset"] = unit_offset;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool rms = ctx->saved_data["rms"].toBool(), unit_offset = ctx->saved_data["unit_offset"].toBool();
    at::Tensor dx, dgamma;
    if (at::GradMode::is_enabled()) {
      std::tie(dx, dgamma) = math::norm_backward(grads[0], saved[0], saved[1], rms, unit_offset);
    } else {
      std::tie(dx, dgamma) = detail::norm_backward(grads[0], saved[0], saved[1], rms, unit_offset);
    }
    return {dx, dgamma, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor norm_autograd(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                         std::optional<at::ScalarType> dtype) {
  return NormFunction::apply(x, gamma, rms, unit_offset, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("norm", &norm_autograd);
  fall_through(m, {"norm_backward"});
}

}  // namespace arwrap::ops::autograd
