// TransformerWrapperOptions: validation, the configuration string (one table of fields
// for printing, parsing and Python's defaults), the parameter table and initialisation.
#include <arwrap/transformer_options.h>

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <sstream>

namespace arwrap {

void TransformerWrapperOptions::validate() const {
  const auto& d = attn_layers();
  auto positive = [](const char* name, int64_t v) {
    TORCH_CHECK_VALUE(v > 0, "TransformerWrapper: ", name, " must be positive, got ", v);
  };
  positive("num_tokens", num_tokens());
  positive("max_seq_len", max_seq_len());
  positive("dim", d.dim());
  positive("depth", d.depth());
  positive("heads", d.heads());
  positive("attn_dim_head", d.attn_dim_head());
  TORCH_CHECK_VALUE(std::isfinite(d.ff_mult()) && static_cast<int64_t>(d.dim() * d.ff_mult()) > 0,
                    "TransformerWrapper: ff_mult must give a positive inner dimension int(dim * ff_mult), got ff_mult=",
                    d.ff_mult());
  auto probability = [](const char* name, double p) {
    TORCH_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p < 1.0, "TransformerWrapper: ", name,
                      " must be in [0, 1), got ", p);
  };
  probability("emb_dropout", emb_dropout());
  probability("attn_dropout", d.attn_dropout());
  probability("ff_dropout", d.ff_dropout());
  TORCH_CHECK_VALUE(d.rotary_emb_dim() >= 0 && d.rotary_emb_dim() <= d.attn_dim_head(),
                    "TransformerWrapper: rotary_emb_dim must be in [0, attn_dim_head=", d.attn_dim_head(), "], got ",
                    d.rotary_emb_dim());
  TORCH_CHECK_VALUE(!d.rotary_pos_emb() || rotary_dim() <= d.attn_dim_head(),
                    "TransformerWrapper: the rotary dimension ", rotary_dim(), " exceeds attn_dim_head ",
                    d.attn_dim_head());
  TORCH_CHECK_VALUE(!d.attn_qk_norm() || d.attn_dim_head() > 2,
                    "TransformerWrapper: attn_qk_norm needs attn_dim_head > 2, got ", d.attn_dim_head());
  TORCH_CHECK_VALUE(std::isfinite(d.attn_qk_norm_scale()), "TransformerWrapper: attn_qk_norm_scale must be finite");
  TORCH_CHECK_VALUE(std::isfinite(attn_z_loss_weight()), "TransformerWrapper: attn_z_loss_weight must be finite");
}

namespace {

// x-transformers' rotary_emb_dim: the given one, or attn_dim_head / 2 (0 = not given)
int64_t rotary_emb_dim(const DecoderOptions& d) {
  return d.rotary_emb_dim() > 0 ? d.rotary_emb_dim() : d.attn_dim_head() / 2;
}

}  // namespace

int64_t TransformerWrapperOptions::rotary_dim() const {
  const auto& d = attn_layers();
  if (!d.rotary_pos_emb()) return 0;
  const int64_t r = rotary_emb_dim(d);
  return 2 * ((r + 1) / 2);  // inv_freq over arange(0, r, 2), each frequency used twice
}

at::Tensor TransformerWrapperOptions::rotary_inv_freq() const {
  const int64_t r = rotary_emb_dim(attn_layers());
  return at::pow(10000.0, at::arange(0, r, 2, at::kFloat) / static_cast<double>(r)).reciprocal();
}

// ------------------------------------------------------------------ configuration string

