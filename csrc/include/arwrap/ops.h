// Public C++ entry points of the arwrap operators.
//
// Each function here calls the dispatcher (torch::ops arwrap::*), so the same
// kernels serve Python, TorchScript, torch.compile and pure C++ callers, and
// autograd works the same from all of them.
#pragma once

#include <arwrap/defaults.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

namespace arwrap {

// ---------------------------------------------------------------- shift_tokens

struct ShiftTokensOptions {
  TORCH_ARG(int64_t, ignore_index) = defaults::ignore_index;
  TORCH_ARG(int64_t, pad_value) = 0;
  TORCH_ARG(double, mask_prob) = 0.0;
  TORCH_ARG(std::optional<int64_t>, mask_token_id) = std::nullopt;
  // Keep the last token in input (and draw the mask over all n + 1 positions), as
  // x-transformers 2.31's wrapper feeds its net: input and mask are then (b, n + 1).
  TORCH_ARG(bool, keep_last) = false;
};

struct ShiftedTokens {
  at::Tensor input;   // (b, n): x[:, :-1], ignored positions set to pad_value (and
                      // masked positions set to mask_token_id when one is given)
  at::Tensor target;  // (b, n): x[:, 1:], positions at or past lens set to ignore_index
  at::Tensor mask;    // (b, n) bool, true = kept (x-transformers' self_attn_kv_mask);
                      // undefined when mask_prob == 0
};

// From token ids x (b, n + 1) and optional lens (b,), produce the input and target
// of AutoregressiveWrapper.forward. With mask_prob > 0, exactly
// min(int(n * mask_prob), n - 1) positions per row (never position 0) are masked;
// they are drawn as the top-k of a standard normal draw from `generator`
// (the default generator when none is given), or taken from `noise` (b, n), or
// (b, n + 1) with keep_last, when the caller injects the draw.
ShiftedTokens shift_tokens(
    const at::Tensor& x,
    const std::optional<at::Tensor>& lens = std::nullopt,
    const ShiftTokensOptions& options = {},
    std::optional<at::Generator> generator = std::nullopt,
    const std::optional<at::Tensor>& noise = std::nullopt);

// ---------------------------------------------------------------- cross_entropy

struct CrossEntropyOptions {
  TORCH_ARG(int64_t, ignore_index) = defaults::ignore_index;
  // "mean" (over non-ignored targets), "sum" or "none"
  TORCH_ARG(std::string, reduction) = "mean";
  TORCH_ARG(double, label_smoothing) = 0.0;
  TORCH_ARG(double, z_loss_weight) = 0.0;
  // Write the gradient over the logits buffer (the logits are clobbered when the
  // loss requires grad); peak memory is then one logits tensor plus O(rows).
  TORCH_ARG(bool, inplace_backward) = false;
};

// Cross-entropy of logits (..., V) against int64 targets (...), float32 loss.
// Rows whose target is ignore_index contribute nothing; if every target is
// ignored the mean is 0 with zero gradients (PyTorch gives NaN).
at::Tensor cross_entropy(
    const at::Tensor& logits,
    const at::Tensor& target,
    const CrossEntropyOptions& options = {});

// Same, also returning the per-row log-sum-exp (float32, shape of target),
// which is differentiable.
std::tuple<at::Tensor, at::Tensor> cross_entropy_with_lse(
    const at::Tensor& logits,
    const at::Tensor& target,
    const CrossEntropyOptions& options = {});

// ---------------------------------------------------------- linear_cross_entropy

struct LinearCrossEntropyOptions {
  TORCH_ARG(int64_t, ignore_index) = defaults::ignore_index;
  TORCH_ARG(std::string, reduction) = "mean";
  TORCH_ARG(double, label_smoothing) = 0.0;
  TORCH_ARG(double, z_loss_weight) = 0.0;
};

// cross_entropy(hidden @ weight.T + bias, target) without materialising the logits:
// hidden (..., D), weight (V, D), bias (V) or undefined, target (...) int64.
// Peak extra memory: the gradients plus one tile of rows.
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& target,
                                const std::optional<at::Tensor>& bias = std::nullopt,
                                const LinearCrossEntropyOptions& options = {});

// Same, also returning the per-row log-sum-exp (differentiable).
std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_with_lse(
    const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& target,
    const std::optional<at::Tensor>& bias = std::nullopt, const LinearCrossEntropyOptions& options = {});

// ---------------------------------------------------------------- attention_lse

struct AttentionLseOptions {
  // Keys each query may see: (batch, keys) bool, true = visible; none: all keys.
  TORCH_ARG(std::optional<at::Tensor>, key_mask) = std::nullopt;
  // Score scale; none: dim_head ** -0.5.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  // Row i sees keys j <= i + (keys - queries).
  TORCH_ARG(bool, causal) = false;
};

// The log-sum-exp of every attention row, lse[b, h, i] = log sum_j exp(scale q_i . k_j)
// over the keys row i may see, for q (b, h, nq, dh) and k (b, h, nk, dh), nq <= nk:
// float32 (float64 for float64 inputs), differentiable in q and k, computed in blocks
// of rows (never the full (nq, nk) scores). x-transformers' attention z-loss is the
// mean square of its sum over layers.
at::Tensor attention_lse(const at::Tensor& q, const at::Tensor& k, const AttentionLseOptions& options = {});

// -------------------------------------------------------------------- attention

struct AttentionOptions {
  // Keys each query may see: (batch, keys) bool, true = visible; none: all keys.
  TORCH_ARG(std::optional<at::Tensor>, key_mask) = std::nullopt;
  // Score scale; none: dim_head ** -0.5.
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
  // Row i sees keys j <= i + (keys - queries): the training step and a cache prefill alike.
  TORCH_ARG(bool, causal) = true;
};

// Scaled dot-product attention, q (b, h, m, dh), k and v (b, h, n, dh), m <= n; float32,
// bfloat16 (fused flash-style kernel on the CPU: float32 statistics and accumulation) or
// float64 (reference path). Differentiable in q, k and v. A row that sees no key gives 0.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options = {});

// Same, also returning each row's log-sum-exp (b, h, m) in float32 (float64 for float64
// inputs), differentiable: the attention z-loss reads it from this one pass.
std::tuple<at::Tensor, at::Tensor> attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const AttentionOptions& options = {});

// True when libarwrap was built with its CUDA kernels.
bool built_with_cuda();

}  // namespace arwrap
