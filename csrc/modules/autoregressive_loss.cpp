// arwrap::autoregressive_loss (see <arwrap/autoregressive_loss.h>): the wrapper's loss after
// the net, and torch.ops.arwrap.autoregressive_loss, its operator (CompositeImplicitAutograd:
// autograd and torch.compile go through the ATen and arwrap operators it calls).
//
// The looped loss is x-transformers 2.31.10's (AutoregressiveWrapper.forward, `if self.net.looped`):
//   losses[b, l, i]  = CE(all_pred_logits[b, l, i], target[b, i])           per loop l
//   exit_target      = sigmoid(slope * (losses[:, l+1] - losses[:, l] + threshold))   (no grad)
//   exit_loss        = mean over scored (b, l < L-1, i) of BCE(exit_logits[:, l], exit_target)
//   exit_probs[:, l] = sigmoid(e_l) * prod_{j<l} sigmoid(-e_j), the last loop taking the rest (no grad)
//   loss             = sum(losses * exit_probs) / count(scored, all loops) + exit_loss_weight * exit_loss
#include <arwrap/autoregressive_loss.h>
#include <arwrap/ops.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ops/sync_checks.h"
#include "../ops/tracing.h"

namespace arwrap {
namespace {

// F.nll_loss over log-probabilities (..., V) with ignore_index, reduction none; float32.
at::Tensor nll_loss_none(const at::Tensor& logp, const at::Tensor& target, int64_t ignore_index) {
  const at::Tensor valid = target.ne(ignore_index);
  const at::Tensor t = at::where(valid, target, at::zeros_like(target));
  const int64_t V = logp.size(-1);
  if (ops::has_real_data(target) && ops::host_checks(target)) {  // on a GPU gather asserts on the device
    const at::Tensor bad = valid.logical_and(target.lt(0).logical_or(target.ge(V)));
    TORCH_CHECK_INDEX(!bad.any().item<bool>(), "autoregressive_loss: target must be in [0, ", V,
                      ") or ignore_index");
  }
  const at::Tensor picked = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1).to(at::kFloat);
  return at::where(valid, -picked, at::zeros_like(picked));
}

at::Tensor masked_mean(const at::Tensor& t, const at::Tensor& mask) {
  return (t * mask).sum() / mask.sum().clamp_min(1);
}

at::Tensor looped_loss(const AutoregressiveLossInputs& in, const AutoregressiveLossOptions& o, int64_t n) {
  const int64_t p = o.prepend_len();
  TORCH_CHECK_VALUE(in.all_pred_logits.defined() && in.exit_logits.dim() == 3 && in.all_pred_logits.dim() == 4 &&
                        in.all_pred_logits.size(1) == in.exit_logits.size(1) &&
                        in.exit_logits.size(2) >= p + n && in.all_pred_logits.size(2) >= p + n,
                    "autoregressive_loss: a looped net must give exit_logits (batch, loops, positions) and "
                    "all_pred_logits (batch, loops, positions, num_tokens) with positions >= ", p + n, ", got ",
                    in.exit_logits.sizes(), " and ",
                    in.all_pred_logits.defined() ? c10::str(in.all_pred_logits.sizes()) : std::string("nothing"));
  const int64_t b = in.target.size(0), L = in.exit_logits.size(1);
  const at::Tensor exit = in.exit_logits.narrow(2, p, n);
  const at::Tensor pred = in.all_pred_logits.narrow(2, p, n);
  const at::Tensor targets = in.target.unsqueeze(1).expand({b, L, n}).contiguous();
  const at::Tensor losses =
      o.output_is_log_prob()
          ? nll_loss_none(pred, targets, o.ignore_index())
          : cross_entropy(pred, targets, CrossEntropyOptions().ignore_index(o.ignore_index()).reduction("none"));
  const at::Tensor scored = targets.ne(o.ignore_index());
  at::Tensor exit_target, exit_probs;
  {
    at::NoGradGuard no_grad;
    const at::Tensor l = losses.detach();
    const at::Tensor change = l.narrow(1, 1, L - 1) - l.narrow(1, 0, L - 1);
    exit_target = at::sigmoid((change + o.looped_loss_threshold_exit()) * o.looped_loss_slope());
    const at::Tensor e = exit.detach();
    const at::Tensor step_exit = at::log_sigmoid(e);
    const at::Tensor cont = at::log_sigmoid(-e);
    const at::Tensor cum_cont = at::constant_pad_nd(cont, {0, 0, 1, -1}, 0).cumsum(1);
    const at::Tensor step = at::constant_pad_nd(step_exit.narrow(1, 0, L - 1), {0, 0, 0, 1}, 0);  // last loop exits
    exit_probs = (step + cum_cont).exp();
  }
  const at::Tensor bce = at::binary_cross_entropy_with_logits(exit.narrow(1, 0, L - 1), exit_target.to(exit.dtype()),
                                                              {}, {}, at::Reduction::None);
  const at::Tensor exit_loss = masked_mean(bce, scored.narrow(1, 1, L - 1));
  const at::Tensor loss = masked_mean(losses * exit_probs.to(losses.dtype()), scored);
  return loss + exit_loss * o.looped_exit_loss_weight();
}

}  // namespace

