// The native net and the wrapper around it as operators, so Python modules and
// TorchScript programs reach the same C++ forward (transformer_forward, ARWrapperImpl)
// with their own parameters:
//
//   transformer_wrapper_forward(tokens, weights, config, training, ...)
//       -> (logits or embeddings, attn_z_loss, next_embed_pred, init_embeds)
//   autoregressive_wrapper_loss(x, weights, config, training, <wrapper options>, ...)
//       -> (loss, logits)   the whole training step's forward in one call
//
// weights: TransformerWrapperOptions::parameter_names() order; config: its to_string().
// Outputs that were not asked for are empty (0 elements). Both are
// CompositeImplicitAutograd: autograd flows through the ATen and arwrap operators
// they call (the fused linear cross-entropy, attention_lse, SDPA).
//
// The inference forward, for torch.export and AOTInductor (no autograd, eval mode):
//
//   transformer_wrapper_logits(tokens, weights, config, return_embeddings) -> logits or embeddings
//   transformer_wrapper_decode(tokens, weights, config, k_cache, v_cache, offset)
//       -> (logits, k_cache, v_cache)   one decoding step against the key/value cache
//
// A composite operator runs its C++ body on fake tensors, which reads concrete sizes and
// so specialises every dimension; these two have a real kernel (CompositeExplicitAutograd)
// and a Meta kernel that computes the output shapes from the configuration and the
// symbolic sizes, so an exported program keeps batch, sequence and cache length dynamic.
// The caches are every layer's keys (values) stacked, (depth, batch, heads, cached, dim_head)
// (cached may be 0: the prompt's step); offset (int64, 0-dim) is the absolute position of
// the first cached one (positions dropped from the front when the window slides).
#include <arwrap/transformer.h>
#include <arwrap/wrapper.h>

#include "../ops/common.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <mutex>
#include <unordered_map>

