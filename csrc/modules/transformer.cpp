// arwrap::TransformerWrapper, the C++ module, and NativeNet, the native net behind
// ARWrapper's Net interface. See <arwrap/transformer.h>.
#include <arwrap/transformer.h>

#include <ATen/ATen.h>

#include <cmath>
#include <sstream>

namespace arwrap {

// ------------------------------------------------------------------ NativeNet

NativeNet::NativeNet(TransformerWrapperOptions options, std::function<std::vector<at::Tensor>()> weights,
                     std::function<bool()> is_training)
    : options_(std::move(options)), weights_(std::move(weights)), is_training_(std::move(is_training)) {
  options_.validate();
}

NetOutputs NativeNet::forward(const NetInputs& inputs) {
  return transformer_forward(options_, weights_(), inputs, is_training_());
}

std::optional<LinearHead> NativeNet::head() const {
  const auto w = weights_();
  LinearHead h;
  if (options_.tie_embedding()) {
    h.weight = w[0];
    h.scale = 1.0 / std::sqrt(static_cast<double>(options_.attn_layers().dim()));
  } else {
    const auto specs = options_.parameter_specs();
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].role == ParamRole::ToLogits) h.weight = w[i];
    }
  }
  return h;
}

// ------------------------------------------------------------------ module

namespace {

// An empty module, to give parameters x-transformers' nested names.
std::shared_ptr<torch::nn::Module> holder(torch::nn::Module& parent, const std::string& name) {
  const auto children = parent.named_children();  // a copy: find() points into it
  if (const auto* existing = children.find(name)) return *existing;
  return parent.register_module(name, std::make_shared<torch::nn::Module>());
}

}  // namespace

TransformerWrapperImpl::TransformerWrapperImpl(TransformerWrapperOptions options_) : options(std::move(options_)) {
  reset();
}

void TransformerWrapperImpl::reset() {
  options.validate();
  for (const ParamSpec& spec : options.parameter_specs()) {
    // walk "a.b.c.weight": modules a, a.b, a.b.c, then the parameter
    torch::nn::Module* parent = this;
    std::shared_ptr<torch::nn::Module> keep;
    std::stringstream ss(spec.name);
    std::vector<std::string> parts;
    for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
    for (size_t j = 0; j + 1 < parts.size(); ++j) {
      keep = holder(*parent, parts[j]);
      parent = keep.get();
    }
    parent->register_parameter(parts.back(), at::empty(spec.shape));
  }
  if (options.rotary_dim() > 0) {
    auto rotary = holder(*holder(*this, "attn_layers"), "rotary_pos_emb");
    rotary->register_buffer("inv_freq", options.rotary_inv_freq());
  }
  reset_parameters();
}

void TransformerWrapperImpl::reset_parameters() { init_parameters(options, weights()); }

std::vector<at::Tensor> TransformerWrapperImpl::weights() const {
  const auto named = named_parameters(true);
  std::vector<at::Tensor> out;
  for (const auto& name : options.parameter_names()) out.push_back(named[name]);
  return out;
}

std::map<std::string, at::Tensor> TransformerWrapperImpl::state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : named_buffers(true)) out[b.key()] = b.value();
  return out;
}

void TransformerWrapperImpl::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  auto own = state_dict();
  for (const auto& [name, t] : own) {
    auto it = state.find(name);
    TORCH_CHECK_VALUE(it != state.end(), "TransformerWrapper.load_state_dict: missing ", name);
    TORCH_CHECK_VALUE(it->second.defined() && it->second.sizes() == t.sizes(), "TransformerWrapper.load_state_dict: ",
                      name, " has shape ", it->second.defined() ? c10::str(it->second.sizes()) : "undefined",
                      ", the module ", t.sizes());
  }
  for (const auto& [name, t] : state) {
    TORCH_CHECK_VALUE(own.count(name), "TransformerWrapper.load_state_dict: unexpected entry ", name);
  }
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : own) t.copy_(state.at(name));
}

at::Tensor TransformerWrapperImpl::forward(const at::Tensor& tokens) {
  NetInputs in;
  in.tokens = tokens;
  return transformer_forward(options, weights(), in, is_training()).logits;
}

NetOutputs TransformerWrapperImpl::forward(const NetInputs& inputs) {
  return transformer_forward(options, weights(), inputs, is_training());
}

at::Tensor TransformerWrapperImpl::generate(const at::Tensor& prompts, int64_t seq_len,
                                            const GenerateOptions& generate_options,
                                            std::optional<at::Generator> generator) {
  return arwrap::generate(options, weights(), prompts, seq_len, generate_options, std::move(generator));
}

std::shared_ptr<NativeNet> TransformerWrapperImpl::as_net() {
  auto self = std::dynamic_pointer_cast<TransformerWrapperImpl>(shared_from_this());
  return std::make_shared<NativeNet>(
      options, [self] { return self->weights(); }, [self] { return self->is_training(); });
}

}  // namespace arwrap