namespace detail {

at::Tensor autoregressive_loss(const AutoregressiveLossInputs& in, const AutoregressiveLossOptions& o) {
  TORCH_CHECK_VALUE(in.target.defined() && in.target.dim() == 2, "autoregressive_loss: target must be (batch, n), got ",
                    in.target.defined() ? c10::str(in.target.sizes()) : std::string("nothing"));
  const int64_t b = in.target.size(0), n = in.target.size(1), p = o.prepend_len();
  TORCH_CHECK_VALUE(p >= 0, "autoregressive_loss: prepend_len must be >= 0, got ", p);
  TORCH_CHECK_VALUE(in.output.defined() && in.output.dim() == 3 && in.output.size(0) == b && in.output.size(1) >= p + n,
                    "autoregressive_loss: output must be (batch=", b, ", prepend_len + seq_len >= ", p + n,
                    ", num_tokens or dim), got ", in.output.defined() ? c10::str(in.output.sizes()) : "nothing");
  const at::Tensor out = in.output.narrow(1, p, n);

  at::Tensor loss;
  if (in.exit_logits.defined()) {
    loss = looped_loss(in, o, n);
  } else if (in.head_weight.defined()) {
    TORCH_CHECK_VALUE(!in.next_embed_pred.defined(),
                      "autoregressive_loss: a fused head does not support a continuous prediction head");
    const at::Tensor hidden = o.head_scale() != 1.0 ? out * o.head_scale() : out;
    std::optional<at::Tensor> bias;
    if (in.head_bias.defined()) bias = in.head_bias;
    loss = linear_cross_entropy(hidden, in.head_weight, in.target, bias,
                                LinearCrossEntropyOptions().ignore_index(o.ignore_index()));
  } else if (o.output_is_log_prob()) {
    loss = masked_mean(nll_loss_none(out, in.target, o.ignore_index()), in.target.ne(o.ignore_index()));
  } else {
    loss = cross_entropy(out, in.target,
                         CrossEntropyOptions().ignore_index(o.ignore_index()).inplace_backward(o.inplace_backward()));
  }
  if (in.attn_z_loss.defined()) loss = loss + in.attn_z_loss;
  if (in.next_embed_pred.defined()) {
    TORCH_CHECK_VALUE(in.init_embeds.defined() && in.init_embeds.size(1) >= p + n + 1 &&
                          in.next_embed_pred.size(1) >= p + n,
                      "autoregressive_loss: a continuous head needs next_embed_pred (batch, >= ", p + n,
                      ", dim) and init_embeds (batch, >= ", p + n + 1, ", dim)");
    const at::Tensor valid = in.target.ne(o.ignore_index()).unsqueeze(-1);
    const at::Tensor pred = in.next_embed_pred.narrow(1, p, n);
    const at::Tensor tgt = in.init_embeds.narrow(1, p + 1, n).detach();
    const at::Tensor l1 = (pred - tgt).abs();
    const at::Tensor denom = (valid.sum() * l1.size(-1)).clamp_min(1);
    const at::Tensor cont = at::where(valid, l1, at::zeros_like(l1)).sum() / denom;
    loss = loss + cont * o.next_embed_loss_weight();
  }
  return loss;
}

}  // namespace detail