namespace {

std::string fmt_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// The whole of v as a number (std::stoll / std::stod), or a ValueError naming the key.
template <typename T, typename Convert>
T parse_number(const std::string& key, const std::string& v, Convert convert, const char* what) {
  size_t used = 0;
  T out{};
  try {
    out = convert(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  TORCH_CHECK_VALUE(used == v.size() && !v.empty(), "TransformerWrapper config: ", key, " must be ", what, ", got '", v,
                    "'");
  return out;
}
int64_t parse_int(const std::string& key, const std::string& v) {
  return parse_number<int64_t>(key, v, [](const std::string& s, size_t* n) { return std::stoll(s, n); }, "an integer");
}
double parse_double(const std::string& key, const std::string& v) {
  return parse_number<double>(key, v, [](const std::string& s, size_t* n) { return std::stod(s, n); }, "a number");
}
bool parse_bool(const std::string& key, const std::string& v) {
  if (v == "1" || v == "true" || v == "True") return true;
  if (v == "0" || v == "false" || v == "False") return false;
  TORCH_CHECK_VALUE(false, "TransformerWrapper config: ", key, " must be true or false, got '", v, "'");
}

// key -> (type, owner, getter, setter) over the options: one table for to_string, parse
// and config_fields
struct Field {
  const char* type;
  bool decoder;
  bool required;
  std::function<std::string(const TransformerWrapperOptions&)> get;
  std::function<void(TransformerWrapperOptions&, const std::string&)> set;
};

#define ARWRAP_FIELD(type, obj, dec, req, name, print, parse) \
  { #name, {type, dec, req, [](const TransformerWrapperOptions& o) { return print(obj.name()); }, \
            [](TransformerWrapperOptions& o, const std::string& v) { obj.name(parse(#name, v)); }} }
#define ARWRAP_INT(obj, dec, req, name) ARWRAP_FIELD("int", obj, dec, req, name, std::to_string, parse_int)
#define ARWRAP_DBL(obj, dec, name) ARWRAP_FIELD("float", obj, dec, false, name, fmt_double, parse_double)
#define ARWRAP_BOOL(obj, dec, name) \
  ARWRAP_FIELD("bool", obj, dec, false, name, [](bool b) { return std::string(b ? "true" : "false"); }, parse_bool)

const std::vector<std::pair<std::string, Field>>& fields() {
  static const std::vector<std::pair<std::string, Field>> table = {
      ARWRAP_INT(o, false, true, num_tokens),
      ARWRAP_INT(o, false, true, max_seq_len),
      ARWRAP_INT(o.attn_layers(), true, true, dim),
      ARWRAP_INT(o.attn_layers(), true, true, depth),
      ARWRAP_INT(o.attn_layers(), true, false, heads),
      ARWRAP_INT(o.attn_layers(), true, false, attn_dim_head),
      ARWRAP_DBL(o.attn_layers(), true, ff_mult),
      ARWRAP_BOOL(o.attn_layers(), true, ff_glu),
      ARWRAP_BOOL(o.attn_layers(), true, ff_swish),
      ARWRAP_BOOL(o.attn_layers(), true, rotary_pos_emb),
      ARWRAP_INT(o.attn_layers(), true, false, rotary_emb_dim),
      ARWRAP_BOOL(o.attn_layers(), true, use_rmsnorm),
      ARWRAP_BOOL(o.attn_layers(), true, norm_add_unit_offset),
      ARWRAP_BOOL(o.attn_layers(), true, attn_qk_norm),
      ARWRAP_DBL(o.attn_layers(), true, attn_qk_norm_scale),
      ARWRAP_DBL(o.attn_layers(), true, attn_dropout),
      ARWRAP_DBL(o.attn_layers(), true, ff_dropout),
      ARWRAP_BOOL(o.attn_layers(), true, checkpoint_layers),
      ARWRAP_DBL(o, false, emb_dropout),
      ARWRAP_BOOL(o, false, use_abs_pos_emb),
      ARWRAP_BOOL(o, false, tie_embedding),
      ARWRAP_BOOL(o, false, add_continuous_pred_head),
      ARWRAP_DBL(o, false, attn_z_loss_weight),
  };
  return table;
}
#undef ARWRAP_FIELD
#undef ARWRAP_INT
#undef ARWRAP_DBL
#undef ARWRAP_BOOL

}  // namespace

std::vector<ConfigField> config_fields() {
  const TransformerWrapperOptions defaults(0, 0, DecoderOptions(0, 0));
  std::vector<ConfigField> out;
  for (const auto& [key, f] : fields()) {
    out.push_back({key, f.type, f.decoder, f.required ? std::string() : f.get(defaults)});
  }
  return out;
}

std::string TransformerWrapperOptions::to_string() const {
  std::string out;
  for (const auto& [key, field] : fields()) {
    if (!out.empty()) out += ",";
    out += key + "=" + field.get(*this);
  }
  return out;
}

TransformerWrapperOptions TransformerWrapperOptions::parse(const std::string& text) {
  TransformerWrapperOptions o(0, 0, DecoderOptions(0, 0));
  std::map<std::string, bool> seen;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    TORCH_CHECK_VALUE(eq != std::string::npos, "TransformerWrapper config: expected key=value, got '", item, "'");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    bool known = false;
    for (const auto& [name, field] : fields()) {
      if (name == key) {
        field.set(o, value);
        known = true;
      }
    }
    TORCH_CHECK_VALUE(known, "TransformerWrapper config: unknown option '", key, "'");
    seen[key] = true;
  }
  for (const auto& [key, field] : fields()) {
    TORCH_CHECK_VALUE(!field.required || seen.count(key), "TransformerWrapper config: '", key, "' is missing in '",
                      text, "'");
  }
  o.validate();
  return o;
}

// ------------------------------------------------------------------ the parameter table

std::vector<ParamSpec> TransformerWrapperOptions::parameter_specs() const {
  const auto& d = attn_layers();
  const int64_t D = d.dim(), inner = d.heads() * d.attn_dim_head(), ff = static_cast<int64_t>(D * d.ff_mult());
  const int64_t ff_in = d.ff_glu() ? 2 * ff : ff;
  const std::string norm = d.use_rmsnorm() ? "g" : "gamma";
  using R = ParamRole;
  using I = ParamInit;
  std::vector<ParamSpec> s;
  auto add = [&](std::string name, std::vector<int64_t> shape, R role, int64_t layer, I init, int64_t fan_in = 0) {
    s.push_back({std::move(name), std::move(shape), role, layer, init, fan_in});
  };
  add("token_emb.emb.weight", {num_tokens(), D}, R::TokenEmb, -1, I::KaimingNormal);
  if (use_abs_pos_emb()) add("pos_emb.emb.weight", {max_seq_len(), D}, R::PosEmb, -1, I::Normal);
  for (int64_t i = 0; i < d.depth(); ++i) {
    const std::string a = "attn_layers.layers." + std::to_string(2 * i) + ".";
    const std::string f = "attn_layers.layers." + std::to_string(2 * i + 1) + ".";
    add(a + "0.0." + norm, {D}, R::AttnNorm, i, I::NormGain);
    add(a + "1.to_q.weight", {inner, D}, R::ToQ, i, I::LinearWeight);
    add(a + "1.to_k.weight", {inner, D}, R::ToK, i, I::LinearWeight);
    add(a + "1.to_v.weight", {inner, D}, R::ToV, i, I::LinearWeight);
    add(a + "1.to_out.weight", {D, inner}, R::ToOut, i, I::LinearWeight);
    add(f + "0.0." + norm, {D}, R::FFNorm, i, I::NormGain);
    const std::string in = d.ff_glu() ? f + "1.ff.0.proj." : f + "1.ff.0.0.";
    add(in + "weight", {ff_in, D}, R::FFInWeight, i, I::LinearWeight);
    add(in + "bias", {ff_in}, R::FFInBias, i, I::LinearBias, D);
    add(f + "1.ff.2.weight", {D, ff}, R::FFOutWeight, i, I::LinearWeight);
    add(f + "1.ff.2.bias", {D}, R::FFOutBias, i, I::LinearBias, ff);
  }
  add("attn_layers.final_norm." + norm, {D}, R::FinalNorm, -1, I::NormGain);
  if (!tie_embedding()) add("to_logits.weight", {num_tokens(), D}, R::ToLogits, -1, I::LinearWeight);
  if (add_continuous_pred_head()) {
    add("to_next_embed_pred.0.weight", {D, D}, R::NextEmbed0, -1, I::LinearWeight);
    add("to_next_embed_pred.2.weight", {D, D}, R::NextEmbed2, -1, I::LinearWeight);
  }
  return s;
}

std::vector<std::string> TransformerWrapperOptions::parameter_names() const {
  std::vector<std::string> out;
  for (const auto& p : parameter_specs()) out.push_back(p.name);
  return out;
}

std::vector<std::vector<int64_t>> TransformerWrapperOptions::parameter_shapes() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& p : parameter_specs()) out.push_back(p.shape);
  return out;
}

void init_parameters(const TransformerWrapperOptions& options, at::TensorList weights) {
  const auto specs = options.parameter_specs();
  TORCH_CHECK_VALUE(weights.size() == specs.size(), "init_parameters: expected ", specs.size(),
                    " weights (parameter_specs()), got ", weights.size());
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < specs.size(); ++i) {
    at::Tensor t = weights[i];
    switch (specs[i].init) {
      case ParamInit::KaimingNormal: torch::nn::init::kaiming_normal_(t); break;
      case ParamInit::Normal: t.normal_(); break;
      case ParamInit::NormGain: t.fill_(options.attn_layers().norm_add_unit_offset() ? 0.0 : 1.0); break;
      case ParamInit::LinearWeight: torch::nn::init::kaiming_uniform_(t, std::sqrt(5.0)); break;
      case ParamInit::LinearBias: {
        const double bound = 1.0 / std::sqrt(static_cast<double>(specs[i].fan_in));
        t.uniform_(-bound, bound);
        break;
      }
    }
  }
}

}  // namespace arwrap
