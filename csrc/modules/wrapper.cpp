// arwrap::ARWrapper: AutoregressiveWrapper.forward of x-transformers 2.31.10, in C++.
#include <arwrap/wrapper.h>
#include <arwrap/autoregressive_loss.h>

#include <ATen/ATen.h>

#include "../ops/sync_checks.h"
#include "../ops/tracing.h"

namespace arwrap {

ARWrapperImpl::ARWrapperImpl(std::shared_ptr<Net> net, ARWrapperOptions options_)
    : options(std::move(options_)), net_(std::move(net)) {
  TORCH_CHECK_VALUE(net_ != nullptr, "ARWrapper: net must not be null");
  options.validate();
}

void ARWrapperOptions::validate() const {
  TORCH_CHECK_VALUE(std::isfinite(mask_prob()) && mask_prob() >= 0.0 && mask_prob() < 1.0,
                    "ARWrapper: mask_prob must be in [0, 1), got ", mask_prob());
  TORCH_CHECK_VALUE(std::isfinite(next_embed_loss_weight()), "ARWrapper: next_embed_loss_weight must be finite, got ",
                    next_embed_loss_weight());
  TORCH_CHECK_VALUE(std::isfinite(looped_loss_threshold_exit()),
                    "ARWrapper: looped_loss_threshold_exit must be finite, got ", looped_loss_threshold_exit());
  TORCH_CHECK_VALUE(std::isfinite(looped_loss_slope()), "ARWrapper: looped_loss_slope must be finite, got ",
                    looped_loss_slope());
  TORCH_CHECK_VALUE(std::isfinite(looped_exit_loss_weight()), "ARWrapper: looped_exit_loss_weight must be finite, got ",
                    looped_exit_loss_weight());
}

std::vector<OptionField> wrapper_fields() {
  const ARWrapperOptions d;
  return {
      {"ignore_index", "int", option_literal(d.ignore_index())},
      {"pad_value", "int", option_literal(d.pad_value())},
      {"mask_prob", "float", option_literal(d.mask_prob())},
      {"mask_token_id", "int?", option_literal(d.mask_token_id())},
      {"add_attn_z_loss", "bool", option_literal(d.add_attn_z_loss())},
      {"next_embed_loss_weight", "float", option_literal(d.next_embed_loss_weight())},
      {"looped_loss_threshold_exit", "float", option_literal(d.looped_loss_threshold_exit())},
      {"looped_loss_slope", "float", option_literal(d.looped_loss_slope())},
      {"looped_exit_loss_weight", "float", option_literal(d.looped_exit_loss_weight())},
      {"fused_head", "bool", option_literal(d.fused_head())},
  };
}

ARWrapperImpl::ARWrapperImpl(std::shared_ptr<Net> net, std::shared_ptr<torch::nn::Module> net_module,
                             ARWrapperOptions options_)
    : ARWrapperImpl(std::move(net), std::move(options_)) {
  TORCH_CHECK_VALUE(net_module != nullptr, "ARWrapper: net_module must not be null");
  register_module("net", std::move(net_module));
  net_is_submodule_ = true;
}

std::vector<at::Tensor> ARWrapperImpl::trainable_parameters() const {
  std::vector<at::Tensor> out = parameters();
  if (net_is_submodule_) return out;  // parameters() holds the net's already
  for (auto& p : net_->parameters()) out.push_back(p);
  return out;
}

namespace {

// Token ids inside lens (other than ignore_index) must index the net's vocabulary.
void check_vocabulary(const at::Tensor& x, const std::optional<at::Tensor>& lens, int64_t ignore_index, int64_t V) {
  at::Tensor valid = x.ne(ignore_index);
  if (lens.has_value() && lens->defined() && lens->dim() == 1 && lens->size(0) == x.size(0)) {
    valid = valid.logical_and(at::arange(x.size(1), x.options()).unsqueeze(0).lt(lens->to(at::kLong).unsqueeze(1)));
  }
  const at::Tensor bad = valid.logical_and(x.ge(V));
  if (bad.any().item<bool>()) {
    const at::Tensor where = bad.nonzero()[0].cpu();
    const int64_t i = where[0].item<int64_t>(), j = where[1].item<int64_t>();
    TORCH_CHECK_INDEX(false, "ARWrapper: x holds token id ", x[i][j].item<int64_t>(), " at x[", i, ", ", j,
                      "], outside the net's vocabulary [0, ", V, ")");
  }
}

}  // namespace

namespace {

void check_tokens(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() == 2,
                    "ARWrapper: x must be 2-D token ids (batch, seq_len + 1), got ",
                    x.defined() ? std::to_string(x.dim()) + "-D" : std::string("undefined"),
                    x.defined() ? " with shape " + c10::str(x.sizes()) : std::string());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kLong, "ARWrapper: x must be int64 (torch.long) token ids, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) >= 2, "ARWrapper: x must have seq_len + 1 >= 2 tokens per row, got shape ", x.sizes());
}

// Token ids and mask_token_id inside the net's vocabulary, where it is known.
void check_against_vocabulary(const Net& net, const at::Tensor& x, const ARForwardArgs& args,
                              const ARWrapperOptions& o) {
  const auto V = net.num_tokens();
  if (!V) return;
  // on a GPU the embedding lookup asserts on the device instead (ops/sync_checks.h)
  if (ops::has_real_data(x) && ops::host_checks(x)) check_vocabulary(x, args.lens(), o.ignore_index(), *V);
  if (o.mask_token_id().has_value()) {
    TORCH_CHECK_INDEX(*o.mask_token_id() < *V, "ARWrapper: mask_token_id=", *o.mask_token_id(),
                      " is outside the net's vocabulary [0, ", *V, ")");
  }
}

// The net gave what the step asked for.
void check_net_outputs(const NetOutputs& out, const NetInputs& in, bool fused, int64_t b, int64_t p) {
  const int64_t m = in.tokens.size(1);
  const at::Tensor& main = fused ? out.embeddings : out.logits;
  TORCH_CHECK(main.defined() && main.dim() == 3 && main.size(0) == b && main.size(1) == p + m,
              "ARWrapper: the net must return ", fused ? "embeddings" : "logits", " of shape (batch=", b,
              ", prepend_len + seq_len = ", p + m, fused ? ", dim" : ", num_tokens", "), got ",
              main.defined() ? c10::str(main.sizes()) : std::string("nothing"));
  TORCH_CHECK(!in.return_attn_z_loss || out.attn_z_loss.defined(),
              "ARWrapper: add_attn_z_loss=True, but the net returned no attn_z_loss");
  TORCH_CHECK(!in.return_next_embed_pred || (out.next_embed_pred.defined() && out.init_embeds.defined()),
              "ARWrapper: the net has a continuous prediction head but returned no next_embed_pred/init_embeds");
}

// The loss after the net: one implementation (autoregressive_loss.cpp) for this eager path
// and for the Python wrapper under torch.compile.
at::Tensor loss_after_net(const NetOutputs& out, const NetInputs& in, const StepInputs& step,
                          const std::optional<LinearHead>& head, bool output_is_log_prob, bool return_outputs,
                          const ARWrapperOptions& o) {
  AutoregressiveLossInputs li;
  li.output = head ? out.embeddings : out.logits;
  li.target = step.target;
  if (head) {
    li.head_weight = head->weight;
    li.head_bias = head->bias;
  }
  if (in.return_attn_z_loss) li.attn_z_loss = out.attn_z_loss;
  if (in.return_next_embed_pred) {
    li.next_embed_pred = out.next_embed_pred;
    li.init_embeds = out.init_embeds;
  }
  li.exit_logits = out.exit_logits;
  li.all_pred_logits = out.all_pred_logits;
  AutoregressiveLossOptions lo;
  // Without return_outputs nobody needs the logits after the loss: write the
  // gradient over them, so a training step holds one logits tensor, not three.
  lo.prepend_len(step.prepend_len).ignore_index(o.ignore_index()).output_is_log_prob(output_is_log_prob);
  lo.inplace_backward(!return_outputs).head_scale(head ? head->scale : 1.0);
  lo.next_embed_loss_weight(o.next_embed_loss_weight()).looped_loss_threshold_exit(o.looped_loss_threshold_exit());
  lo.looped_loss_slope(o.looped_loss_slope()).looped_exit_loss_weight(o.looped_exit_loss_weight());
  return autoregressive_loss(li, lo);
}

}  // namespace

