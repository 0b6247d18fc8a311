// pybind11 bindings: the only file that knows about Python.
//
// The operators are reached through torch.ops.arwrap.* (registered when this module
// loads libarwrap). This module adds the C++ ARWrapper, with the one deliberate seam
// where C++ calls back up: PythonNet, a Python nn.Module used as the wrapper's net.
#include <arwrap/arwrap.h>
#include <arwrap/corpus.h>

#include "../modules/small_batch_linear.h"
#include "../ops/cpu/attention_simd.h"
#include "../ops/low_precision_mm.h"

#include <torch/csrc/jit/api/module.h>
#include <torch/extension.h>

#include <optional>

namespace py = pybind11;

namespace {

// A Python callable as the net:
//   call(tokens, self_attn_kv_mask, prepend_embeds, return_attn_z_loss, return_next_embed_pred)
//     -> (logits, attn_z_loss, next_embed_pred, init_embeds, cache)
// The arwrap_cpp.AutoregressiveWrapper module supplies it around any nn.Module with
// x-transformers' TransformerWrapper call signature.
class PythonNet : public arwrap::Net {
 public:
  PythonNet(py::object call, bool output_is_log_prob, bool add_continuous_pred_head, std::optional<int64_t> num_tokens,
            std::optional<arwrap::LinearHead> head)
      : call_(std::move(call)),
        log_prob_(output_is_log_prob),
        continuous_(add_continuous_pred_head),
        num_tokens_(num_tokens),
        head_(std::move(head)) {}

  ~PythonNet() override {
    py::gil_scoped_acquire gil;
    call_ = py::object();
    last_cache_ = py::object();
  }

  arwrap::NetOutputs forward(const arwrap::NetInputs& in) override {
    py::gil_scoped_acquire gil;
    auto opt = [](const at::Tensor& t) -> py::object { return t.defined() ? py::cast(t) : py::none(); };
    py::object r = call_(in.tokens, opt(in.self_attn_kv_mask), opt(in.prepend_embeds), in.return_attn_z_loss,
                         in.return_next_embed_pred, in.return_embeddings);
    auto tup = r.cast<py::tuple>();
    TORCH_CHECK(tup.size() == 5 || tup.size() == 7, "PythonNet: the net adapter must return 5 values (7 for a looped net)");
    auto tensor = [](const py::handle& h) { return h.is_none() ? at::Tensor() : h.cast<at::Tensor>(); };
    arwrap::NetOutputs out;
    (in.return_embeddings ? out.embeddings : out.logits) = tensor(tup[0]);
    out.attn_z_loss = tensor(tup[1]);
    out.next_embed_pred = tensor(tup[2]);
    out.init_embeds = tensor(tup[3]);
    last_cache_ = py::reinterpret_borrow<py::object>(tup[4]);
    if (tup.size() == 7) {  // a looped net: (..., exit_logits, all_pred_logits)
      out.exit_logits = tensor(tup[5]);
      out.all_pred_logits = tensor(tup[6]);
    }
    return out;
  }
  bool output_is_log_prob() const override { return log_prob_; }
  bool add_continuous_pred_head() const override { return continuous_; }
  std::optional<int64_t> num_tokens() const override { return num_tokens_; }
  std::optional<arwrap::LinearHead> head() const override { return head_; }

  py::object take_cache() {
    py::object c = last_cache_;
    last_cache_ = py::none();
    return c;
  }

