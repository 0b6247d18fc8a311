// arwrap::TransformerWrapper / arwrap::Decoder: the decoder-only configuration of
// x-transformers 2.31.10's TransformerWrapper(attn_layers = Decoder(...)), in C++.
//
// Same defaults, same state-dict names and shapes, so weights move both ways:
//
//   token_emb.emb.weight                          (num_tokens, dim)
//   pos_emb.emb.weight                            (max_seq_len, dim)   use_abs_pos_emb
//   attn_layers.layers.{2i}.0.0.gamma | .g        (dim)                LayerNorm | RMSNorm
//   attn_layers.layers.{2i}.1.to_{q,k,v}.weight   (heads * dim_head, dim)
//   attn_layers.layers.{2i}.1.to_out.weight       (dim, heads * dim_head)
//   attn_layers.layers.{2i+1}.0.0.gamma | .g      (dim)
//   attn_layers.layers.{2i+1}.1.ff.0.0.{weight,bias}     (inner, dim)  | ff.0.proj (2 inner, dim) with ff_glu
//   attn_layers.layers.{2i+1}.1.ff.2.{weight,bias}       (dim, inner)
//   attn_layers.final_norm.gamma | .g             (dim)
//   attn_layers.rotary_pos_emb.inv_freq           (rotary_dim / 2)     buffer, rotary_pos_emb
//   to_logits.weight                              (num_tokens, dim)    unless tie_embedding
//   to_next_embed_pred.{0,2}.weight               (dim, dim)           add_continuous_pred_head
//
// The forward is one function (transformer_forward) over the weights in that order,
// shared by the C++ module below, the Python module (arwrap_cpp.TransformerWrapper)
// and TorchScript (torch.ops.arwrap.transformer_wrapper_forward / autoregressive_wrapper_loss).
// Attention goes through at::scaled_dot_product_attention (causal), so memory does
// not grow with seq^2; the attention z-loss takes its log-sum-exp from
// arwrap::attention_lse, which recomputes the scores in row blocks.
#pragma once

#include <arwrap/wrapper.h>

#include <ATen/core/Generator.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace arwrap {

// x-transformers' Decoder(...) arguments we support (the rest are refused).
struct DecoderOptions {
  DecoderOptions(int64_t dim, int64_t depth) : dim_(dim), depth_(depth) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, depth);
  TORCH_ARG(int64_t, heads) = 8;
  TORCH_ARG(int64_t, attn_dim_head) = 64;
  TORCH_ARG(double, ff_mult) = 4.0;
  TORCH_ARG(bool, ff_glu) = false;
  TORCH_ARG(bool, ff_swish) = false;
  TORCH_ARG(bool, rotary_pos_emb) = false;
  TORCH_ARG(int64_t, rotary_emb_dim) = 0;  // 0: attn_dim_head / 2, as x-transformers
  TORCH_ARG(bool, use_rmsnorm) = false;
  // x-transformers stores gamma - 1 (initialised to 0) and scales by gamma + 1
  TORCH_ARG(bool, norm_add_unit_offset) = true;
  TORCH_ARG(bool, attn_qk_norm) = false;
  TORCH_ARG(double, attn_qk_norm_scale) = 10.0;
  TORCH_ARG(double, attn_dropout) = 0.0;
  TORCH_ARG(double, ff_dropout) = 0.0;
};

// x-transformers' TransformerWrapper(...) arguments we support.
struct TransformerWrapperOptions {
  TransformerWrapperOptions(int64_t num_tokens, int64_t max_seq_len, DecoderOptions attn_layers)
      : num_tokens_(num_tokens), max_seq_len_(max_seq_len), attn_layers_(std::move(attn_layers)) {}
  TORCH_ARG(int64_t, num_tokens);
  TORCH_ARG(int64_t, max_seq_len);
  TORCH_ARG(DecoderOptions, attn_layers);
  TORCH_ARG(double, emb_dropout) = 0.0;
  TORCH_ARG(bool, use_abs_pos_emb) = true;
  TORCH_ARG(bool, tie_embedding) = false;
  TORCH_ARG(bool, add_continuous_pred_head) = false;
  TORCH_ARG(double, attn_z_loss_weight) = 1e-4;