StepInputs prepare_step(const at::Tensor& x, const ARForwardArgs& args, const ARWrapperOptions& o, bool full) {
  check_tokens(x);
  const int64_t b = x.size(0), n = x.size(1) - 1;
  ShiftTokensOptions so;
  so.ignore_index(o.ignore_index()).pad_value(o.pad_value()).mask_prob(o.mask_prob()).mask_token_id(o.mask_token_id());
  so.keep_last(true);  // the key mask is drawn over n + 1 positions, as x-transformers does
  ShiftedTokens s = shift_tokens(x, args.lens(), so, args.generator(), args.mask_noise());

  StepInputs step;
  step.target = s.target;
  // x-transformers feeds its net all n + 1 tokens. The last one predicts nothing, so the
  // loss is the same without it, and a net with max_seq_len = n works.
  step.net.tokens = full ? s.input : s.input.narrow(1, 0, n);
  if (s.mask.defined() && !o.mask_token_id().has_value()) {
    step.net.self_attn_kv_mask = full ? s.mask : s.mask.narrow(1, 0, n);
  }
  if (args.prepend_embeds().has_value() && args.prepend_embeds()->defined()) {
    const at::Tensor& pe = *args.prepend_embeds();
    TORCH_CHECK_VALUE(pe.dim() == 3 && pe.size(0) == b, "ARWrapper: prepend_embeds must be (batch=", b,
                      ", prepend_len, dim), got shape ", pe.sizes());
    step.net.prepend_embeds = pe;
    step.prepend_len = pe.size(1);
  }
  return step;
}

