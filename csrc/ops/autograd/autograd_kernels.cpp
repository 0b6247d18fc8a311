// Autograd kernels (C++ torch::autograd::Function), so that gradients work the
// same from Python, TorchScript, torch.compile and pure C++.
//
// cross_entropy picks one of two strategies in its forward:
//  * fused (reduction mean/sum, lse not returned, logits require grad): the
//    forward also computes dloss/dlogits for an upstream gradient of 1, reading
//    the logits once and writing the gradient once; backward only rescales it when
//    the upstream gradient is not 1 (scale_grad_, which reads it on the device: no
//    host sync on a GPU). With inplace_backward the gradient is written
//    over the logits (their version counter is bumped, so a node that saved them
//    fails loudly instead of computing with clobbered values).
//  * plain (reduction none, or lse returned): the forward saves lse; backward
//    reads the logits once and writes the gradient (over the logits with
//    inplace_backward).
// In-place writes are skipped (out-of-place instead, same results) when the
// logits are traced (fake or functional tensors, a dispatch mode is active), as
// under torch.compile, which plans its own buffers.
#include "../common.h"
#include "../tracing.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <array>

namespace arwrap::ops::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, int64_t, double,
                                                  double);
using FwdGradSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                  int64_t, double, double);
using BwdSig = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, int64_t, int64_t, double, double);
using BwdInplaceSig = void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, int64_t, double, double);

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}


class CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               int64_t ignore_index, c10::string_view reduction_str, double eps, double w,
                               bool inplace_backward, bool return_lse, bool needs_grad) {
    const Reduction reduction = parse_reduction(reduction_str);
    const auto red = static_cast<int64_t>(reduction);
    // in place only where each element is its own memory (not expanded or overlapping rows)
    const bool inplace = inplace_backward && logits.stride(-1) == 1 && has_real_data(logits) &&
                         provably_non_overlapping(logits);
    ctx->set_materialize_grads(false);
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = red;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["w"] = w;
    ctx->saved_data["inplace"] = inplace;

    at::AutoDispatchBelowADInplaceOrView guard;
    if (!needs_grad) {
      static auto fwd = op<FwdSig>("arwrap::cross_entropy_forward");
      auto [loss, lse] = fwd.call(logits, target, ignore_index, red, eps, w);
      ctx->mark_non_differentiable({lse});
      return {loss, lse};
    }
    if (reduction != Reduction::None && !return_lse) {
      ctx->saved_data["fused"] = true;
      at::Tensor loss, lse, grad;
      if (inplace) {
        static auto fwd = op<FwdSig>("arwrap::cross_entropy_forward_grad_");
        std::tie(loss, lse) = fwd.call(logits, target, ignore_index, red, eps, w);
        torch::autograd::impl::bump_version(logits);
        grad = logits;
      } else {
        static auto fwd = op<FwdGradSig>("arwrap::cross_entropy_forward_grad");
        std::tie(loss, lse, grad) = fwd.call(logits, target, ignore_index, red, eps, w);
      }
      ctx->save_for_backward({grad});
      ctx->mark_non_differentiable({lse});
      return {loss, lse};
    }
    ctx->saved_data["fused"] = false;
    static auto fwd = op<FwdSig>("arwrap::cross_entropy_forward");
    auto [loss, lse] = fwd.call(logits, target, ignore_index, red, eps, w);
    ctx->save_for_backward({logits, target, lse});
    if (!return_lse) ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_loss = grads[0];
    const at::Tensor& grad_lse = grads[1];
    const bool inplace = ctx->saved_data["inplace"].toBool();
    variable_list out(9);
    auto saved = ctx->get_saved_variables();

    if (ctx->saved_data["fused"].toBool()) {
      at::Tensor grad = saved[0];
      if (!grad_loss.defined()) return out;
      if (!has_real_data(grad) || !has_real_data(grad_loss)) {  // traced: out of place, no reads
        out[0] = at::mul(grad, grad_loss);
        return out;
      }
      if (!ctx->saved_data.count("scaled_by")) {
        // First backward: bring the buffer (ours, or the logits with inplace_backward) to the
        // upstream gradient in place. scale_grad_ reads it where it lives: no host sync on a
        // GPU, and no pass over the buffer when it is 1.
        using ScaleSig = void(const at::Tensor&, const at::Tensor&);
        static auto scale = op<ScaleSig>("arwrap::scale_grad_");
        {
          at::AutoDispatchBelowADInplaceOrView guard;
          scale.call(grad, grad_loss);
        }
        ctx->saved_data["scaled_by"] = grad_loss.detach().clone();
        out[0] = grad;
        return out;
      }
      // A second backward (retain_graph; rare, so one host read): out of place, from the
      // scale the buffer now carries. The logits' buffer of inplace_backward is refused
      // once rescaled: it may have been handed on and accumulated into.
      const double first = ctx->saved_data["scaled_by"].toTensor().item<double>();
      TORCH_CHECK(!inplace || first == 1.0,
                  "cross_entropy(inplace_backward=True): this graph's gradient buffer was already rescaled by an "
                  "earlier backward; run backward once, or use inplace_backward=False with retain_graph=True");
      TORCH_CHECK(first != 0.0, "cross_entropy: a second backward after one with a zero upstream gradient cannot "
                                "rescale the saved gradient");
      out[0] = first == 1.0 ? at::mul(grad, grad_loss) : at::mul(grad, at::div(grad_loss, at::Scalar(first)));
      return out;
    }

    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& logits = saved[0];
    const at::Tensor& target = saved[1];
    const at::Tensor& lse = saved[2];
    if (!grad_loss.defined() && !grad_lse.defined()) return out;
    const at::Tensor gl = grad_loss.defined()                          ? grad_loss
                          : ctx->saved_data["reduction"].toInt() == 0 ? at::zeros_like(lse)
                                                                      : at::zeros({}, lse.options());
    const auto ignore_index = ctx->saved_data["ignore_index"].toInt();
    const auto red = ctx->saved_data["reduction"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    const double w = ctx->saved_data["w"].toDouble();
    std::optional<at::Tensor> glse;
    if (grad_lse.defined()) glse = grad_lse;
    if (inplace && has_real_data(logits)) {
      static auto bwd = op<BwdInplaceSig>("arwrap::cross_entropy_backward_");
      bwd.call(gl, glse, logits, target, lse, ignore_index, red, eps, w);
      torch::autograd::impl::bump_version(logits);
      out[0] = logits;
    } else {
      static auto bwd = op<BwdSig>("arwrap::cross_entropy_backward");
      out[0] = bwd.call(gl, glse, logits, target, lse, ignore_index, red, eps, w);
    }
    return out;
  }
};

