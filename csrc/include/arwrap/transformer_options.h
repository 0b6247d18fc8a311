// The native net's configuration (x-transformers 2.31.10's TransformerWrapper(Decoder(...))
// arguments we support) and its parameter table.
//
// The parameter table (TransformerWrapperOptions::parameter_specs) is the single source
// of the weight contract: name, shape, role in the forward and initialisation of every
// trainable tensor, in the order transformer_forward takes them. The C++ module, the
// Python module (through arwrap_cpp._C), checkpoints and the trainer all read it.
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
//   to_logits.weight                              (num_tokens, dim)    unless tie_embedding
//   to_next_embed_pred.{0,2}.weight               (dim, dim)           add_continuous_pred_head
// plus one buffer, attn_layers.rotary_pos_emb.inv_freq (rotary_emb_dim / 2, rotary_inv_freq()).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
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
  TORCH_ARG(int64_t, rotary_emb_dim) = 0;  // 0: attn_dim_head / 2, as x-transformers (None there)
  TORCH_ARG(bool, use_rmsnorm) = false;
  // x-transformers stores gamma - 1 (initialised to 0) and scales by gamma + 1
  TORCH_ARG(bool, norm_add_unit_offset) = true;
  TORCH_ARG(bool, attn_qk_norm) = false;
  TORCH_ARG(double, attn_qk_norm_scale) = 10.0;
  TORCH_ARG(double, attn_dropout) = 0.0;
  TORCH_ARG(double, ff_dropout) = 0.0;
  // ours, not x-transformers' (it has no such option): in a forward that records gradients, each
  // layer keeps only its input and recomputes itself in the backward (activation checkpointing,
  // torch.utils.checkpoint's idea, in C++: layers.h, checkpointed_decoder_layer). The same loss
  // and gradients, bit for bit in float32 (dropout replays its random state); less memory,
  // about one more layer forward per layer in the backward.
  TORCH_ARG(bool, checkpoint_layers) = false;
};

// What a parameter is in the forward.
enum class ParamRole {
  TokenEmb, PosEmb,
  AttnNorm, ToQ, ToK, ToV, ToOut,                    // per layer
  FFNorm, FFInWeight, FFInBias, FFOutWeight, FFOutBias,  // per layer
  FinalNorm, ToLogits, NextEmbed0, NextEmbed2,
};

// How x-transformers initialises it.
enum class ParamInit {
  KaimingNormal,  // token embedding
  Normal,         // absolute positional embedding
  NormGain,       // 0 with norm_add_unit_offset (gamma - 1 is stored), else 1
  LinearWeight,   // nn.Linear's default: kaiming_uniform_(a = sqrt(5))
  LinearBias,     // nn.Linear's default: uniform(+-1/sqrt(fan_in))
};

struct ParamSpec {
  std::string name;            // x-transformers' state-dict name
  std::vector<int64_t> shape;
  ParamRole role;
  int64_t layer = -1;          // for per-layer roles
  ParamInit init;
  int64_t fan_in = 0;          // LinearBias: the input features of its weight
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

  // The parameter table (see the top of this file), in the order transformer_forward takes them.
  std::vector<ParamSpec> parameter_specs() const;
  std::vector<std::string> parameter_names() const;
  std::vector<std::vector<int64_t>> parameter_shapes() const;

  // The rotated dimensions per head (0 without rotary embeddings) and x-transformers'
  // inverse frequencies 1 / 10000^(arange(0, r, 2) / r), float32 on the CPU.
  int64_t rotary_dim() const;
  at::Tensor rotary_inv_freq() const;
};

// One option of the configuration string: its key, type ("int", "float", "bool"),
// whether it belongs to Decoder(...) (else TransformerWrapper(...)), and its default
// ("" for the four required ones). Python builds its defaults and parser from this.
struct ConfigField {
  std::string key, type;
  bool decoder;
  std::string default_value;
};
std::vector<ConfigField> config_fields();

// Initialises the weights (parameter_specs() order) in place as x-transformers does,
// drawing from the default generator.
void init_parameters(const TransformerWrapperOptions& options, at::TensorList weights);

}  // namespace arwrap
