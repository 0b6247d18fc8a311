// cross_entropy: logits (..., V), target (...) -> (loss, lse), with label smoothing,
// z-loss and ignore_index; C++ autograd (autograd/cross_entropy_kernel.cpp).
//
// Its internal operators (what the autograd kernel dispatches to; each has CPU, CUDA
// and Meta kernels in cpu/, cuda/, meta/cross_entropy_kernel.*):
//   cross_entropy_forward        loss and lse
//   cross_entropy_forward_grad   loss, lse and dloss/dlogits for an upstream 1
//   cross_entropy_forward_grad_  same, the gradient written over the logits
//   cross_entropy_backward       dloss/dlogits from the saved lse
//   cross_entropy_backward_      same, written over the logits
//
// This file: the schemas, the typed entries (detail::), the kernel below autograd
// (CompositeExplicitAutograd: loss only) and the public C++ entries of <arwrap/ops.h>.
#include <arwrap/defaults.h>
#include <arwrap/ops.h>

#include "common.h"
#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace arwrap {
namespace ops {
namespace detail {

std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                 int64_t ignore_index, c10::string_view reduction,
                                                 double label_smoothing, double z_loss_weight, bool inplace_backward,
                                                 bool return_lse) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy);
  return op.call(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight, inplace_backward,
                 return_lse);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& logits, const at::Tensor& target,
                                                         int64_t ignore_index, int64_t reduction,
                                                         double label_smoothing, double z_loss_weight) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy_forward);
  return op.call(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_grad(const at::Tensor& logits,
                                                                          const at::Tensor& target,
                                                                          int64_t ignore_index, int64_t reduction,
                                                                          double label_smoothing,
                                                                          double z_loss_weight) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy_forward_grad);
  return op.call(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_grad_(const at::Tensor& logits, const at::Tensor& target,
                                                               int64_t ignore_index, int64_t reduction,
                                                               double label_smoothing, double z_loss_weight) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy_forward_grad_);
  return op.call(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight);
}

at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                  const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                  int64_t ignore_index, int64_t reduction, double label_smoothing,
                                  double z_loss_weight) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy_backward);
  return op.call(grad_loss, grad_lse, logits, target, lse, ignore_index, reduction, label_smoothing, z_loss_weight);
}

void cross_entropy_backward_(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                             const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                             int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight) {
  static const auto op = ARWRAP_TYPED_OP(cross_entropy_backward_);
  op.call(grad_loss, grad_lse, logits, target, lse, ignore_index, reduction, label_smoothing, z_loss_weight);
}

}  // namespace detail

namespace {

// Without autograd (inference mode, or below the autograd key): loss only.
std::tuple<at::Tensor, at::Tensor> cross_entropy_no_grad(const at::Tensor& logits, const at::Tensor& target,
                                                         int64_t ignore_index, c10::string_view reduction,
                                                         double label_smoothing, double z_loss_weight,
                                                         bool /*inplace_backward*/, bool /*return_lse*/) {
  return detail::cross_entropy_forward(logits, target, ignore_index, static_cast<int64_t>(parse_reduction(reduction)),
                                       label_smoothing, z_loss_weight);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  static const std::string schema =
      "cross_entropy(Tensor logits, Tensor target, int ignore_index=" + std::to_string(arwrap::defaults::ignore_index) +
      ", str reduction=\"mean\", float label_smoothing=0., float z_loss_weight=0., bool inplace_backward=False, "
      "bool return_lse=False) -> (Tensor loss, Tensor lse)";
  m.def(
      schema.c_str(),
      torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(cross_entropy_no_grad)));
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
}

}  // namespace ops

namespace {
std::tuple<at::Tensor, at::Tensor> call_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                      const CrossEntropyOptions& o, bool return_lse) {
  TORCH_CHECK_VALUE(logits.defined() && target.defined(), "cross_entropy: logits and target must be defined, got ",
                    logits.defined() ? "target" : "logits", " undefined");
  return ops::detail::cross_entropy(logits, target, o.ignore_index(), o.reduction(), o.label_smoothing(),
                                    o.z_loss_weight(), o.inplace_backward(), return_lse);
}
}  // namespace

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& target, const CrossEntropyOptions& options) {
  return std::get<0>(call_cross_entropy(logits, target, options, false));
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_with_lse(const at::Tensor& logits, const at::Tensor& target,
                                                          const CrossEntropyOptions& options) {
  return call_cross_entropy(logits, target, options, true);
}

}  // namespace arwrap