// linear_cross_entropy: with reduction mean/sum and lse not returned, the forward
// produces the gradients (for an upstream gradient of 1) in the same sweep over the
// row tiles, and backward rescales them; otherwise backward recomputes the tiles.
using LceFwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, int64_t, int64_t,
    double, double, std::array<bool, 3>);
using LceBwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, int64_t, int64_t, double, double, std::array<bool, 3>);

class LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& bias, const at::Tensor& target, int64_t ignore_index,
                               c10::string_view reduction_str, double eps, double w, bool return_lse,
                               std::array<bool, 3> need) {
    const Reduction reduction = parse_reduction(reduction_str);
    const auto red = static_cast<int64_t>(reduction);
    const bool any = need[0] || need[1] || need[2];
    // no bias is passed as an empty placeholder (an undefined tensor cannot be a Function input)
    const bool has_bias = bias.dim() == 1;
    std::optional<at::Tensor> b;
    if (has_bias) b = bias;
    ctx->set_materialize_grads(false);
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = red;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["w"] = w;
    ctx->saved_data["need"] = c10::List<bool>({need[0], need[1], need[2]});
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto fwd = op<LceFwdSig>("arwrap::linear_cross_entropy_forward");
    const bool fused = any && reduction != Reduction::None && !return_lse;
    auto [loss, lse, gh, gw, gb] = fwd.call(hidden, weight, b, target, ignore_index, red, eps, w,
                                            fused ? need : std::array<bool, 3>{false, false, false});
    ctx->saved_data["fused"] = fused;
    if (fused) {
      ctx->saved_data["applied"] = 1.0;  // the scale the saved gradients carry
      ctx->save_for_backward({gh, gw, gb});
    } else if (any) {
      ctx->save_for_backward({hidden, weight, bias, target});
    }
    if (!(return_lse && any)) ctx->mark_non_differentiable({lse});
    return {loss, lse};
  }

  // The fused gradients brought to a device-resident upstream gradient without reading it
  // on the host: in place on the first backward (scale_grad_: no pass when it is 1), out
  // of place from the scale they carry on a later one (retain_graph; one host read).
  static variable_list rescale_on_device(AutogradContext* ctx, const variable_list& saved, const at::Tensor& grad_loss,
                                         const c10::List<bool>& needl, variable_list& out) {
    const bool first_time = !ctx->saved_data.count("scaled_by");
    double first = 1.0;
    if (!first_time) {
      first = ctx->saved_data["scaled_by"].toTensor().item<double>();
      TORCH_CHECK(first != 0.0, "linear_cross_entropy: a second backward after one with a zero upstream "
                                "gradient cannot rescale the saved gradients");
    }
    using ScaleSig = void(const at::Tensor&, const at::Tensor&);
    static auto scale = op<ScaleSig>("arwrap::scale_grad_");
    for (int k = 0; k < 3; ++k) {
      if (!needl.get(k) || saved[k].numel() == 0) continue;
      if (first_time) {
        at::AutoDispatchBelowADInplaceOrView guard;
        scale.call(saved[k], grad_loss);
        out[k] = saved[k];
      } else {
        out[k] = first == 1.0 ? at::mul(saved[k], grad_loss) : at::mul(saved[k], at::div(grad_loss, at::Scalar(first)));
      }
    }
    if (first_time) ctx->saved_data["scaled_by"] = grad_loss.detach().clone();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad_loss = grads[0];
    const at::Tensor& grad_lse = grads[1];
    auto needl = ctx->saved_data["need"].toBoolList();
    variable_list out(10);
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["fused"].toBool()) {
      if (!grad_loss.defined()) return out;
      // Scale the saved gradients in place to the upstream gradient (they are ours);
      // a second backward (retain_graph) rescales from the scale they carry.
      const double applied = ctx->saved_data["applied"].toDouble();
      at::Tensor factor;
      double g = 0.0;
      const bool eager = grad_loss.is_cpu() && has_real_data(grad_loss);
      if (eager) g = grad_loss.item<double>();
      if (!eager && has_real_data(grad_loss)) return rescale_on_device(ctx, saved, grad_loss, needl, out);
      for (int k = 0; k < 3; ++k) {
        if (!needl.get(k) || saved[k].numel() == 0) continue;
        if (!eager) {
          out[k] = at::mul(saved[k], grad_loss);
        } else if (g == applied) {
          out[k] = saved[k];
        } else {
          TORCH_CHECK(applied != 0.0, "linear_cross_entropy: a second backward after one with a zero upstream "
                                      "gradient cannot rescale the saved gradients");
          at::AutoDispatchBelowADInplaceOrView guard;
          out[k] = saved[k].mul_(g / applied);
        }
      }
      if (eager) ctx->saved_data["applied"] = g;
      return out;
    }
    at::AutoDispatchBelowADInplaceOrView guard;
    const at::Tensor& hidden = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& bias = saved[2];
    const at::Tensor& target = saved[3];
    if (!grad_loss.defined() && !grad_lse.defined()) return out;
    const auto red = ctx->saved_data["reduction"].toInt();
    const auto ld = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const at::Tensor gl = grad_loss.defined() ? grad_loss
                          : red == 0          ? at::zeros(target.sizes(), hidden.options().dtype(ld))
                                              : at::zeros({}, hidden.options().dtype(ld));
    std::optional<at::Tensor> glse, b;
    if (grad_lse.defined()) glse = grad_lse;
    if (bias.dim() == 1) b = bias;
    static auto bwd = op<LceBwdSig>("arwrap::linear_cross_entropy_backward");
    auto [gh, gw, gb] = bwd.call(gl, glse, hidden, weight, b, target, ctx->saved_data["ignore_index"].toInt(), red,
                                 ctx->saved_data["eps"].toDouble(), ctx->saved_data["w"].toDouble(),
                                 {needl.get(0), needl.get(1), needl.get(2)});
    if (needl.get(0)) out[0] = gh;
    if (needl.get(1)) out[1] = gw;
    if (needl.get(2) && gb.numel() > 0) out[2] = gb;
    return out;
  }
};

