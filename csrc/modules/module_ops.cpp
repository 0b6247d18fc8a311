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
}

}  // namespace arwrap