namespace arwrap {
namespace {

using ops::or_empty;

// Parsing is cheap but not free; configurations repeat, so keep them (a copy goes
// out, so clearing the table never leaves a caller with a dangling reference).
TransformerWrapperOptions parsed(const std::string& config) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<TransformerWrapperOptions>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(config);
  if (it == cache.end()) {
    auto o = std::make_unique<TransformerWrapperOptions>(TransformerWrapperOptions::parse(config));
    if (cache.size() > 64) cache.clear();
    it = cache.emplace(config, std::move(o)).first;
  }
  return *it->second;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> transformer_wrapper_forward(
    const at::Tensor& tokens, at::TensorList weights, c10::string_view config, bool training,
    const std::optional<at::Tensor>& prepend_embeds, const std::optional<at::Tensor>& self_attn_kv_mask,
    bool return_embeddings, bool return_attn_z_loss, bool return_next_embed_pred) {
  const TransformerWrapperOptions o = parsed(std::string(config));
  NetInputs in;
  in.tokens = tokens;
  if (prepend_embeds.has_value()) in.prepend_embeds = *prepend_embeds;
  if (self_attn_kv_mask.has_value()) in.self_attn_kv_mask = *self_attn_kv_mask;
  in.return_embeddings = return_embeddings;
  in.return_attn_z_loss = return_attn_z_loss;
  in.return_next_embed_pred = return_next_embed_pred;
  NetOutputs out = transformer_forward(o, weights, in, training);
  const at::Tensor& main = return_embeddings ? out.embeddings : out.logits;
  return {main, or_empty(out.attn_z_loss, main), or_empty(out.next_embed_pred, main),
          or_empty(out.init_embeds, main)};
}

std::tuple<at::Tensor, at::Tensor> autoregressive_wrapper_loss(
    const at::Tensor& x, at::TensorList weights, c10::string_view config, bool training, int64_t ignore_index,
    int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id, bool add_attn_z_loss,
    double next_embed_loss_weight, const std::optional<at::Tensor>& lens,
    const std::optional<at::Tensor>& prepend_embeds, const std::optional<at::Tensor>& mask_noise,
    std::optional<at::Generator> generator, bool return_outputs) {
  const TransformerWrapperOptions o = parsed(std::string(config));
  std::vector<at::Tensor> w(weights.begin(), weights.end());
  auto net = std::make_shared<NativeNet>(
      o, [w] { return w; }, [training] { return training; });
  ARWrapperImpl wrapper(net, ARWrapperOptions()
                                 .ignore_index(ignore_index)
                                 .pad_value(pad_value)
                                 .mask_prob(mask_prob)
                                 .mask_token_id(mask_token_id)
                                 .add_attn_z_loss(add_attn_z_loss)
                                 .next_embed_loss_weight(next_embed_loss_weight));
  ARForwardArgs args;
  args.lens(lens).prepend_embeds(prepend_embeds).mask_noise(mask_noise).generator(generator);
  args.return_outputs(return_outputs);
  AROutput out = wrapper.forward(x, args);
  return {out.loss, or_empty(out.logits, out.loss)};
}

// The step before the net (prepare_step, wrapper.cpp) for the Python wrapper's traced path:
// the tokens the net gets, the targets, and the key mask (empty when the step masks no keys).
std::tuple<at::Tensor, at::Tensor, at::Tensor> autoregressive_wrapper_inputs(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    const std::optional<at::Tensor>& prepend_embeds, int64_t ignore_index, int64_t pad_value, double mask_prob,
    std::optional<int64_t> mask_token_id, bool full) {
  ARWrapperOptions o;
  o.ignore_index(ignore_index).pad_value(pad_value).mask_prob(mask_prob).mask_token_id(mask_token_id);
  ARForwardArgs args;
  args.lens(lens).mask_noise(noise).prepend_embeds(prepend_embeds);
  StepInputs step = prepare_step(x, args, o, full);
  return {step.net.tokens, step.target, or_empty(step.net.self_attn_kv_mask, step.target)};
}

// ------------------------------------------------------------------ the inference forward

// The checks both inference kernels share (real and Meta: sizes read as SymInts), and the
// sizes of the outputs: batch, new positions, cached positions.
struct DecodeShape {
  c10::SymInt b, n, cached;
};

DecodeShape check_inference_args(const char* where, const TransformerWrapperOptions& o, const at::Tensor& tokens,
                                 at::TensorList weights, const at::Tensor* k_cache, const at::Tensor* v_cache,
                                 const at::Tensor* offset) {
  TORCH_CHECK_VALUE(tokens.dim() == 2 && tokens.scalar_type() == at::kLong, where,
                    ": tokens must be 2-D int64 (batch, seq_len), got ", tokens.scalar_type(), " ", tokens.sym_sizes());
  TORCH_CHECK_VALUE(!weights.empty(), where, ": weights must be the net's parameters (parameter_names() order)");
  DecodeShape s{tokens.sym_size(0), tokens.sym_size(1), 0};
  if (!k_cache) return s;
  const auto& d = o.attn_layers();
  for (const at::Tensor* c : {k_cache, v_cache}) {
    const char* name = c == k_cache ? "k_cache" : "v_cache";
    TORCH_CHECK_VALUE(c->dim() == 5 && c->sym_size(0) == d.depth() && c->sym_size(1) == s.b &&
                          c->sym_size(2) == d.heads() && c->sym_size(4) == d.attn_dim_head(),
                      where, ": ", name, " must be (depth=", d.depth(), ", batch=", s.b, ", heads=", d.heads(),
                      ", cached, dim_head=", d.attn_dim_head(), "), got ", c->sym_sizes());
    TORCH_CHECK_VALUE(c->scalar_type() == weights[0].scalar_type(), where, ": ", name, " must be ",
                      weights[0].scalar_type(), " as the weights, got ", c->scalar_type());
  }
  TORCH_CHECK_VALUE(v_cache->sym_size(3) == k_cache->sym_size(3), where,
                    ": k_cache and v_cache must cache as many positions, got ", k_cache->sym_sizes(), " and ",
                    v_cache->sym_sizes());
  TORCH_CHECK_VALUE(offset->dim() == 0 && offset->scalar_type() == at::kLong, where,
                    ": offset must be a 0-dim int64 tensor (the position of the first cached key), got ",
                    offset->scalar_type(), " ", offset->sym_sizes());
  s.cached = k_cache->sym_size(3);
  return s;
}

at::Tensor transformer_wrapper_logits(const at::Tensor& tokens, at::TensorList weights, c10::string_view config,
                                      bool return_embeddings) {
  const TransformerWrapperOptions o = parsed(std::string(config));
  check_inference_args("transformer_wrapper_logits", o, tokens, weights, nullptr, nullptr, nullptr);
  at::NoGradGuard no_grad;
  NetInputs in;
  in.tokens = tokens;
  in.return_embeddings = return_embeddings;
  NetOutputs out = transformer_forward(o, weights, in, /*training=*/false);
  return return_embeddings ? out.embeddings : out.logits;
}

at::Tensor transformer_wrapper_logits_meta(const at::Tensor& tokens, at::TensorList weights, c10::string_view config,
                                           bool return_embeddings) {
  const TransformerWrapperOptions o = parsed(std::string(config));
  const DecodeShape s = check_inference_args("transformer_wrapper_logits", o, tokens, weights, nullptr, nullptr, nullptr);
  const int64_t width = return_embeddings ? o.attn_layers().dim() : o.num_tokens();
  return at::empty_symint({s.b, s.n, width}, weights[0].options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transformer_wrapper_decode(const at::Tensor& tokens,
                                                                          at::TensorList weights,
                                                                          c10::string_view config,
                                                                          const at::Tensor& k_cache,
                                                                          const at::Tensor& v_cache,
                                                                          const at::Tensor& offset) {
  const char* where = "transformer_wrapper_decode";
  const TransformerWrapperOptions o = parsed(std::string(config));
  check_inference_args(where, o, tokens, weights, &k_cache, &v_cache, &offset);
  at::NoGradGuard no_grad;
  KVCache cache;
  cache.offset = offset.item<int64_t>();
  TORCH_CHECK_VALUE(cache.offset >= 0, where, ": offset must be >= 0, got ", cache.offset);
  cache.length = k_cache.size(3);
  if (cache.length > 0) {  // else transformer_forward starts the cache
    cache.k = k_cache.unbind(0);
    cache.v = v_cache.unbind(0);
  }
  NetInputs in;
  in.tokens = tokens;
  NetOutputs out = transformer_forward(o, weights, in, /*training=*/false, &cache);
  return {out.logits, at::stack(cache.k), at::stack(cache.v)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transformer_wrapper_decode_meta(const at::Tensor& tokens,
                                                                               at::TensorList weights,
                                                                               c10::string_view config,
                                                                               const at::Tensor& k_cache,
                                                                               const at::Tensor& v_cache,
                                                                               const at::Tensor& offset) {
  const TransformerWrapperOptions o = parsed(std::string(config));
  const DecodeShape s =
      check_inference_args("transformer_wrapper_decode", o, tokens, weights, &k_cache, &v_cache, &offset);
  const auto& d = o.attn_layers();
  const auto options = weights[0].options();
  at::Tensor logits = at::empty_symint({s.b, s.n, o.num_tokens()}, options);
  const std::vector<c10::SymInt> cache{d.depth(), s.b, d.heads(), s.cached + s.n, d.attn_dim_head()};
  return {logits, at::empty_symint(cache, options), at::empty_symint(cache, options)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def(
      "transformer_wrapper_forward(Tensor tokens, Tensor[] weights, str config, bool training, "
      "Tensor? prepend_embeds=None, Tensor? self_attn_kv_mask=None, bool return_embeddings=False, "
      "bool return_attn_z_loss=False, bool return_next_embed_pred=False) -> (Tensor, Tensor, Tensor, Tensor)",
      TORCH_FN(transformer_wrapper_forward));  // CompositeImplicitAutograd, as the one below
  // the wrapper options' defaults from ARWrapperOptions' table (written once, in wrapper.h)
  static const std::string schema =
      "autoregressive_wrapper_loss(Tensor x, Tensor[] weights, str config, bool training, " +
      schema_arguments(wrapper_fields(), {"ignore_index", "pad_value", "mask_prob", "mask_token_id", "add_attn_z_loss",
                                          "next_embed_loss_weight"}) +
      ", Tensor? lens=None, Tensor? prepend_embeds=None, Tensor? mask_noise=None, Generator? generator=None, "
      "bool return_outputs=False) -> (Tensor, Tensor)";
  m.def(schema.c_str(), TORCH_FN(autoregressive_wrapper_loss));
  static const std::string inputs_schema =
      "autoregressive_wrapper_inputs(Tensor x, Tensor? lens=None, Tensor? noise=None, Tensor? prepend_embeds=None, " +
      schema_arguments(wrapper_fields(), {"ignore_index", "pad_value", "mask_prob", "mask_token_id"}) +
      ", bool full=False) -> (Tensor tokens, Tensor target, Tensor kv_mask)";
  m.def(inputs_schema.c_str(), TORCH_FN(autoregressive_wrapper_inputs));  // CompositeImplicitAutograd
  // the inference forward (see the top of this file): a real kernel for every device and a Meta one
  m.def("transformer_wrapper_logits(Tensor tokens, Tensor[] weights, str config, bool return_embeddings=False) "
        "-> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(transformer_wrapper_logits)));
  m.def("transformer_wrapper_decode(Tensor tokens, Tensor[] weights, str config, Tensor k_cache, Tensor v_cache, "
        "Tensor offset) -> (Tensor logits, Tensor k_cache_out, Tensor v_cache_out)",
        torch::dispatch(c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(transformer_wrapper_decode)));
}

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("transformer_wrapper_logits", TORCH_FN(transformer_wrapper_logits_meta));
  m.impl("transformer_wrapper_decode", TORCH_FN(transformer_wrapper_decode_meta));
}

}  // namespace arwrap