std::optional<LinearHead> fused_head_of(const Net& net, const ARWrapperOptions& o, bool return_outputs) {
  const bool want = o.fused_head() || (net.prefers_fused_head() && !net.add_continuous_pred_head());
  if (!want || return_outputs || net.output_is_log_prob()) return std::nullopt;
  return net.head();
}

AROutput ARWrapperImpl::forward(const at::Tensor& x, const ARForwardArgs& args) {
  const auto& o = options;
  check_tokens(x);
  check_against_vocabulary(*net_, x, args, o);
  const bool continuous = net_->add_continuous_pred_head();
  // the auxiliary losses are defined over all positions: with them, the net gets n + 1
  StepInputs step = prepare_step(x, args, o, /*full=*/o.add_attn_z_loss() || continuous);
  const std::optional<LinearHead> head = fused_head_of(*net_, o, args.return_outputs());

  NetInputs& in = step.net;
  in.return_attn_z_loss = o.add_attn_z_loss();
  in.return_next_embed_pred = continuous;
  in.return_embeddings = head.has_value();
  NetOutputs out = net_->forward(in);
  check_net_outputs(out, in, head.has_value(), x.size(0), step.prepend_len);

  AROutput r;
  r.loss = loss_after_net(out, in, step, head, net_->output_is_log_prob(), args.return_outputs(), o);
  if (args.return_outputs()) {
    // cut the prepended positions (and the last position when it was fed)
    r.logits = out.logits.narrow(1, step.prepend_len, x.size(1) - 1);
    r.cache = out.cache;
  }
  return r;
}

}  // namespace arwrap
