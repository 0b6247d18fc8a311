// arwrap::autoregressive_loss: the loss of x-transformers 2.31.10's AutoregressiveWrapper.forward
// once the net has run, written once.
//
//   cut the prepended positions -> cross-entropy (or nll for log-probabilities, or the fused
//   linear cross-entropy over the final embeddings) -> + attention z-loss -> + next-embedding
//   L1 loss; for a looped net the per-loop losses weighted by the exit probabilities + the
//   exit-gate loss instead of the plain cross-entropy.
//
// ARWrapper's eager forward calls it, and so does the Python wrapper under torch.compile
// (torch.ops.arwrap.autoregressive_loss, CompositeImplicitAutograd: it traces into the ATen
// and arwrap operators it calls), so both give the same numbers.
#pragma once

#include <arwrap/defaults.h>
#include <arwrap/option_fields.h>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <vector>

namespace arwrap {

struct AutoregressiveLossOptions {
  TORCH_ARG(int64_t, prepend_len) = 0;  // positions of prepend_embeds at the front of the net's outputs
  TORCH_ARG(int64_t, ignore_index) = defaults::ignore_index;
  TORCH_ARG(bool, output_is_log_prob) = false;  // F.nll_loss instead of cross-entropy (mixture of softmaxes)
  // the cross-entropy writes its gradient over the logits (nobody reads them afterwards)
  TORCH_ARG(bool, inplace_backward) = false;
  TORCH_ARG(double, head_scale) = 1.0;  // fused head: logits = (head_scale * h) W^T + b
  TORCH_ARG(double, next_embed_loss_weight) = defaults::next_embed_loss_weight;
  TORCH_ARG(double, looped_loss_threshold_exit) = defaults::looped_loss_threshold_exit;
  TORCH_ARG(double, looped_loss_slope) = defaults::looped_loss_slope;
  TORCH_ARG(double, looped_exit_loss_weight) = defaults::looped_exit_loss_weight;
};

// AutoregressiveLossOptions' table (option_fields.h), in the operator schema's order.
std::vector<OptionField> autoregressive_loss_fields();

// The net's outputs, as x-transformers' TransformerWrapper returns them (p = prepend_len,
// m >= n positions fed; only the first n after the prepended ones are scored):
struct AutoregressiveLossInputs {
  at::Tensor output;           // (b, p + m, V) logits / log-probabilities, or (b, p + m, d) with head_weight
  at::Tensor target;           // (b, n) int64, ignore_index where nothing is scored
  at::Tensor head_weight;      // (V, d): fused head (output holds the final embeddings); else undefined
  at::Tensor head_bias;        // (V) or undefined
  at::Tensor attn_z_loss;      // scalar, added as is; or undefined
  at::Tensor next_embed_pred;  // (b, p + m, d) with init_embeds (b, p + m, d): continuous head
  at::Tensor init_embeds;
  at::Tensor exit_logits;      // (b, loops, p + m): looped net, with all_pred_logits
  at::Tensor all_pred_logits;  // (b, loops, p + m, V)
};

// The scalar loss (float32).
at::Tensor autoregressive_loss(const AutoregressiveLossInputs& inputs, const AutoregressiveLossOptions& options = {});

}  // namespace arwrap
