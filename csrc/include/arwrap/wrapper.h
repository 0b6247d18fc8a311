// arwrap::ARWrapper: x-transformers' AutoregressiveWrapper.forward, written once in C++.
//
//   lens -> shift (+ mask) -> the net -> cut prepend_embeds off the logits ->
//   fused cross-entropy (gradient in place over the logits) -> attention z-loss ->
//   next-embedding L1 loss
//
// The net is an interface (Net) with implementations for a TorchScript module
// (TorchScriptNet, here) and a Python module (in the Python bindings).
#pragma once

#include <arwrap/defaults.h>
#include <arwrap/ops.h>
#include <arwrap/option_fields.h>

#include <ATen/core/ivalue.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace torch::jit {
struct Module;
}

namespace arwrap {

// What the wrapper hands the net, in x-transformers' TransformerWrapper terms.
struct NetInputs {
  at::Tensor tokens;                  // (b, m) int64
  at::Tensor self_attn_kv_mask;       // (b, m) bool, true = kept; undefined if none
  at::Tensor prepend_embeds;          // (b, p, d); undefined if none
  bool return_attn_z_loss = false;    // the net must fill NetOutputs::attn_z_loss
  bool return_next_embed_pred = false;  // ... and next_embed_pred / init_embeds
  bool return_embeddings = false;     // fused head: the final embeddings instead of the logits
  // (b,) int64: left-padded rows start at seq_start_pos (x-transformers' generate with
  // prompt_lens): earlier keys are masked, absolute positions count from it; undefined if none
  at::Tensor seq_start_pos;
};

struct NetOutputs {
  at::Tensor logits;           // (b, p + m, V): logits, or log-probabilities if output_is_log_prob()
  at::Tensor embeddings;       // (b, p + m, d): with return_embeddings, instead of the logits
  at::Tensor attn_z_loss;      // scalar, when asked for
  at::Tensor next_embed_pred;  // (b, p + m, d), when asked for
  at::Tensor init_embeds;      // (b, p + m, d), when asked for
  c10::IValue cache;           // whatever the net returns as its intermediates (opaque)
  // a looped net (x-transformers' TransformerWrapper(looped=True)): the exit gate's logits
  // and the logits predicted after every loop; the loss is then the looped one
  at::Tensor exit_logits;      // (b, loops, p + m)
  at::Tensor all_pred_logits;  // (b, loops, p + m, V)
};

// The net's output layer when it is a plain linear map: logits = (scale * h) W^T + b.
struct LinearHead {
  at::Tensor weight;  // (V, d)
  at::Tensor bias;    // (V) or undefined
  double scale = 1.0;
};

class Net {
 public:
  virtual ~Net() = default;
  virtual NetOutputs forward(const NetInputs& inputs) = 0;
  // F.nll_loss on its outputs instead of cross-entropy (x-transformers' mixture of softmaxes)
  virtual bool output_is_log_prob() const { return false; }
  // the net has a continuous next-embedding prediction head
  virtual bool add_continuous_pred_head() const { return false; }
  // vocabulary size, when known (token ids are checked against it before the net runs)
  virtual std::optional<int64_t> num_tokens() const { return std::nullopt; }
  // trainable tensors, for C++ optimizers
  virtual std::vector<at::Tensor> parameters() const { return {}; }
  // the output layer, when the loss may be fused with it (ARWrapperOptions::fused_head)
  virtual std::optional<LinearHead> head() const { return std::nullopt; }
  // the wrapper fuses the loss with head() even without ARWrapperOptions::fused_head
  virtual bool prefers_fused_head() const { return false; }
};

// A TorchScript module as the net: forward(Tensor tokens) -> Tensor logits, or
// forward(Tensor tokens, Tensor mask) when it takes a second argument (the key mask).
class TorchScriptNet : public Net {
 public:
  explicit TorchScriptNet(std::shared_ptr<torch::jit::Module> module);
  // Loads a module saved with torch.jit.save.
  static std::shared_ptr<TorchScriptNet> load(const std::string& path);
  NetOutputs forward(const NetInputs& inputs) override;
  std::optional<int64_t> num_tokens() const override;
  std::vector<at::Tensor> parameters() const override;
  torch::jit::Module& module() { return *module_; }