std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_autograd(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, c10::string_view reduction, double label_smoothing,
    double z_loss_weight, bool return_lse) {
  // checked here too: below, a 0-dim placeholder stands for "no bias"
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const bool grad_mode = at::GradMode::is_enabled();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? *bias : at::empty({}, hidden.options());  // 0-dim placeholder: no bias
  std::array<bool, 3> need{grad_mode && hidden.requires_grad(), grad_mode && weight.requires_grad(),
                           grad_mode && has_bias && b.requires_grad()};
  auto outs = LinearCrossEntropyFunction::apply(hidden, weight, b, target, ignore_index, reduction, label_smoothing,
                                                z_loss_weight, return_lse, need);
  return {outs[0], outs[1]};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_autograd(const at::Tensor& logits, const at::Tensor& target,
                                                          int64_t ignore_index, c10::string_view reduction,
                                                          double label_smoothing, double z_loss_weight,
                                                          bool inplace_backward, bool return_lse) {
  const bool needs_grad = at::GradMode::is_enabled() && logits.requires_grad();
  auto outs = CrossEntropyFunction::apply(logits, target, ignore_index, reduction, label_smoothing, z_loss_weight,
                                          inplace_backward, return_lse, needs_grad);
  return {outs[0], outs[1]};
}

// shift_tokens has no differentiable output: run it below autograd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    int64_t ignore_index, int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  static auto shift = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("arwrap::shift_tokens", "")
                          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                              const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                              int64_t, int64_t, double, std::optional<int64_t>, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return shift.call(x, lens, noise, ignore_index, pad_value, mask_prob, mask_token_id, keep_last);
}