namespace {

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

at::Tensor autoregressive_loss_op(const at::Tensor& output, const at::Tensor& target,
                                  const std::optional<at::Tensor>& head_weight,
                                  const std::optional<at::Tensor>& head_bias,
                                  const std::optional<at::Tensor>& attn_z_loss,
                                  const std::optional<at::Tensor>& next_embed_pred,
                                  const std::optional<at::Tensor>& init_embeds,
                                  const std::optional<at::Tensor>& exit_logits,
                                  const std::optional<at::Tensor>& all_pred_logits, int64_t prepend_len,
                                  int64_t ignore_index, bool output_is_log_prob, bool inplace_backward,
                                  double head_scale, double next_embed_loss_weight, double looped_loss_threshold_exit,
                                  double looped_loss_slope, double looped_exit_loss_weight) {
  AutoregressiveLossInputs in;
  in.output = output;
  in.target = target;
  in.head_weight = opt(head_weight);
  in.head_bias = opt(head_bias);
  in.attn_z_loss = opt(attn_z_loss);
  in.next_embed_pred = opt(next_embed_pred);
  in.init_embeds = opt(init_embeds);
  in.exit_logits = opt(exit_logits);
  in.all_pred_logits = opt(all_pred_logits);
  AutoregressiveLossOptions o;
  o.prepend_len(prepend_len).ignore_index(ignore_index).output_is_log_prob(output_is_log_prob);
  o.inplace_backward(inplace_backward).head_scale(head_scale).next_embed_loss_weight(next_embed_loss_weight);
  o.looped_loss_threshold_exit(looped_loss_threshold_exit).looped_loss_slope(looped_loss_slope);
  o.looped_exit_loss_weight(looped_exit_loss_weight);
  return detail::autoregressive_loss(in, o);
}

}  // namespace

// Called directly: the struct reaches the loss as it is. The operator above is the traced
// path's entry (the Python wrapper under torch.compile), which packs its arguments into the
// same struct.
at::Tensor autoregressive_loss(const AutoregressiveLossInputs& in, const AutoregressiveLossOptions& o) {
  return detail::autoregressive_loss(in, o);
}

std::vector<OptionField> autoregressive_loss_fields() {
  const AutoregressiveLossOptions d;
  return {
      {"prepend_len", "int", option_literal(d.prepend_len())},
      {"ignore_index", "int", option_literal(d.ignore_index())},
      {"output_is_log_prob", "bool", option_literal(d.output_is_log_prob())},
      {"inplace_backward", "bool", option_literal(d.inplace_backward())},
      {"head_scale", "float", option_literal(d.head_scale())},
      {"next_embed_loss_weight", "float", option_literal(d.next_embed_loss_weight())},
      {"looped_loss_threshold_exit", "float", option_literal(d.looped_loss_threshold_exit())},
      {"looped_loss_slope", "float", option_literal(d.looped_loss_slope())},
      {"looped_exit_loss_weight", "float", option_literal(d.looped_exit_loss_weight())},
  };
}

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  // the options' defaults from their table: written once, in AutoregressiveLossOptions
  std::string options;
  for (const auto& f : autoregressive_loss_fields()) options += ", " + f.type + " " + f.name + "=" + f.default_value;
  static const std::string schema =
      "autoregressive_loss(Tensor output, Tensor target, Tensor? head_weight=None, Tensor? head_bias=None, "
      "Tensor? attn_z_loss=None, Tensor? next_embed_pred=None, Tensor? init_embeds=None, Tensor? exit_logits=None, "
      "Tensor? all_pred_logits=None" + options + ") -> Tensor";
  m.def(schema.c_str(), TORCH_FN(autoregressive_loss_op));  // CompositeImplicitAutograd: autograd sees its parts
}

}  // namespace arwrap