 public:

  // Checks every value; throws c10::ValueError naming the bad one.
  void validate() const;
  // "num_tokens=256,max_seq_len=1024,dim=512,..." and back (TorchScript carries the
  // configuration as this string). parse refuses unknown keys and bad values.
  std::string to_string() const;
  static TransformerWrapperOptions parse(const std::string& text);
  // Names of the trainable parameters, in the order transformer_forward takes them.
  std::vector<std::string> parameter_names() const;
  std::vector<std::vector<int64_t>> parameter_shapes() const;
  int64_t rotary_dim() const;  // 0 without rotary embeddings
};

// Keys and values of every layer for incremental decoding (keys already rotated).
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer (b, heads, length, dim_head)
  int64_t length = 0;            // positions cached
  int64_t offset = 0;            // absolute position of the first cached one
};

// The forward pass. weights: parameter_names() order. With a cache: tokens are
// the new positions only, their keys/values are appended and attention covers the
// cache (no self_attn_kv_mask, no prepend_embeds, no auxiliary outputs).
NetOutputs transformer_forward(const TransformerWrapperOptions& options, at::TensorList weights,
                               const NetInputs& inputs, bool training, KVCache* cache = nullptr);

// An amateur model for contrastive decoding (Li et al.; x-transformers' amateur_model with its
// contrastive_decode_kwargs): logits = (1 + beta) expert - beta amateur where the expert's
// probability is at least alpha times its largest, else -max.
struct ContrastiveAmateur {
  TransformerWrapperOptions options;
  std::vector<at::Tensor> weights;  // parameter_names() order
  double alpha = 0.1;
  double beta = 0.5;
};

// x-transformers 2.31.10's AutoregressiveWrapper.generate (implemented in decoding.cpp):
// filter_logits_fn in {"top_k", "top_p", "top_a", "min_p", "none"}; greedy at temperature 0;
// after eos_token the rest of a row is pad_value; stops early once every row has an eos.
struct GenerateOptions {
  TORCH_ARG(double, temperature) = 1.0;
  TORCH_ARG(std::string, filter_logits_fn) = "top_k";
  TORCH_ARG(std::optional<int64_t>, top_k) = std::nullopt;  // default ceil(top_k_frac * num_tokens)
  TORCH_ARG(double, top_k_frac) = 0.1;
  TORCH_ARG(double, top_p) = 0.9;  // x-transformers' top_p thres
  TORCH_ARG(double, min_p) = 0.1;
  TORCH_ARG(double, top_a_pow) = 2.0;     // top_a: keep p >= top_a_ratio * max(p) ** top_a_pow
  TORCH_ARG(double, top_a_ratio) = 0.02;
  TORCH_ARG(std::optional<int64_t>, eos_token) = std::nullopt;
  TORCH_ARG(int64_t, pad_value) = 0;
  TORCH_ARG(bool, cache_kv) = true;
  // crop the context to the last max_seq_len tokens (and the cache to max_seq_len - 1)
  TORCH_ARG(bool, restrict_to_max_seq_len) = true;
  // (b,) prompt lengths: the prompts are left-aligned, padded on the right (x-transformers' prompt_lens)
  TORCH_ARG(std::optional<at::Tensor>, prompt_lens) = std::nullopt;
  // contrastive decoding (the filter is then off, as in x-transformers)
  TORCH_ARG(std::vector<ContrastiveAmateur>, amateurs) = {};
};

// prompts: (b, t) or (t,) int64. Returns the seq_len generated tokens (b, seq_len)
// (or (seq_len,)), without the prompt, as x-transformers does.
at::Tensor generate(const TransformerWrapperOptions& options, at::TensorList weights, const at::Tensor& prompts,
                    int64_t seq_len, const GenerateOptions& generate_options = {},
                    std::optional<at::Generator> generator = std::nullopt);

