// The C++ entry points of <arwrap/ops.h>: thin calls into the dispatcher.
#include <arwrap/ops.h>

#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randn.h>

namespace arwrap {

ShiftedTokens shift_tokens(const at::Tensor& x, const std::optional<at::Tensor>& lens,
                           const ShiftTokensOptions& options, std::optional<at::Generator> generator,
                           const std::optional<at::Tensor>& noise) {
  // the dispatcher needs a device: say which argument is missing before it does
  TORCH_CHECK_VALUE(x.defined(), "shift_tokens: x is undefined (expected int64 token ids (batch, seq_len + 1))");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("arwrap::shift_tokens", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                           int64_t, int64_t, double, std::optional<int64_t>, bool)>();
  std::optional<at::Tensor> draw = noise;
  if (options.mask_prob_ > 0.0 && !(draw.has_value() && draw->defined())) {
    TORCH_CHECK_VALUE(x.defined() && x.dim() == 2 && x.size(1) >= 2,
                      "shift_tokens: x must be 2-D token ids (batch, seq_len + 1) with seq_len + 1 >= 2");
    const int64_t m = options.keep_last_ ? x.size(1) : x.size(1) - 1;
    draw = at::randn({x.size(0), m}, generator, x.options().dtype(at::kFloat));
  }
  auto [input, target, mask] = op.call(x, lens, draw, options.ignore_index_, options.pad_value_, options.mask_prob_,
                                       options.mask_token_id_, options.keep_last_);
  ShiftedTokens out;
  out.input = input;
  out.target = target;
  if (options.mask_prob_ > 0.0) out.mask = mask;
  return out;
}

namespace {
std::tuple<at::Tensor, at::Tensor> call_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                      const CrossEntropyOptions& o, bool return_lse) {
  TORCH_CHECK_VALUE(logits.defined() && target.defined(), "cross_entropy: logits and target must be defined, got ",
                    logits.defined() ? "target" : "logits", " undefined");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("arwrap::cross_entropy", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                 c10::string_view, double, double, bool, bool)>();
  return op.call(logits, target, o.ignore_index_, o.reduction_, o.label_smoothing_, o.z_loss_weight_,
                 o.inplace_backward_, return_lse);
}
}  // namespace

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& target, const CrossEntropyOptions& options) {
  return std::get<0>(call_cross_entropy(logits, target, options, false));
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_with_lse(const at::Tensor& logits, const at::Tensor& target,
                                                          const CrossEntropyOptions& options) {
  return call_cross_entropy(logits, target, options, true);
}

namespace {
std::tuple<at::Tensor, at::Tensor> call_linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                                             const at::Tensor& target,
                                                             const std::optional<at::Tensor>& bias,
                                                             const LinearCrossEntropyOptions& o, bool return_lse) {
  TORCH_CHECK_VALUE(hidden.defined() && weight.defined() && target.defined(),
                    "linear_cross_entropy: hidden, weight and target must be defined, got ",
                    !hidden.defined() ? "hidden" : !weight.defined() ? "weight" : "target", " undefined");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("arwrap::linear_cross_entropy", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, const at::Tensor&,
                                                                 int64_t, c10::string_view, double, double, bool)>();
  return op.call(hidden, weight, bias, target, o.ignore_index_, o.reduction_, o.label_smoothing_, o.z_loss_weight_,
                 return_lse);
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

bool built_with_cuda() {
#ifdef ARWRAP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace arwrap