// attention_lse: saves q, k and the lse; the backward recomputes the scores in
// row blocks (arwrap::attention_lse_backward).
class AttentionLseFunction : public torch::autograd::Function<AttentionLseFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const std::optional<at::Tensor>& key_mask, double scale, bool causal) {
    using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, bool);
    static auto fwd = op<Sig>("arwrap::attention_lse");
    at::Tensor lse;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      lse = fwd.call(q, k, key_mask, scale, causal);
    }
    at::Tensor mask = key_mask.has_value() ? *key_mask : at::Tensor();
    ctx->save_for_backward({q, k, lse, mask});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["causal"] = causal;
    return lse;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const std::optional<at::Tensor>&, double, bool, const at::Tensor&);
    static auto bwd = op<Sig>("arwrap::attention_lse_backward");
    const auto saved = ctx->get_saved_variables();
    std::optional<at::Tensor> mask;
    if (saved[3].defined()) mask = saved[3];
    at::Tensor grad = grads[0].defined() ? grads[0] : at::zeros_like(saved[2]);
    auto [dq, dk] = bwd.call(grad.contiguous(), saved[0], saved[1], mask, ctx->saved_data["scale"].toDouble(),
                             ctx->saved_data["causal"].toBool(), saved[2]);
    return {dq, dk, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor attention_lse_autograd(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                  double scale, bool causal) {
  return AttentionLseFunction::apply(q, k, key_mask, scale, causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) {
  m.impl("attention_lse", &attention_lse_autograd);
  m.impl("cross_entropy", &cross_entropy_autograd);
  m.impl("linear_cross_entropy", &linear_cross_entropy_autograd);
  m.impl("shift_tokens", &shift_tokens_autograd);
  // The internal operators are the implementation of cross_entropy's forward and
  // backward: not differentiable themselves.
  for (const char* name : {"cross_entropy_forward", "cross_entropy_forward_grad", "cross_entropy_forward_grad_",
                           "cross_entropy_backward", "cross_entropy_backward_", "linear_cross_entropy_forward",
                           "linear_cross_entropy_backward", "attention_lse_backward"}) {
    m.impl(name, torch::CppFunction::makeFallthrough());
  }
}

}  // namespace arwrap::ops::autograd
