// Typed entries of every arwrap operator, the internal ones included: one dispatcher
// handle per operator, written once in the operator's own file (csrc/ops/<op>.cpp),
// with the C++ signature of its schema stated here once. Autograd kernels, operators
// that call other operators, and the modules call these, never a hand-typed
// findSchemaOrThrow(...).typed<...>. Each call goes through the dispatcher from the
// current dispatch key set (wrap it in at::AutoDispatchBelowADInplaceOrView to skip
// autograd), as torchvision's detail:: functions do.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace arwrap::ops::detail {

// ---- shift_tokens.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens(const at::Tensor& x, const std::optional<at::Tensor>& lens,
                                                            const std::optional<at::Tensor>& noise, int64_t ignore_index,
                                                            int64_t pad_value, double mask_prob,
                                                            std::optional<int64_t> mask_token_id, bool keep_last);

// ---- cross_entropy.cpp (reduction: "mean", "sum", "none" for the public operator;
// the Reduction code 0 none, 1 mean, 2 sum for the internal ones)
std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                                 int64_t ignore_index, c10::string_view reduction,
                                                 double label_smoothing, double z_loss_weight, bool inplace_backward,
                                                 bool return_lse);
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& logits, const at::Tensor& target,
                                                         int64_t ignore_index, int64_t reduction,
                                                         double label_smoothing, double z_loss_weight);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward_grad(const at::Tensor& logits,
                                                                          const at::Tensor& target,
                                                                          int64_t ignore_index, int64_t reduction,
                                                                          double label_smoothing,
                                                                          double z_loss_weight);
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_grad_(const at::Tensor& logits, const at::Tensor& target,
                                                               int64_t ignore_index, int64_t reduction,
                                                               double label_smoothing, double z_loss_weight);
at::Tensor cross_entropy_backward(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                                  const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                                  int64_t ignore_index, int64_t reduction, double label_smoothing,
                                  double z_loss_weight);
void cross_entropy_backward_(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse,
                             const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                             int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight);

// ---- linear_cross_entropy.cpp (output_mask: which of grad_hidden, grad_weight, grad_bias)
std::tuple<at::Tensor, at::Tensor> linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& target, int64_t ignore_index,
                                                        c10::string_view reduction, double label_smoothing,
                                                        double z_loss_weight, bool return_lse);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight,
    std::array<bool, 3> output_mask);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double label_smoothing, double z_loss_weight, std::array<bool, 3> output_mask);

// ---- attention_lse.cpp
at::Tensor attention_lse(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                         double scale, bool causal);
std::tuple<at::Tensor, at::Tensor> attention_lse_backward(const at::Tensor& grad, const at::Tensor& q,
                                                          const at::Tensor& k,
                                                          const std::optional<at::Tensor>& key_mask, double scale,
                                                          bool causal, const at::Tensor& lse);

// ---- attention.cpp (scale: none means dim_head ** -0.5; the backward takes it resolved)
std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const std::optional<at::Tensor>& key_mask, std::optional<double> scale,
                                             bool causal);
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double scale, bool causal);
// the same written over q, k and v (dq, dk, dv): their owner must need them no more
void attention_backward_(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
                         const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                         const std::optional<at::Tensor>& key_mask, double scale, bool causal);
// attention (out, lse) with autograd, whose backward (where the graph is not kept) writes the
// gradients over q, k and v: for a caller that hands them over, nothing else holding them
// (the native net's layer: csrc/modules/layers.cpp). autograd/attention_kernel.cpp.
std::tuple<at::Tensor, at::Tensor> attention_consuming(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const std::optional<at::Tensor>& key_mask,
                                                       std::optional<double> scale, bool causal);

// ---- activation.cpp (internal: GELU/SiLU or its GLU, the feed-forward's)
at::Tensor activation(const at::Tensor& f, bool glu, bool swish);
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish);
// grad := activation(f), f := d f (both in place; f's owner must need f no more); returns d f
// summed over its rows (float32, float64 for float64 f: the gradient of a bias added to f)
at::Tensor activation_backward_recompute_(const at::Tensor& grad, const at::Tensor& f, bool glu, bool swish);

// ---- rotary.cpp (internal: the rotary embedding of q and k; its backward is the rotation by -angle)
at::Tensor rotary(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor rotary_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin);

// ---- norm.cpp (internal: the native net's LayerNorm or RMSNorm times gamma, output in dtype
// (x's when none); the backward recomputes the row statistics from x)
at::Tensor norm(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                std::optional<at::ScalarType> dtype);
std::tuple<at::Tensor, at::Tensor> norm_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gamma,
                                                 bool rms, bool unit_offset);

// ---- scale_grad.cpp (internal: grad *= scale in place unless scale is 1, scale read
// where it lives; the fused backwards of cross_entropy and linear_cross_entropy)
void scale_grad_(const at::Tensor& grad, const at::Tensor& scale);

}  // namespace arwrap::ops::detail

// The one typed handle of an operator, for the definitions in csrc/ops/<op>.cpp (which
// include <ATen/core/dispatch/Dispatcher.h>): typed by the declaration above, so the
// signature is stated once. Use it to initialise a function-local static.
#define ARWRAP_TYPED_OP(name)                                               \
  (::c10::Dispatcher::singleton()                                           \
       .findSchemaOrThrow("arwrap::" #name, "")                             \
       .typed<decltype(::arwrap::ops::detail::name)>())
