// linear_cross_entropy: hidden (..., D), weight (V, D), bias (V)?, target (...)
// -> (loss, lse) = cross_entropy(hidden @ weight.T + bias, target) without
// materialising the logits; C++ autograd (autograd/linear_cross_entropy_kernel.cpp).
//
// Its internal operators (CPU: cpu/linear_cross_entropy_kernel.cpp, a fused row sweep;
// CUDA: composite/linear_cross_entropy_kernel.cpp, the device-generic tile loop over the
// GEMMs (cuBLAS) and the cross-entropy operators; Meta: meta/linear_cross_entropy_kernel.cpp):
//   linear_cross_entropy_forward   loss, lse and (for an upstream 1) the gradients
//                                  selected by output_mask, in one sweep of row tiles
//   linear_cross_entropy_backward  the gradients for any upstream gradient
//   _linear_cross_entropy_{forward,backward}_generic  the CUDA kernels, registered for
//                                  every device so the tests run that code on the CPU
//
// This file: the schemas, the typed entries (detail::), the kernel below autograd
// (CompositeExplicitAutograd: loss and lse only) and the public C++ entries.
#include <arwrap/defaults.h>
#include <arwrap/ops.h>

#include "common.h"
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap {
namespace ops {
namespace detail {

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& target, int64_t ignore_index,
                                                        c10::string_view reduction, double label_smoothing,
                                                        double z_loss_weight, bool return_lse) {
  static const auto op = ARWRAP_TYPED_OP(linear_cross_entropy);
  return op.call(hidden, weight, bias, target, ignore_index, reduction, label_smoothing, z_loss_weight, return_lse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight,
    std::array<bool, 3> output_mask) {
  static const auto op = ARWRAP_TYPED_OP(linear_cross_entropy_forward);
  return op.call(hidden, weight, bias, target, ignore_index, reduction, label_smoothing, z_loss_weight, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double label_smoothing, double z_loss_weight, std::array<bool, 3> output_mask) {
  static const auto op = ARWRAP_TYPED_OP(linear_cross_entropy_backward);
  return op.call(grad_loss, grad_lse, hidden, weight, bias, target, ignore_index, reduction, label_smoothing,
                 z_loss_weight, output_mask);
}

}  // namespace detail

namespace {

// linear_cross_entropy without autograd: loss and lse only.
std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_no_grad(const at::Tensor& hidden, const at::Tensor& weight,
                                                                const std::optional<at::Tensor>& bias,
                                                                const at::Tensor& target, int64_t ignore_index,
                                                                c10::string_view reduction, double label_smoothing,
                                                                double z_loss_weight, bool /*return_lse*/) {
  auto out = detail::linear_cross_entropy_forward(hidden, weight, bias, target, ignore_index,
                                                  static_cast<int64_t>(parse_reduction(reduction)), label_smoothing,
                                                  z_loss_weight, {false, false, false});
  return {std::get<0>(out), std::get<1>(out)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  static const std::string schema =
      "linear_cross_entropy(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, int ignore_index=" +
      std::to_string(arwrap::defaults::ignore_index) +
      ", str reduction=\"mean\", float label_smoothing=0., float z_loss_weight=0., bool return_lse=False) "
      "-> (Tensor loss, Tensor lse)";
  m.def(
      schema.c_str(),
      torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(linear_cross_entropy_no_grad)));
  m.def(
      "linear_cross_entropy_forward(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, int ignore_index, "
      "int reduction, float label_smoothing, float z_loss_weight, bool[3] output_mask) "
      "-> (Tensor loss, Tensor lse, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor target, int ignore_index, int reduction, float label_smoothing, float z_loss_weight, "
      "bool[3] output_mask) -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "_linear_cross_entropy_forward_generic(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, "
      "int ignore_index, int reduction, float label_smoothing, float z_loss_weight, bool[3] output_mask) "
      "-> (Tensor loss, Tensor lse, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "_linear_cross_entropy_backward_generic(Tensor grad_loss, Tensor? grad_lse, Tensor hidden, Tensor weight, "
      "Tensor? bias, Tensor target, int ignore_index, int reduction, float label_smoothing, float z_loss_weight, "
      "bool[3] output_mask) -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
}

}  // namespace ops

namespace {
std::tuple<at::Tensor, at::Tensor> call_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                                             const at::Tensor& target,
                                                             const std::optional<at::Tensor>& bias,
                                                             const LinearCrossEntropyOptions& o, bool return_lse) {
  TORCH_CHECK_VALUE(hidden.defined() && weight.defined() && target.defined(),
                    "linear_cross_entropy: hidden, weight and target must be defined, got ",
                    !hidden.defined() ? "hidden" : !weight.defined() ? "weight" : "target", " undefined");
  return ops::detail::linear_cross_entropy(hidden, weight, bias, target, o.ignore_index(), o.reduction(),
                                           o.label_smoothing(), o.z_loss_weight(), return_lse);
}
}  // namespace

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& target,
                                const std::optional<at::Tensor>& bias, const LinearCrossEntropyOptions& options) {
  return std::get<0>(call_linear_cross_entropy(hidden, weight, target, bias, options, false));
}

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_with_lse(const at::Tensor& hidden, const at::Tensor& weight,
                                                                 const at::Tensor& target,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 const LinearCrossEntropyOptions& options) {
  return call_linear_cross_entropy(hidden, weight, target, bias, options, true);
}

}  // namespace arwrap