 private:
  std::shared_ptr<torch::jit::Module> module_;
  size_t num_args_;
};

struct ARWrapperOptions {
  TORCH_ARG(int64_t, ignore_index) = defaults::ignore_index;
  TORCH_ARG(int64_t, pad_value) = 0;
  // key masking (x-transformers' self_attn_kv_mask), or token replacement with mask_token_id
  TORCH_ARG(double, mask_prob) = 0.0;
  TORCH_ARG(std::optional<int64_t>, mask_token_id) = std::nullopt;
  TORCH_ARG(bool, add_attn_z_loss) = false;
  TORCH_ARG(double, next_embed_loss_weight) = defaults::next_embed_loss_weight;
  // a looped net's exit-gate training (x-transformers' looped_* arguments)
  TORCH_ARG(double, looped_loss_threshold_exit) = defaults::looped_loss_threshold_exit;
  TORCH_ARG(double, looped_loss_slope) = defaults::looped_loss_slope;
  TORCH_ARG(double, looped_exit_loss_weight) = defaults::looped_exit_loss_weight;
  // When the net exposes a linear head: take its final embeddings and compute the
  // loss with the fused linear cross-entropy, never materialising the logits
  // (not with return_outputs, which needs them).
  TORCH_ARG(bool, fused_head) = false;

 public:
  // Checks every value; throws c10::ValueError naming the bad one (the wrapper's
  // constructor calls it; Python's AutoregressiveWrapper too, at construction).
  void validate() const;
};

// ARWrapperOptions' table (option_fields.h): the fields and their defaults.
std::vector<OptionField> wrapper_fields();

struct ARForwardArgs {
  TORCH_ARG(std::optional<at::Tensor>, lens) = std::nullopt;            // (b,)
  TORCH_ARG(std::optional<at::Tensor>, prepend_embeds) = std::nullopt;  // (b, p, d)
  TORCH_ARG(std::optional<at::Tensor>, mask_noise) = std::nullopt;      // injected draw, (b, n + 1)
  TORCH_ARG(std::optional<at::Generator>, generator) = std::nullopt;
  TORCH_ARG(bool, return_outputs) = false;
};

struct AROutput {
  at::Tensor loss;    // scalar
  at::Tensor logits;  // (b, n, V) with return_outputs, else undefined
  c10::IValue cache;  // the net's intermediates with return_outputs
};

// The part of the step before the net, written once: ARWrapperImpl::forward calls it, and so
// does the Python wrapper under torch.compile (the operator autoregressive_wrapper_inputs).
//   shift (and mask) the tokens -> narrow them to the n positions that predict (all n + 1 with
//   `full`: the auxiliary losses score every position) -> the key mask (masking keys, unless
//   mask_token_id replaces the tokens) -> prepend_embeds and its offset.
struct StepInputs {
  NetInputs net;             // tokens, self_attn_kv_mask, prepend_embeds (the return_* flags unset)
  at::Tensor target;         // (b, n) int64
  int64_t prepend_len = 0;   // positions prepend_embeds adds in front of the net's outputs
};
StepInputs prepare_step(const at::Tensor& x, const ARForwardArgs& args, const ARWrapperOptions& options, bool full);

// The head the loss is fused with (the net's final embeddings, never the logits), or none:
// when fused_head asks for it (or the net prefers it and has no continuous head), the net
// exposes a linear head, the caller wants no logits back and the outputs are not log-probabilities.
std::optional<LinearHead> fused_head_of(const Net& net, const ARWrapperOptions& options, bool return_outputs);

class ARWrapperImpl : public torch::nn::Cloneable<ARWrapperImpl> {
 public:
  ARWrapperImpl(std::shared_ptr<Net> net, ARWrapperOptions options = {});
  // A net that is also a module (the native TransformerWrapper): registered as the
  // submodule "net", so parameters() and named_parameters() hold it, with the names
  // of x-transformers' AutoregressiveWrapper ("net.token_emb.emb.weight", ...).
  ARWrapperImpl(std::shared_ptr<Net> net, std::shared_ptr<torch::nn::Module> net_module, ARWrapperOptions options = {});
  // The native net: ARWrapper(TransformerWrapper(...), options) (any module holder whose
  // module has as_net()), registered as "net" as above.
  template <typename NetModule>
  explicit ARWrapperImpl(const torch::nn::ModuleHolder<NetModule>& net, ARWrapperOptions options = {})
      : ARWrapperImpl(net.ptr()->as_net(), net.ptr(), std::move(options)) {}

  // x: (b, n + 1) int64 token ids. Returns the loss (and, with return_outputs,
  // the logits the caller may keep and the net's cache).
  AROutput forward(const at::Tensor& x, const ARForwardArgs& args = {});
  // The loss only.
  at::Tensor loss(const at::Tensor& x, const ARForwardArgs& args = {}) { return forward(x, args).loss; }

  void reset() override {}
  std::shared_ptr<Net> net() const { return net_; }
  // parameters of this module and of the net, for C++ optimizers
  std::vector<at::Tensor> trainable_parameters() const;

  ARWrapperOptions options;

 private:
  std::shared_ptr<Net> net_;
  bool net_is_submodule_ = false;
};

TORCH_MODULE(ARWrapper);

}  // namespace arwrap
