// transformer_forward: x-transformers' TransformerWrapper(Decoder(...)).forward over a
// flat list of weights (the parameter table's order). One function serves the C++
// module, the Python module and TorchScript (through the model-level operators).
#include <arwrap/transformer.h>

#include "../ops/sync_checks.h"
#include "../ops/tracing.h"
#include "layers.h"

#include <ATen/ATen.h>

#include <cmath>

namespace arwrap {

NetOutputs transformer_forward(const TransformerWrapperOptions& o, at::TensorList weights, const NetInputs& in,
                               bool training, KVCache* cache) {
  const layers::Weights W = layers::unpack_weights(o, weights);
  const auto& d = o.attn_layers();
  const at::Tensor& tokens = in.tokens;
  TORCH_CHECK_VALUE(tokens.defined() && tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
                    "TransformerWrapper: tokens must be 2-D int64 (batch, seq_len), got ",
                    tokens.defined() ? c10::str(tokens.scalar_type(), " ", tokens.sizes()) : std::string("nothing"));
  TORCH_CHECK_VALUE(tokens.device() == W.token_emb.device(), "TransformerWrapper: tokens are on ", tokens.device(),
                    " but the weights on ", W.token_emb.device());
  const int64_t b = tokens.size(0), n = tokens.size(1), D = d.dim(), dh = d.attn_dim_head();
  // on a GPU at::embedding asserts on the device instead (ops/sync_checks.h)
  if (ops::has_real_data(tokens) && tokens.numel() > 0 && ops::host_checks(tokens)) {
    const auto [lo, hi] = at::aminmax(tokens);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < o.num_tokens(),
                      "TransformerWrapper: tokens must be in [0, num_tokens=", o.num_tokens(), "), got values in [",
                      lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
  }
  const int64_t offset = cache ? cache->offset + cache->length : 0;
  TORCH_CHECK_VALUE(!cache || (!in.prepend_embeds.defined() && !in.self_attn_kv_mask.defined() &&
                               !in.return_attn_z_loss && !in.return_next_embed_pred),
                    "TransformerWrapper: decoding with a key/value cache takes tokens only");

  // embeddings (+ absolute positions), prepend_embeds in front
  at::Tensor x = at::embedding(W.token_emb, tokens);
  if (o.use_abs_pos_emb()) {
    TORCH_CHECK_VALUE(offset + n <= o.max_seq_len(), "TransformerWrapper: sequence length ", offset + n,
                      " exceeds max_seq_len=", o.max_seq_len(), " of the absolute positional embedding");
    at::Tensor pos = at::arange(offset, offset + n, tokens.options());
    // left-padded prompts: positions count from each row's seq_start_pos (x-transformers' clamp at 0)
    if (in.seq_start_pos.defined()) pos = (pos.unsqueeze(0) - in.seq_start_pos.to(at::kLong).unsqueeze(1)).clamp_min(0);
    x = x + at::embedding(W.pos_emb, pos) * (1.0 / std::sqrt(static_cast<double>(D)));
  }
  int64_t p = 0;
  if (in.prepend_embeds.defined()) {
    const at::Tensor& pe = in.prepend_embeds;
    TORCH_CHECK_VALUE(pe.dim() == 3 && pe.size(0) == b && pe.size(2) == D,
                      "TransformerWrapper: prepend_embeds must be (batch=", b, ", prepend_len, dim=", D, "), got ",
                      pe.sizes());
    p = pe.size(1);
    x = at::cat({pe.to(x.scalar_type()), x}, 1);
  }
  const int64_t m = p + n;  // positions through the layers

  layers::AttentionContext ctx;
  if (in.self_attn_kv_mask.defined()) {
    const at::Tensor& km = in.self_attn_kv_mask;
    TORCH_CHECK_VALUE(km.scalar_type() == at::kBool && km.dim() == 2 && km.size(0) == b && km.size(1) == n,
                      "TransformerWrapper: self_attn_kv_mask must be bool (batch=", b, ", seq_len=", n, "), got ",
                      km.scalar_type(), " ", km.sizes());
    ctx.key_mask = p > 0 ? at::cat({at::ones({b, p}, km.options()), km}, 1) : km;
    const at::Tensor c = at::ones({m, m}, ctx.key_mask.options()).tril();
    ctx.sdpa_mask = c.unsqueeze(0).unsqueeze(0).logical_and(ctx.key_mask.unsqueeze(1).unsqueeze(1));  // (b, 1, m, m)
    ctx.causal = false;
    ctx.visible_keys = ctx.key_mask;
  }
  // Left-padded prompts (generate's prompt_lens): keys before seq_start_pos are masked with a large
  // finite negative, as x-transformers does, so a row that sees only padding stays finite.
  if (in.seq_start_pos.defined()) {
    TORCH_CHECK_VALUE(in.seq_start_pos.dim() == 1 && in.seq_start_pos.size(0) == b,
                      "TransformerWrapper: seq_start_pos must be (batch=", b, "), got ", in.seq_start_pos.sizes());
    const int64_t before = cache ? cache->length : 0, keys = before + m;
    const at::Tensor kept =
        at::arange(keys, tokens.options()).unsqueeze(0).ge(in.seq_start_pos.to(at::kLong).unsqueeze(1));
    at::Tensor allowed = at::ones({m, keys}, kept.options()).tril(before).unsqueeze(0).logical_and(kept.unsqueeze(1));
    if (ctx.key_mask.defined()) allowed = allowed.logical_and(ctx.key_mask.unsqueeze(1));
    ctx.visible_keys = ctx.key_mask.defined() ? kept.logical_and(ctx.key_mask) : kept;
    const double neg = x.scalar_type() == at::kHalf ? -65504.0 : -1e30;
    ctx.pad_bias = at::zeros(allowed.sizes(), x.options()).masked_fill(allowed.logical_not(), neg).unsqueeze(1);
  }
  const at::Tensor init_embeds = x;
  if (training && o.emb_dropout() > 0) x = at::dropout(x, o.emb_dropout(), true);
  ctx.rotary = layers::rotary_tables(o, offset, m, x);
  ctx.scale = d.attn_qk_norm() ? d.attn_qk_norm_scale() : 1.0 / std::sqrt(static_cast<double>(dh));
  ctx.dropout = training ? d.attn_dropout() : 0.0;
  if (cache && cache->k.empty()) {
    cache->k.resize(d.depth());
    cache->v.resize(d.depth());
  }

  // the pre-norm residual layers
  at::Tensor lse_sum;
  // checkpoint_layers: only where a backward will run (recording, something needs a gradient)
  bool recompute = false;
  if (d.checkpoint_layers() && !cache && at::GradMode::is_enabled()) {
    recompute = x.requires_grad();
    for (const at::Tensor& w : weights) recompute = recompute || w.requires_grad();
  }
  for (int64_t l = 0; l < d.depth(); ++l) {
    const auto& L = W.layers[l];
    at::Tensor lse;
    at::Tensor* want_lse = in.return_attn_z_loss ? &lse : nullptr;
    x = recompute ? layers::checkpointed_decoder_layer(x, L, d, ctx, training, want_lse)
                  : layers::decoder_layer(x, L, d, ctx, training, cache ? &cache->k[l] : nullptr,
                                          cache ? &cache->v[l] : nullptr, want_lse);
    if (lse.defined()) lse_sum = lse_sum.defined() ? lse_sum + lse : lse;
  }
  if (cache) cache->length += n;
  x = layers::norm(x, W.final_norm, d.use_rmsnorm(), d.norm_add_unit_offset());

  // the head and the auxiliary outputs
  NetOutputs out;
  if (in.return_embeddings) {
    out.embeddings = x;
  } else if (o.tie_embedding()) {
    out.logits = layers::project(x, W.token_emb) * (1.0 / std::sqrt(static_cast<double>(D)));
  } else {
    out.logits = layers::project(x, W.to_logits);
  }
  if (in.return_attn_z_loss) {
    out.attn_z_loss = lse_sum.square().sum(1).mean() * o.attn_z_loss_weight();
  }
  if (in.return_next_embed_pred) {
    TORCH_CHECK_VALUE(o.add_continuous_pred_head(),
                      "TransformerWrapper: return_next_embed_pred needs add_continuous_pred_head=True");
    out.next_embed_pred = layers::project(at::silu(layers::project(x, W.next0)), W.next2);
    out.init_embeds = init_embeds;
  }
  return out;
}

}  // namespace arwrap