// x-transformers 2.31.10's AutoregressiveWrapper.beam_search (decoding.cpp), with the
// key/value cache: keeps the `beams` best continuations by summed log-probability; with
// `stochastic` (and temperature > 0) the candidates are the top of filtered logits / temperature
// plus Gumbel noise (their scores stay the unperturbed log-probabilities). No eos_token, as there.
struct BeamSearchOptions {
  TORCH_ARG(int64_t, beams) = 4;
  TORCH_ARG(bool, stochastic) = false;
  // temperature, filter (default "none", x-transformers' identity), pad_value, cache_kv,
  // restrict_to_max_seq_len, prompt_lens as for generate (eos_token and amateurs are refused)
  TORCH_ARG(GenerateOptions, sampling) = GenerateOptions().filter_logits_fn("none");
};

// prompts (b, t) or (t,). Returns (beams (b, beams, seq_len), scores (b, beams)), best first
// ((beams, seq_len), (beams) for a 1-D prompt).
std::tuple<at::Tensor, at::Tensor> beam_search(const TransformerWrapperOptions& options, at::TensorList weights,
                                               const at::Tensor& prompts, int64_t seq_len,
                                               const BeamSearchOptions& beam_options = {},
                                               std::optional<at::Generator> generator = std::nullopt);

// The native net behind the Net interface: ARWrapper's third implementation. The
// whole step (embedding to loss, the loss fused with the output projection) runs
// in C++. weights() is asked on every forward, so it follows .to() and loads.
class NativeNet : public Net {
 public:
  NativeNet(TransformerWrapperOptions options, std::function<std::vector<at::Tensor>()> weights,
            std::function<bool()> is_training);
  NetOutputs forward(const NetInputs& inputs) override;
  bool add_continuous_pred_head() const override { return options_.add_continuous_pred_head(); }
  std::optional<int64_t> num_tokens() const override { return options_.num_tokens(); }
  std::vector<at::Tensor> parameters() const override { return weights_(); }
  std::optional<LinearHead> head() const override;
  bool prefers_fused_head() const override { return true; }
  const TransformerWrapperOptions& options() const { return options_; }

 private:
  TransformerWrapperOptions options_;
  std::function<std::vector<at::Tensor>()> weights_;
  std::function<bool()> is_training_;
};

// The C++ module, with x-transformers' parameter names (see the top of this file).
class TransformerWrapperImpl : public torch::nn::Cloneable<TransformerWrapperImpl> {
 public:
  explicit TransformerWrapperImpl(TransformerWrapperOptions options);
  void reset() override;
  // Re-draws the weights as x-transformers initialises them.
  void reset_parameters();

  // logits (b, n, num_tokens)
  at::Tensor forward(const at::Tensor& tokens);
  // everything else (embeddings, z-loss, continuous head, prepend_embeds, key mask)
  NetOutputs forward(const NetInputs& inputs);

  at::Tensor generate(const at::Tensor& prompts, int64_t seq_len, const GenerateOptions& generate_options = {},
                      std::optional<at::Generator> generator = std::nullopt);
  // beam_search (decoding.cpp): (beams (b, beams, seq_len), scores (b, beams)), best first
  std::tuple<at::Tensor, at::Tensor> beam_search(const at::Tensor& prompts, int64_t seq_len,
                                                 const BeamSearchOptions& options,
                                                 std::optional<at::Generator> generator = std::nullopt);

  // parameters in parameter_names() order
  std::vector<at::Tensor> weights() const;
  // Parameters and buffers by x-transformers' names (the module's own tensors).
  std::map<std::string, at::Tensor> state_dict() const;
  // Copies every entry in. A missing, unexpected or mis-shaped entry is a c10::ValueError
  // naming it, raised before anything is copied.
  void load_state_dict(const std::map<std::string, at::Tensor>& state);
  // The Net for ARWrapper; it refers to this module.
  std::shared_ptr<NativeNet> as_net();

  TransformerWrapperOptions options;
};

TORCH_MODULE(TransformerWrapper);

}  // namespace arwrap