 private:
  py::object call_;
  bool log_prob_, continuous_;
  std::optional<int64_t> num_tokens_;
  std::optional<arwrap::LinearHead> head_;
  py::object last_cache_ = py::none();
};

arwrap::ARWrapperOptions make_options(int64_t ignore_index, int64_t pad_value, double mask_prob,
                                      std::optional<int64_t> mask_token_id) {
  return arwrap::ARWrapperOptions()
      .ignore_index(ignore_index)
      .pad_value(pad_value)
      .mask_prob(mask_prob)
      .mask_token_id(mask_token_id);
}

// An options table (arwrap/option_fields.h) for Python: [(name, type, default literal)].
py::list fields_list(const std::vector<arwrap::OptionField>& table) {
  py::list out;
  for (const auto& f : table) out.append(py::make_tuple(f.name, f.type, f.default_value));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "arwrap_cpp native core (libarwrap)";
  m.attr("__version__") = ARWRAP_VERSION;
  m.def("built_with_cuda", &arwrap::built_with_cuda, "True when libarwrap has its CUDA kernels");
  m.def("lowp_gemm_upcasts", [](at::ScalarType dtype) {
    return arwrap::ops::lowp_gemm_upcasts(c10::DeviceType::CPU, dtype);
  }, "True when CPU GEMMs in dtype take the float32 route (csrc/ops/low_precision_mm.h)");
  m.def("attention_cpu_kernel", [] { return std::string(arwrap::ops::cpu::attn::kernels().isa); },
        "The build of the fused CPU attention this process runs (csrc/ops/cpu/attention_simd.h)");
  m.def("distributed_available", &arwrap::distributed::available,
        "True when libarwrap has arwrap::distributed on c10d/Gloo (arwrap-train data parallelism)");

  // The native net's configuration string: parse + validate + print (ValueError on bad values).
  m.def("transformer_config", [](const std::string& config) {
    return arwrap::TransformerWrapperOptions::parse(config).to_string();
  });
  // The parameter table: (names, shapes, rotary_dim), in the order the forward takes them.
  m.def("transformer_parameters", [](const std::string& config) {
    const auto o = arwrap::TransformerWrapperOptions::parse(config);
    return py::make_tuple(o.parameter_names(), o.parameter_shapes(), o.rotary_dim());
  });
  // The configuration's fields: [(key, type, is_decoder_option, default or "")].
  m.def("transformer_fields", [] {
    py::list out;
    for (const auto& f : arwrap::config_fields()) out.append(py::make_tuple(f.key, f.type, f.decoder, f.default_value));
    return out;
  });
  // The other options structs' tables (arwrap/option_fields.h): Python's defaults come from them.
  m.def("shared_defaults", [] {
    namespace d = arwrap::defaults;
    py::dict out;
    out["ignore_index"] = d::ignore_index;
    out["next_embed_loss_weight"] = d::next_embed_loss_weight;
    out["looped_loss_threshold_exit"] = d::looped_loss_threshold_exit;
    out["looped_loss_slope"] = d::looped_loss_slope;
    out["looped_exit_loss_weight"] = d::looped_exit_loss_weight;
    return out;
  });
  m.def("wrapper_fields", [] { return fields_list(arwrap::wrapper_fields()); });
  m.def("autoregressive_loss_fields", [] { return fields_list(arwrap::autoregressive_loss_fields()); });
  m.def("generate_fields", [] { return fields_list(arwrap::generate_fields()); });
  m.def("beam_search_fields", [] { return fields_list(arwrap::beam_search_fields()); });
  m.def("transformer_init_parameters", [](const std::string& config, std::vector<at::Tensor> weights) {
    arwrap::init_parameters(arwrap::TransformerWrapperOptions::parse(config), weights);
  });
  m.def("transformer_rotary_inv_freq", [](const std::string& config) {
    return arwrap::TransformerWrapperOptions::parse(config).rotary_inv_freq();
  });
  // generate / beam_search of the native net (generate.cpp, beam_search.cpp); the sampling options as keywords,
  // their defaults those of GenerateOptions and BeamSearchOptions
  const arwrap::GenerateOptions gd;
  const arwrap::BeamSearchOptions bd;
  const arwrap::GenerateOptions& bs = bd.sampling();
  auto sampling = [](double temperature, const std::string& filter_logits_fn, std::optional<int64_t> top_k,
                     double top_k_frac, double top_p, double min_p, double top_a_pow, double top_a_ratio,
                     std::optional<int64_t> eos_token, int64_t pad_value, bool cache_kv,
                     std::optional<at::Tensor> prompt_lens, bool restrict_to_max_seq_len) {
    arwrap::GenerateOptions g;
    g.temperature(temperature).filter_logits_fn(filter_logits_fn).top_k(top_k).top_k_frac(top_k_frac);
    g.top_p(top_p).min_p(min_p).top_a_pow(top_a_pow).top_a_ratio(top_a_ratio).eos_token(eos_token);
    g.pad_value(pad_value).cache_kv(cache_kv).prompt_lens(prompt_lens).restrict_to_max_seq_len(restrict_to_max_seq_len);
    return g;
  };
  m.def(
      "generate",
      [sampling](const std::string& config, std::vector<at::Tensor> weights, const at::Tensor& prompts,
                 int64_t seq_len, double temperature, const std::string& filter_logits_fn,
                 std::optional<int64_t> top_k, double top_k_frac, double top_p, double min_p, double top_a_pow,
                 double top_a_ratio, std::optional<int64_t> eos_token, int64_t pad_value, bool cache_kv,
                 std::optional<at::Tensor> prompt_lens, bool restrict_to_max_seq_len,
                 std::vector<std::string> amateur_configs, std::vector<std::vector<at::Tensor>> amateur_weights,
                 std::vector<double> contrastive_alpha, std::vector<double> contrastive_beta,
                 std::optional<at::Generator> generator) {
        const auto o = arwrap::TransformerWrapperOptions::parse(config);
        arwrap::GenerateOptions g = sampling(temperature, filter_logits_fn, top_k, top_k_frac, top_p, min_p, top_a_pow,
                                             top_a_ratio, eos_token, pad_value, cache_kv, prompt_lens,
                                             restrict_to_max_seq_len);
        TORCH_CHECK_VALUE(amateur_weights.size() == amateur_configs.size() &&
                              contrastive_alpha.size() == amateur_configs.size() &&
                              contrastive_beta.size() == amateur_configs.size(),
                          "generate: one config, weight list, alpha and beta per amateur model");
        std::vector<arwrap::ContrastiveAmateur> amateurs;
        for (size_t i = 0; i < amateur_configs.size(); ++i) {
          amateurs.push_back({arwrap::TransformerWrapperOptions::parse(amateur_configs[i]), amateur_weights[i],
                              contrastive_alpha[i], contrastive_beta[i]});
        }
        g.amateurs(std::move(amateurs));
        py::gil_scoped_release release;
        return arwrap::generate(o, weights, prompts, seq_len, g, generator);
      },
      py::arg("config"), py::arg("weights"), py::arg("prompts"), py::arg("seq_len"),
      py::arg("temperature") = gd.temperature(), py::kw_only(), py::arg("filter_logits_fn") = gd.filter_logits_fn(),
      py::arg("top_k") = gd.top_k(), py::arg("top_k_frac") = gd.top_k_frac(), py::arg("top_p") = gd.top_p(),
      py::arg("min_p") = gd.min_p(), py::arg("top_a_pow") = gd.top_a_pow(), py::arg("top_a_ratio") = gd.top_a_ratio(),
      py::arg("eos_token") = gd.eos_token(), py::arg("pad_value") = gd.pad_value(), py::arg("cache_kv") = gd.cache_kv(),
      py::arg("prompt_lens") = py::none(), py::arg("restrict_to_max_seq_len") = gd.restrict_to_max_seq_len(),
      py::arg("amateur_configs") = std::vector<std::string>{},
      py::arg("amateur_weights") = std::vector<std::vector<at::Tensor>>{},
      py::arg("contrastive_alpha") = std::vector<double>{}, py::arg("contrastive_beta") = std::vector<double>{},
      py::arg("generator") = py::none());
  m.def(
      "beam_search",
      [sampling](const std::string& config, std::vector<at::Tensor> weights, const at::Tensor& prompts,
                 int64_t seq_len, int64_t beams, double temperature, bool stochastic,
                 const std::string& filter_logits_fn, std::optional<int64_t> top_k, double top_k_frac, double top_p,
                 double min_p, double top_a_pow, double top_a_ratio, int64_t pad_value, bool cache_kv,
                 std::optional<at::Tensor> prompt_lens, bool restrict_to_max_seq_len,
                 std::optional<at::Generator> generator) {
        const auto o = arwrap::TransformerWrapperOptions::parse(config);
        arwrap::BeamSearchOptions bo;
        bo.beams(beams).stochastic(stochastic);
        bo.sampling(sampling(temperature, filter_logits_fn, top_k, top_k_frac, top_p, min_p, top_a_pow, top_a_ratio,
                             std::nullopt, pad_value, cache_kv, prompt_lens, restrict_to_max_seq_len));
        py::gil_scoped_release release;
        return arwrap::beam_search(o, weights, prompts, seq_len, bo, generator);
      },
      py::arg("config"), py::arg("weights"), py::arg("prompts"), py::arg("seq_len"), py::arg("beams") = bd.beams(),
      py::arg("temperature") = bs.temperature(), py::arg("stochastic") = bd.stochastic(), py::kw_only(),
      py::arg("filter_logits_fn") = bs.filter_logits_fn(), py::arg("top_k") = bs.top_k(),
      py::arg("top_k_frac") = bs.top_k_frac(), py::arg("top_p") = bs.top_p(), py::arg("min_p") = bs.min_p(),
      py::arg("top_a_pow") = bs.top_a_pow(), py::arg("top_a_ratio") = bs.top_a_ratio(),
      py::arg("pad_value") = bs.pad_value(), py::arg("cache_kv") = bs.cache_kv(), py::arg("prompt_lens") = py::none(),
      py::arg("restrict_to_max_seq_len") = bs.restrict_to_max_seq_len(),
      py::arg("generator") = py::none());

  // arwrap-train's corpus reader (arwrap::read_corpus): the same bytes in Python.
  m.def(
      "read_corpus",
      [](const std::string& path, const std::string& suffix, size_t max_bytes) {
        std::string bytes;
        {
          py::gil_scoped_release release;
          bytes = arwrap::read_corpus(path, suffix, max_bytes).bytes;
        }
        return py::bytes(bytes);
      },
      py::arg("path"), py::arg("suffix"), py::arg("max_bytes"));

  // The native net's decoding linear (csrc/modules/small_batch_linear.h), for its tests.
  m.def("_small_batch_linear", [](const at::Tensor& x, const at::Tensor& weight, std::optional<at::Tensor> bias) {
    return arwrap::layers::small_batch_linear(x, weight, bias.value_or(at::Tensor()));
  });
  m.def("_small_batch_linear_applies", [](const at::Tensor& x, const at::Tensor& weight, std::optional<at::Tensor> bias) {
    return arwrap::layers::small_batch_linear_applies(x, weight, bias.value_or(at::Tensor()));
  });

  // The residual stream's add of a bf16 block output and the float32 accumulation of a bf16
  // product (csrc/ops/low_precision_mm.h), for their tests.
  m.def("_add_bf16", [](const at::Tensor& x, const at::Tensor& p) { return arwrap::ops::add_bf16(x, p); });
  m.def("_add_bf16_", [](at::Tensor out, const at::Tensor& p, bool assign) {
    arwrap::ops::add_bf16_(out, p, assign);
    return out;
  });

  // ARWrapperOptions::validate, for the Python wrapper's constructor (ValueError naming the value).
  m.def("validate_wrapper_options", [](double mask_prob, double next_embed_loss_weight) {
    arwrap::ARWrapperOptions().mask_prob(mask_prob).next_embed_loss_weight(next_embed_loss_weight).validate();
  });

  const arwrap::ARWrapperOptions wd;  // the keyword defaults below
  py::class_<arwrap::ARWrapperImpl, std::shared_ptr<arwrap::ARWrapperImpl>>(m, "ARWrapper")
      .def(py::init([](py::object call, bool output_is_log_prob, bool add_continuous_pred_head,
                       std::optional<int64_t> num_tokens, int64_t ignore_index, int64_t pad_value, double mask_prob,
                       std::optional<int64_t> mask_token_id, bool add_attn_z_loss, double next_embed_loss_weight,
                       std::optional<at::Tensor> head_weight, std::optional<at::Tensor> head_bias, double head_scale,
                       double looped_loss_threshold_exit, double looped_loss_slope, double looped_exit_loss_weight) {
             std::optional<arwrap::LinearHead> head;
             if (head_weight.has_value()) {
               head = arwrap::LinearHead{*head_weight, head_bias.value_or(at::Tensor()), head_scale};
             }
             const bool fused = head.has_value();
             auto net = std::make_shared<PythonNet>(std::move(call), output_is_log_prob, add_continuous_pred_head,
                                                    num_tokens, std::move(head));
             return std::make_shared<arwrap::ARWrapperImpl>(
                 net, make_options(ignore_index, pad_value, mask_prob, mask_token_id)
                          .add_attn_z_loss(add_attn_z_loss)
                          .next_embed_loss_weight(next_embed_loss_weight)
                          .fused_head(fused)
                          .looped_loss_threshold_exit(looped_loss_threshold_exit)
                          .looped_loss_slope(looped_loss_slope)
                          .looped_exit_loss_weight(looped_exit_loss_weight));
           }),
           py::arg("call"), py::arg("output_is_log_prob"), py::arg("add_continuous_pred_head"), py::arg("num_tokens"),
           py::arg("ignore_index"), py::arg("pad_value"), py::arg("mask_prob"), py::arg("mask_token_id"),
           py::arg("add_attn_z_loss"), py::arg("next_embed_loss_weight"), py::arg("head_weight") = py::none(),
           py::arg("head_bias") = py::none(), py::arg("head_scale") = 1.0,
           py::arg("looped_loss_threshold_exit") = wd.looped_loss_threshold_exit(),
           py::arg("looped_loss_slope") = wd.looped_loss_slope(),
           py::arg("looped_exit_loss_weight") = wd.looped_exit_loss_weight())
      .def_static(
          "from_script_module",
          [](py::object script_module, int64_t ignore_index, int64_t pad_value, double mask_prob,
             std::optional<int64_t> mask_token_id) {
            // a live torch.jit.ScriptModule (its C++ object is shared, so are its parameters)
            auto mod = std::make_shared<torch::jit::Module>(script_module.attr("_c").cast<torch::jit::Module>());
            auto net = std::make_shared<arwrap::TorchScriptNet>(mod);
            return std::make_shared<arwrap::ARWrapperImpl>(net, make_options(ignore_index, pad_value, mask_prob,
                                                                             mask_token_id));
          },
          py::arg("script_module"), py::arg("ignore_index") = wd.ignore_index(), py::arg("pad_value") = wd.pad_value(),
          py::arg("mask_prob") = wd.mask_prob(), py::arg("mask_token_id") = wd.mask_token_id())
      .def(
          "forward",
          [](arwrap::ARWrapperImpl& self, const at::Tensor& x, std::optional<at::Tensor> lens,
             std::optional<at::Tensor> prepend_embeds, std::optional<at::Tensor> mask_noise,
             std::optional<at::Generator> generator, bool return_outputs) {
            arwrap::ARForwardArgs args;
            args.lens(lens).prepend_embeds(prepend_embeds).mask_noise(mask_noise).generator(generator);
            args.return_outputs(return_outputs);
            arwrap::AROutput out = self.forward(x, args);
            py::object cache = py::none();
            if (auto pn = std::dynamic_pointer_cast<PythonNet>(self.net())) cache = pn->take_cache();
            py::object logits = out.logits.defined() ? py::cast(out.logits) : py::none();
            return py::make_tuple(out.loss, logits, cache);
          },
          py::arg("x"), py::arg("lens") = py::none(), py::arg("prepend_embeds") = py::none(),
          py::arg("mask_noise") = py::none(), py::arg("generator") = py::none(), py::arg("return_outputs") = false);
}
