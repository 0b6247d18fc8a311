// The operator schemas of the `arwrap` namespace, declared once.
//
// Public operators (stable, what Python, TorchScript and C++ call):
//   shift_tokens   token ids (b, n+1) -> (input, target, mask); keep_last keeps the
//                  last token in input and mask, as x-transformers 2.31 feeds its net
//   cross_entropy  logits (..., V), target (...) -> (loss, lse); C++ autograd
//   linear_cross_entropy  hidden (..., D), weight (V, D), bias (V)?, target (...)
//                  -> (loss, lse), without materialising the logits; C++ autograd
// Internal operators (what the autograd kernel of cross_entropy dispatches to;
// each has CPU, Meta and CUDA kernels):
//   cross_entropy_forward        loss and lse
//   cross_entropy_forward_grad   loss, lse and dloss/dlogits for an upstream 1
//   cross_entropy_forward_grad_  same, the gradient written over the logits
//   cross_entropy_backward       dloss/dlogits from the saved lse
//   cross_entropy_backward_      same, written over the logits
//   linear_cross_entropy_forward   loss, lse and (for an upstream 1) the gradients
//                                  selected by output_mask, in one sweep of row tiles
//   linear_cross_entropy_backward  the gradients for any upstream gradient
#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>

namespace arwrap::ops {
namespace {

// Without autograd (inference mode, or below the autograd key): loss only.
std::tuple<at::Tensor, at::Tensor> cross_entropy_no_grad(const at::Tensor& logits, const at::Tensor& target,
                                                         int64_t ignore_index, c10::string_view reduction,
                                                         double label_smoothing, double z_loss_weight,
                                                         bool /*inplace_backward*/, bool /*return_lse*/) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("arwrap::cross_entropy_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                 int64_t, double, double)>();
  return op.call(logits, target, ignore_index, static_cast<int64_t>(parse_reduction(reduction)), label_smoothing,
                 z_loss_weight);
}

}  // namespace

TORCH_LIBRARY(arwrap, m) {
  m.def(
      "shift_tokens(Tensor x, Tensor? lens=None, Tensor? noise=None, int ignore_index=-100, int pad_value=0, "
      "float mask_prob=0., int? mask_token_id=None, bool keep_last=False) -> (Tensor input, Tensor target, Tensor mask)");
  m.def(
      "cross_entropy(Tensor logits, Tensor target, int ignore_index=-100, str reduction=\"mean\", "
      "float label_smoothing=0., float z_loss_weight=0., bool inplace_backward=False, bool return_lse=False) "
      "-> (Tensor loss, Tensor lse)");
  m.def(
      "cross_entropy_forward(Tensor logits, Tensor target, int ignore_index, int reduction, "
      "float label_smoothing, float z_loss_weight) -> (Tensor loss, Tensor lse)");
  m.def(
      "cross_entropy_forward_grad(Tensor logits, Tensor target, int ignore_index, int reduction, "
      "float label_smoothing, float z_loss_weight) -> (Tensor loss, Tensor lse, Tensor grad_logits)");
  m.def(
      "cross_entropy_forward_grad_(Tensor(a!) logits, Tensor target, int ignore_index, int reduction, "
      "float label_smoothing, float z_loss_weight) -> (Tensor loss, Tensor lse)");
  m.def(
      "cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor logits, Tensor target, Tensor lse, "
      "int ignore_index, int reduction, float label_smoothing, float z_loss_weight) -> Tensor");
  m.def(
      "cross_entropy_backward_(Tensor grad_loss, Tensor? grad_lse, Tensor(a!) logits, Tensor target, Tensor lse, "
      "int ignore_index, int reduction, float label_smoothing, float z_loss_weight) -> ()");
  m.def(
      "linear_cross_entropy(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, int ignore_index=-100, "
      "str reduction=\"mean\", float label_smoothing=0., float z_loss_weight=0., bool return_lse=False) "
      "-> (Tensor loss, Tensor lse)");
  m.def(
      "linear_cross_entropy_forward(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, int ignore_index, "
      "int reduction, float label_smoothing, float z_loss_weight, bool[3] output_mask) "
      "-> (Tensor loss, Tensor lse, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor? grad_lse, Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor target, int ignore_index, int reduction, float label_smoothing, float z_loss_weight, "
      "bool[3] output_mask) -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
}

// linear_cross_entropy without autograd: loss and lse only.
std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_no_grad(const at::Tensor& hidden, const at::Tensor& weight,
                                                                const std::optional<at::Tensor>& bias,
                                                                const at::Tensor& target, int64_t ignore_index,
                                                                c10::string_view reduction, double label_smoothing,
                                                                double z_loss_weight, bool /*return_lse*/) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("arwrap::linear_cross_entropy_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
              int64_t, double, double, std::array<bool, 3>)>();
  auto out = op.call(hidden, weight, bias, target, ignore_index, static_cast<int64_t>(parse_reduction(reduction)),
                     label_smoothing, z_loss_weight, {false, false, false});
  return {std::get<0>(out), std::get<1>(out)};
}

TORCH_LIBRARY_IMPL(arwrap, CompositeExplicitAutograd, m) {
  m.impl("cross_entropy", &cross_entropy_no_grad);
  m.impl("linear_cross_entropy", &linear_cross_entropy_no_grad);
}

}  // namespace arwrap::ops
