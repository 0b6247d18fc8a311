// arwrap::TransformerWrapper: the decoder-only configuration of x-transformers 2.31.10's
// TransformerWrapper(attn_layers = Decoder(...)), in C++.
//
// Same defaults, same state-dict names and shapes, so weights move both ways (the
// parameter table is in <arwrap/transformer_options.h>; generation in <arwrap/generate.h>).
//
// The forward is one function (transformer_forward) over the weights in the table's
// order, shared by the C++ module below, the Python module (arwrap_cpp.TransformerWrapper)
// and TorchScript (torch.ops.arwrap.transformer_wrapper_forward / autoregressive_wrapper_loss).
// Attention goes through at::scaled_dot_product_attention (causal), so memory does
// not grow with seq^2; the attention z-loss takes its log-sum-exp from
// arwrap::attention_lse, which recomputes the scores in row blocks.
#pragma once

#include <arwrap/generate.h>
#include <arwrap/transformer_options.h>
#include <arwrap/wrapper.h>

#include <ATen/core/Generator.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace arwrap {

// Keys and values of every layer for incremental decoding (keys already rotated).
struct KVCache {
  std::vector<at::Tensor> k, v;  // per layer (b, heads, length, dim_head)
  int64_t length = 0;            // positions cached
  int64_t offset = 0;            // absolute position of the first cached one
};

// The forward pass. weights: parameter_specs() order. With a cache: tokens are
// the new positions only, their keys/values are appended and attention covers the
// cache (no self_attn_kv_mask, no prepend_embeds, no auxiliary outputs).
NetOutputs transformer_forward(const TransformerWrapperOptions& options, at::TensorList weights,
                               const NetInputs& inputs, bool training, KVCache* cache = nullptr);

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

// The C++ module, with x-transformers' parameter names (the parameter table).
class TransformerWrapperImpl : public torch::nn::Cloneable<TransformerWrapperImpl> {
 public:
  explicit TransformerWrapperImpl(TransformerWrapperOptions options);
  void reset() override;
  // Re-draws the weights as x-transformers initialises them (init_parameters).
  void reset_parameters();

  // logits (b, n, num_tokens)
  at::Tensor forward(const at::Tensor& tokens);
  // everything else (embeddings, z-loss, continuous head, prepend_embeds, key mask)
  NetOutputs forward(const NetInputs& inputs);

  at::Tensor generate(const at::Tensor& prompts, int64_t seq_len, const GenerateOptions& generate_options = {},
                      std::optional<at::Generator> generator = std::nullopt);

  // parameters in parameter_specs() order
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
