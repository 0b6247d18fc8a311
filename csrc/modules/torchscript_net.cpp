// A TorchScript module as the ARWrapper's net (pure C++ deployments).
#include <arwrap/wrapper.h>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

namespace arwrap {

TorchScriptNet::TorchScriptNet(std::shared_ptr<torch::jit::Module> module) : module_(std::move(module)) {
  TORCH_CHECK_VALUE(module_ != nullptr, "TorchScriptNet: module must not be null");
  auto method = module_->find_method("forward");
  TORCH_CHECK_VALUE(method.has_value(), "TorchScriptNet: the module has no forward method");
  num_args_ = method->function().getSchema().arguments().size() - 1;  // without self
  TORCH_CHECK_VALUE(num_args_ == 1 || num_args_ == 2,
                    "TorchScriptNet: forward must take (tokens) or (tokens, mask: Optional[Tensor]), got ", num_args_,
                    " arguments");
}

std::shared_ptr<TorchScriptNet> TorchScriptNet::load(const std::string& path) {
  return std::make_shared<TorchScriptNet>(std::make_shared<torch::jit::Module>(torch::jit::load(path)));
}

NetOutputs TorchScriptNet::forward(const NetInputs& in) {
  TORCH_CHECK_VALUE(!in.prepend_embeds.defined(), "TorchScriptNet: prepend_embeds are not supported");
  TORCH_CHECK_VALUE(!in.return_attn_z_loss && !in.return_next_embed_pred,
                    "TorchScriptNet: attention z-loss and continuous heads are not supported");
  std::vector<c10::IValue> args{in.tokens};
  if (num_args_ == 2) {
    args.emplace_back(in.self_attn_kv_mask.defined() ? c10::IValue(in.self_attn_kv_mask) : c10::IValue());
  } else {
    TORCH_CHECK_VALUE(!in.self_attn_kv_mask.defined(),
                      "TorchScriptNet: mask_prob > 0 needs a forward(tokens, mask) that takes the key mask");
  }
  c10::IValue r = module_->forward(args);
  NetOutputs out;
  if (r.isTensor()) {
    out.logits = r.toTensor();
  } else {
    TORCH_CHECK(r.isTuple() && !r.toTupleRef().elements().empty() && r.toTupleRef().elements()[0].isTensor(),
                "TorchScriptNet: forward must return the logits, or a tuple that starts with them");
    out.logits = r.toTupleRef().elements()[0].toTensor();
    out.cache = r;
  }
  return out;
}

std::optional<int64_t> TorchScriptNet::num_tokens() const {
  if (module_->hasattr("num_tokens")) {
    auto v = module_->attr("num_tokens");
    if (v.isInt()) return v.toInt();
  }
  return std::nullopt;
}

std::vector<at::Tensor> TorchScriptNet::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& p : module_->parameters()) out.push_back(p);
  return out;
}

}  // namespace arwrap
