// arwrap::TransformerWrapper: x-transformers' TransformerWrapper(Decoder(...)) forward,
// generation with a key/value cache, and the C++ module. See <arwrap/transformer.h>.
#include <arwrap/transformer.h>

#include "../ops/sync_checks.h"
#include "../ops/tracing.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/nn/init.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace arwrap {

// ------------------------------------------------------------------ options

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

int64_t TransformerWrapperOptions::rotary_dim() const {
  const auto& d = attn_layers();
  if (!d.rotary_pos_emb()) return 0;
  const int64_t r = d.rotary_emb_dim() > 0 ? d.rotary_emb_dim() : d.attn_dim_head() / 2;
  return 2 * ((r + 1) / 2);  // x-transformers: inv_freq over arange(0, r, 2), each frequency twice
}

namespace {

std::string fmt_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// key -> (getter, setter) over the options, one table for to_string and parse
struct Field {
  std::function<std::string(const TransformerWrapperOptions&)> get;
  std::function<void(TransformerWrapperOptions&, const std::string&)> set;
};

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

#define ARWRAP_INT(obj, name) \
  { #name, {[](const TransformerWrapperOptions& o) { return std::to_string(obj.name()); }, \
            [](TransformerWrapperOptions& o, const std::string& v) { obj.name(parse_int(#name, v)); }} }
#define ARWRAP_DBL(obj, name) \
  { #name, {[](const TransformerWrapperOptions& o) { return fmt_double(obj.name()); }, \
            [](TransformerWrapperOptions& o, const std::string& v) { obj.name(parse_double(#name, v)); }} }
#define ARWRAP_BOOL(obj, name) \
  { #name, {[](const TransformerWrapperOptions& o) { return std::string(obj.name() ? "true" : "false"); }, \
            [](TransformerWrapperOptions& o, const std::string& v) { obj.name(parse_bool(#name, v)); }} }

const std::vector<std::pair<std::string, Field>>& fields() {
  static const std::vector<std::pair<std::string, Field>> table = {
      ARWRAP_INT(o, num_tokens),
      ARWRAP_INT(o, max_seq_len),
      ARWRAP_INT(o.attn_layers(), dim),
      ARWRAP_INT(o.attn_layers(), depth),
      ARWRAP_INT(o.attn_layers(), heads),
      ARWRAP_INT(o.attn_layers(), attn_dim_head),
      ARWRAP_DBL(o.attn_layers(), ff_mult),
      ARWRAP_BOOL(o.attn_layers(), ff_glu),
      ARWRAP_BOOL(o.attn_layers(), ff_swish),
      ARWRAP_BOOL(o.attn_layers(), rotary_pos_emb),
      ARWRAP_INT(o.attn_layers(), rotary_emb_dim),
      ARWRAP_BOOL(o.attn_layers(), use_rmsnorm),
      ARWRAP_BOOL(o.attn_layers(), norm_add_unit_offset),
      ARWRAP_BOOL(o.attn_layers(), attn_qk_norm),
      ARWRAP_DBL(o.attn_layers(), attn_qk_norm_scale),
      ARWRAP_DBL(o.attn_layers(), attn_dropout),
      ARWRAP_DBL(o.attn_layers(), ff_dropout),
      ARWRAP_DBL(o, emb_dropout),
      ARWRAP_BOOL(o, use_abs_pos_emb),
      ARWRAP_BOOL(o, tie_embedding),
      ARWRAP_BOOL(o, add_continuous_pred_head),
      ARWRAP_DBL(o, attn_z_loss_weight),
  };
  return table;
}
#undef ARWRAP_INT
#undef ARWRAP_DBL
#undef ARWRAP_BOOL

}  // namespace

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
  for (const char* required : {"num_tokens", "max_seq_len", "dim", "depth"}) {
    TORCH_CHECK_VALUE(seen.count(required), "TransformerWrapper config: '", required, "' is missing in '", text, "'");
  }
  o.validate();
  return o;
}

std::vector<std::string> TransformerWrapperOptions::parameter_names() const {
  const auto& d = attn_layers();
  const std::string norm = d.use_rmsnorm() ? "g" : "gamma";
  std::vector<std::string> names = {"token_emb.emb.weight"};
  if (use_abs_pos_emb()) names.push_back("pos_emb.emb.weight");
  for (int64_t i = 0; i < d.depth(); ++i) {
    const std::string a = "attn_layers.layers." + std::to_string(2 * i) + ".";
    const std::string f = "attn_layers.layers." + std::to_string(2 * i + 1) + ".";
    names.push_back(a + "0.0." + norm);
    for (const char* w : {"to_q", "to_k", "to_v", "to_out"}) names.push_back(a + "1." + w + ".weight");
    names.push_back(f + "0.0." + norm);
    const std::string in = d.ff_glu() ? f + "1.ff.0.proj." : f + "1.ff.0.0.";
    names.push_back(in + "weight");
    names.push_back(in + "bias");
    names.push_back(f + "1.ff.2.weight");
    names.push_back(f + "1.ff.2.bias");
  }
  names.push_back("attn_layers.final_norm." + norm);
  if (!tie_embedding()) names.push_back("to_logits.weight");
  if (add_continuous_pred_head()) {
    names.push_back("to_next_embed_pred.0.weight");
    names.push_back("to_next_embed_pred.2.weight");
  }
  return names;
}

std::vector<std::vector<int64_t>> TransformerWrapperOptions::parameter_shapes() const {
  const auto& d = attn_layers();
  const int64_t D = d.dim(), inner = d.heads() * d.attn_dim_head(), ff = static_cast<int64_t>(D * d.ff_mult());
  std::vector<std::vector<int64_t>> shapes = {{num_tokens(), D}};
  if (use_abs_pos_emb()) shapes.push_back({max_seq_len(), D});
  for (int64_t i = 0; i < d.depth(); ++i) {
    shapes.push_back({D});
    for (int j = 0; j < 3; ++j) shapes.push_back({inner, D});
    shapes.push_back({D, inner});
    shapes.push_back({D});
    const int64_t in = d.ff_glu() ? 2 * ff : ff;
    shapes.push_back({in, D});
    shapes.push_back({in});
    shapes.push_back({D, ff});
    shapes.push_back({D});
  }
  shapes.push_back({D});
  if (!tie_embedding()) shapes.push_back({num_tokens(), D});
  if (add_continuous_pred_head()) {
    shapes.push_back({D, D});
    shapes.push_back({D, D});
  }
  return shapes;
}

// ------------------------------------------------------------------ forward

namespace {

// The weights by role; built from the flat list in parameter_names() order.
struct Weights {
  at::Tensor token_emb, pos_emb, final_norm, to_logits, next0, next2;
  struct Layer {
    at::Tensor attn_norm, q, k, v, out, ff_norm, ff_in_w, ff_in_b, ff_out_w, ff_out_b;
  };
  std::vector<Layer> layers;
};

Weights unpack_weights(const TransformerWrapperOptions& o, at::TensorList w) {
  const auto names = o.parameter_names();
  const auto shapes = o.parameter_shapes();
  TORCH_CHECK_VALUE(w.size() == names.size(), "TransformerWrapper: expected ", names.size(),
                    " weights (parameter_names()), got ", w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    TORCH_CHECK_VALUE(w[i].defined() && w[i].sizes() == at::IntArrayRef(shapes[i]), "TransformerWrapper: weight '",
                      names[i], "' must have shape ", at::IntArrayRef(shapes[i]), ", got ",
                      w[i].defined() ? c10::str(w[i].sizes()) : std::string("nothing"));
    TORCH_CHECK_VALUE(at::isFloatingType(w[i].scalar_type()) && w[i].scalar_type() == w[0].scalar_type() &&
                          w[i].device() == w[0].device(),
                      "TransformerWrapper: weight '", names[i], "' is ", w[i].scalar_type(), " on ", w[i].device(),
                      "; every weight must be floating point, of one dtype, on one device (", w[0].scalar_type(),
                      " on ", w[0].device(), ")");
  }
  Weights r;
  size_t i = 0;
  r.token_emb = w[i++];
  if (o.use_abs_pos_emb()) r.pos_emb = w[i++];
  for (int64_t l = 0; l < o.attn_layers().depth(); ++l) {
    Weights::Layer L;
    L.attn_norm = w[i++];
    L.q = w[i++];
    L.k = w[i++];
    L.v = w[i++];
    L.out = w[i++];
    L.ff_norm = w[i++];
    L.ff_in_w = w[i++];
    L.ff_in_b = w[i++];
    L.ff_out_w = w[i++];
    L.ff_out_b = w[i++];
    r.layers.push_back(L);
  }
  r.final_norm = w[i++];
  if (!o.tie_embedding()) r.to_logits = w[i++];
  if (o.add_continuous_pred_head()) {
    r.next0 = w[i++];
    r.next2 = w[i++];
  }
  return r;
}

// LayerNorm (no affine, eps 1e-5) * gamma, or F.normalize(x) * sqrt(dim) * g;
// with unit_offset the stored value is gamma - 1
at::Tensor norm(const at::Tensor& x, const at::Tensor& g_, bool rms, bool unit_offset) {
  const at::Tensor g = unit_offset ? g_ + 1.0 : g_;
  // normalise, then scale, as x-transformers does: layer_norm's fused affine backward
  // reduces gamma's gradient in an order that depends on the thread count
  if (!rms) return at::layer_norm(x, {x.size(-1)}, {}, {}, 1e-5) * g;
  const at::Tensor n = at::linalg_vector_norm(x, 2, {-1}, true).clamp_min(1e-12);
  return x / n * (g * std::sqrt(static_cast<double>(x.size(-1))));
}

// x-transformers' rotary embedding on the first rot dims, pairs interleaved:
// (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin). cos/sin: (n, rot).
at::Tensor rotate(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rot = cos.size(-1);
  at::Tensor head = t.narrow(-1, 0, rot);
  const auto sizes = head.sizes().vec();
  auto pairs = head.reshape({-1, rot / 2, 2}).unbind(-1);
  at::Tensor rotated = at::stack({-pairs[1], pairs[0]}, -1).reshape(sizes);
  at::Tensor out = head * cos + rotated * sin;
  if (rot == t.size(-1)) return out;
  return at::cat({out, t.narrow(-1, rot, t.size(-1) - rot)}, -1);
}

}  // namespace

NetOutputs transformer_forward(const TransformerWrapperOptions& o, at::TensorList weights, const NetInputs& in,
                               bool training, KVCache* cache) {
  const Weights W = unpack_weights(o, weights);
  const auto& d = o.attn_layers();
  const at::Tensor& tokens = in.tokens;
  TORCH_CHECK_VALUE(tokens.defined() && tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
                    "TransformerWrapper: tokens must be 2-D int64 (batch, seq_len), got ",
                    tokens.defined() ? c10::str(tokens.scalar_type(), " ", tokens.sizes()) : std::string("nothing"));
  TORCH_CHECK_VALUE(tokens.device() == W.token_emb.device(), "TransformerWrapper: tokens are on ", tokens.device(),
                    " but the weights on ", W.token_emb.device());
  const int64_t b = tokens.size(0), n = tokens.size(1), D = d.dim(), H = d.heads(), dh = d.attn_dim_head();
  // on a GPU at::embedding asserts on the device instead (ops/sync_checks.h)
  if (ops::has_real_data(tokens) && tokens.numel() > 0 && ops::host_checks(tokens)) {
    const auto [lo, hi] = at::aminmax(tokens);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < o.num_tokens(),
                      "TransformerWrapper: tokens must be in [0, num_tokens=", o.num_tokens(), "), got values in [",
                      lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
  }
  const int64_t offset = cache ? cache->offset + cache->length : 0;
  TORCH_CHECK_VALUE(!cache || (!in.prepend_embeds.defined() && !in.self_attn_kv_mask.defined() &&
                               !in.return_attn_z_loss && !in.return_next_embed_pred),
                    "TransformerWrapper: decoding with a key/value cache takes tokens only");

  at::Tensor x = at::embedding(W.token_emb, tokens);
  if (o.use_abs_pos_emb()) {
    TORCH_CHECK_VALUE(offset + n <= o.max_seq_len(), "TransformerWrapper: sequence length ", offset + n,
                      " exceeds max_seq_len=", o.max_seq_len(), " of the absolute positional embedding");
    const at::Tensor pos = at::arange(offset, offset + n, tokens.options());
    x = x + at::embedding(W.pos_emb, pos) * (1.0 / std::sqrt(static_cast<double>(D)));
  }
  int64_t p = 0;
  if (in.prepend_embeds.defined()) {
    const at::Tensor& pe = in.prepend_embeds;
    TORCH_CHECK_VALUE(pe.dim() == 3 && pe.size(0) == b && pe.size(2) == D,
                      "TransformerWrapper: prepend_embeds must be (batch=", b, ", prepend_len, dim=", D, "), got ",
                      pe.sizes());
    p = pe.size(1);
    x = at::cat({pe.to(x.scalar_type()), x}, 1);
  }
  const int64_t m = p + n;  // positions through the layers
  at::Tensor key_mask;      // (b, m) true = kept
  if (in.self_attn_kv_mask.defined()) {
    const at::Tensor& km = in.self_attn_kv_mask;
    TORCH_CHECK_VALUE(km.scalar_type() == at::kBool && km.dim() == 2 && km.size(0) == b && km.size(1) == n,
                      "TransformerWrapper: self_attn_kv_mask must be bool (batch=", b, ", seq_len=", n, "), got ",
                      km.scalar_type(), " ", km.sizes());
    key_mask = p > 0 ? at::cat({at::ones({b, p}, km.options()), km}, 1) : km;
  }
  const at::Tensor init_embeds = x;
  if (training && o.emb_dropout() > 0) x = at::dropout(x, o.emb_dropout(), true);

  at::Tensor cos, sin;
  if (const int64_t rot = o.rotary_dim(); rot > 0) {
    const int64_t r = d.rotary_emb_dim() > 0 ? d.rotary_emb_dim() : dh / 2;
    const auto fopt = x.options().dtype(at::kFloat);
    const at::Tensor inv_freq = at::pow(10000.0, at::arange(0, r, 2, fopt) / static_cast<double>(r)).reciprocal();
    const at::Tensor t = at::arange(offset, offset + m, fopt);
    const at::Tensor freqs = at::outer(t, inv_freq).repeat_interleave(2, -1);  // (m, rot)
    cos = freqs.cos().to(x.scalar_type());
    sin = freqs.sin().to(x.scalar_type());
  }
  if (cache && cache->k.empty()) {
    cache->k.resize(d.depth());
    cache->v.resize(d.depth());
  }

  const double scale = d.attn_qk_norm() ? d.attn_qk_norm_scale() : 1.0 / std::sqrt(static_cast<double>(dh));
  const double attn_p = training ? d.attn_dropout() : 0.0;
  at::Tensor lse_sum;
  std::optional<at::Tensor> sdpa_mask;
  bool causal = true;
  if (key_mask.defined()) {
    const at::Tensor c = at::ones({m, m}, key_mask.options()).tril();
    sdpa_mask = c.unsqueeze(0).unsqueeze(0).logical_and(key_mask.unsqueeze(1).unsqueeze(1));  // (b, 1, m, m)
    causal = false;
  }
  for (int64_t l = 0; l < d.depth(); ++l) {
    const auto& L = W.layers[l];
    const at::Tensor h = norm(x, L.attn_norm, d.use_rmsnorm(), d.norm_add_unit_offset());
    auto heads = [&](const at::Tensor& w) { return at::linear(h, w).view({b, m, H, dh}).transpose(1, 2); };
    at::Tensor q = heads(L.q), k = heads(L.k), v = heads(L.v);
    if (d.attn_qk_norm()) {
      q = q / at::linalg_vector_norm(q, 2, {-1}, true).clamp_min(1e-12);
      k = k / at::linalg_vector_norm(k, 2, {-1}, true).clamp_min(1e-12);
    }
    if (cos.defined()) {
      q = rotate(q, cos, sin);
      k = rotate(k, cos, sin);
    }
    int64_t mk = m;
    if (cache) {
      if (cache->length > 0) {
        k = at::cat({cache->k[l], k}, 2);
        v = at::cat({cache->v[l], v}, 2);
      }
      cache->k[l] = k;
      cache->v[l] = v;
      mk = k.size(2);
    }
    at::Tensor a;
    if (mk == m) {
      a = at::scaled_dot_product_attention(q, k, v, sdpa_mask, attn_p, causal, scale);
    } else if (m == 1) {  // one new position sees the whole cache
      a = at::scaled_dot_product_attention(q, k, v, std::nullopt, attn_p, false, scale);
    } else {  // new rows i see keys j <= i + (mk - m)
      const at::Tensor allowed = at::ones({m, mk}, tokens.options().dtype(at::kBool)).tril(mk - m);
      a = at::scaled_dot_product_attention(q, k, v, allowed, attn_p, false, scale);
    }
    if (in.return_attn_z_loss) {
      std::optional<at::Tensor> km;
      if (key_mask.defined()) km = key_mask;
      static auto lse_op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("arwrap::attention_lse", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, double, bool)>();
      at::Tensor lse = lse_op.call(q, k, km, scale, true);
      lse_sum = lse_sum.defined() ? lse_sum + lse : lse;
    }
    x = x + at::linear(a.transpose(1, 2).reshape({b, m, H * dh}), L.out);

    const at::Tensor hf = norm(x, L.ff_norm, d.use_rmsnorm(), d.norm_add_unit_offset());
    at::Tensor f = at::linear(hf, L.ff_in_w, L.ff_in_b);
    if (d.ff_glu()) {
      auto parts = f.chunk(2, -1);
      f = parts[0] * (d.ff_swish() ? at::silu(parts[1]) : at::gelu(parts[1]));
    } else {
      f = d.ff_swish() ? at::silu(f) : at::gelu(f);
    }
    if (training && d.ff_dropout() > 0) f = at::dropout(f, d.ff_dropout(), true);
    x = x + at::linear(f, L.ff_out_w, L.ff_out_b);
  }
  if (cache) cache->length += n;
  x = norm(x, W.final_norm, d.use_rmsnorm(), d.norm_add_unit_offset());

  NetOutputs out;
  if (in.return_embeddings) {
    out.embeddings = x;
  } else if (o.tie_embedding()) {
    out.logits = at::linear(x, W.token_emb) * (1.0 / std::sqrt(static_cast<double>(D)));
  } else {
    out.logits = at::linear(x, W.to_logits);
  }
  if (in.return_attn_z_loss) {
    out.attn_z_loss = lse_sum.square().sum(1).mean() * o.attn_z_loss_weight();
  }
  if (in.return_next_embed_pred) {
    TORCH_CHECK_VALUE(o.add_continuous_pred_head(),
                      "TransformerWrapper: return_next_embed_pred needs add_continuous_pred_head=True");
    out.next_embed_pred = at::linear(at::silu(at::linear(x, W.next0)), W.next2);
    out.init_embeds = init_embeds;
  }
  return out;
}

// ------------------------------------------------------------------ generate

namespace {

at::Tensor filter_logits(const at::Tensor& logits, const GenerateOptions& g) {
  const std::string& fn = g.filter_logits_fn();
  const double inf = std::numeric_limits<double>::infinity();
  if (fn.empty() || fn == "none") return logits;
  if (fn == "top_k") {
    const int64_t V = logits.size(-1);
    int64_t k = g.top_k().has_value() ? *g.top_k() : static_cast<int64_t>(std::ceil(g.top_k_frac() * V));
    TORCH_CHECK_VALUE(k >= 1, "generate: top_k must be at least 1, got ", k);
    k = std::min(k, V);
    auto [val, ind] = at::topk(logits, k);
    return at::full_like(logits, -inf).scatter_(1, ind, val);
  }
  if (fn == "top_p") {
    auto [sorted, idx] = at::sort(logits, -1, true);
    const at::Tensor cum = at::softmax(sorted, -1).cumsum(-1);
    at::Tensor remove = cum.gt(g.top_p());
    remove = at::constant_pad_nd(remove, {1, -1}, 0);
    sorted = sorted.masked_fill(remove, -inf);
    return sorted.scatter(1, idx, sorted);
  }
  if (fn == "min_p") {
    const at::Tensor probs = at::softmax(logits, -1);
    const at::Tensor limit = probs.amax(-1, true) * g.min_p();
    return at::where(probs.lt(limit), at::full_like(logits, -inf), logits);
  }
  TORCH_CHECK_VALUE(false, "generate: filter_logits_fn must be one of top_k, top_p, min_p or none, got '", fn, "'");
}

}  // namespace

at::Tensor generate(const TransformerWrapperOptions& o, at::TensorList weights, const at::Tensor& prompts_,
                    int64_t seq_len, const GenerateOptions& g, std::optional<at::Generator> generator) {
  TORCH_CHECK_VALUE(prompts_.defined() && (prompts_.dim() == 1 || prompts_.dim() == 2) &&
                        prompts_.scalar_type() == at::kLong,
                    "generate: prompts must be int64 token ids (batch, prompt_len) or (prompt_len,), got ",
                    prompts_.defined() ? c10::str(prompts_.scalar_type(), " ", prompts_.sizes()) : "nothing");
  TORCH_CHECK_VALUE(prompts_.size(-1) >= 1, "generate: prompts must hold at least one token");
  TORCH_CHECK_VALUE(seq_len >= 0, "generate: seq_len must be >= 0, got ", seq_len);
  TORCH_CHECK_VALUE(std::isfinite(g.temperature()) && g.temperature() >= 0.0,
                    "generate: temperature must be >= 0, got ", g.temperature());
  const bool one_d = prompts_.dim() == 1;
  const at::Tensor prompts = one_d ? prompts_.unsqueeze(0) : prompts_;
  const int64_t t = prompts.size(1), max_len = o.max_seq_len();
  // x-transformers asserts here: absolute positions cannot be cached past max_seq_len
  TORCH_CHECK_VALUE(!(g.cache_kv() && o.use_abs_pos_emb() && t + seq_len - 1 > max_len),
                    "generate: with cache_kv and absolute positional embeddings the sequence (prompt ", t,
                    " + seq_len ", seq_len, ") cannot outgrow max_seq_len=", max_len,
                    "; use rotary embeddings (use_abs_pos_emb=False, rotary_pos_emb=True) or cache_kv=False");
  at::NoGradGuard no_grad;
  at::Tensor out = prompts;
  KVCache cache;
  at::Tensor is_eos;
  for (int64_t step = 0; step < seq_len; ++step) {
    NetInputs in;
    at::Tensor logits;
    if (g.cache_kv() && cache.length > 0) {
      // drop the oldest positions beyond the window, as x-transformers does (keys
      // keep their rotation: attention with rotary embeddings depends only on distances)
      if (cache.length > max_len - 1) {
        const int64_t drop = cache.length - (max_len - 1);
        for (size_t l = 0; l < cache.k.size(); ++l) {
          cache.k[l] = cache.k[l].narrow(2, drop, max_len - 1);
          cache.v[l] = cache.v[l].narrow(2, drop, max_len - 1);
        }
        cache.length = max_len - 1;
        cache.offset += drop;
      }
      in.tokens = out.narrow(1, out.size(1) - 1, 1);
      logits = transformer_forward(o, weights, in, false, &cache).logits;
    } else {
      const int64_t len = std::min(out.size(1), max_len);
      in.tokens = out.narrow(1, out.size(1) - len, len);
      if (g.cache_kv()) {
        cache = KVCache();
        logits = transformer_forward(o, weights, in, false, &cache).logits;
      } else {
        logits = transformer_forward(o, weights, in, false).logits;
      }
    }
    logits = logits.select(1, logits.size(1) - 1);
    at::Tensor sample;
    if (g.temperature() == 0.0) {
      sample = logits.argmax(-1, true);
    } else {
      const at::Tensor probs = at::softmax(filter_logits(logits, g) / g.temperature(), -1);
      sample = at::multinomial(probs, 1, false, generator);
    }
    out = at::cat({out, sample}, 1);
    if (g.eos_token().has_value()) {
      is_eos = out.eq(*g.eos_token());
      if (is_eos.any(-1).all().item<bool>()) break;
    }
  }
  if (g.eos_token().has_value() && is_eos.defined()) {
    const at::Tensor shifted = at::constant_pad_nd(is_eos, {1, -1}, 0);
    out = out.masked_fill(shifted.to(at::kFloat).cumsum(-1).ge(1), g.pad_value());
  }
  out = out.narrow(1, t, out.size(1) - t);
  return one_d ? out.squeeze(0) : out;
}

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
    const auto names = options_.parameter_names();
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == "to_logits.weight") h.weight = w[i];
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
  const auto names = options.parameter_names();
  const auto shapes = options.parameter_shapes();
  for (size_t i = 0; i < names.size(); ++i) {
    // walk "a.b.c.weight": modules a, a.b, a.b.c, then the parameter
    torch::nn::Module* parent = this;
    std::shared_ptr<torch::nn::Module> keep;
    std::stringstream ss(names[i]);
    std::vector<std::string> parts;
    for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
    for (size_t j = 0; j + 1 < parts.size(); ++j) {
      keep = holder(*parent, parts[j]);
      parent = keep.get();
    }
    parent->register_parameter(parts.back(), at::empty(shapes[i]));
  }
  if (const int64_t rot = options.rotary_dim(); rot > 0) {
    const int64_t r = options.attn_layers().rotary_emb_dim() > 0 ? options.attn_layers().rotary_emb_dim()
                                                                  : options.attn_layers().attn_dim_head() / 2;
    auto rotary = holder(*holder(*this, "attn_layers"), "rotary_pos_emb");
    rotary->register_buffer("inv_freq",
                            at::pow(10000.0, at::arange(0, r, 2, at::kFloat) / static_cast<double>(r)).reciprocal());
  }
  reset_parameters();
}

void TransformerWrapperImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const auto names = options.parameter_names();
  const auto w = weights();
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    at::Tensor t = w[i];
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (name == "token_emb.emb.weight") {
      torch::nn::init::kaiming_normal_(t);
    } else if (name == "pos_emb.emb.weight") {
      t.normal_();
    } else if (ends_with(".gamma") || ends_with(".g")) {
      t.fill_(options.attn_layers().norm_add_unit_offset() ? 0.0 : 1.0);
    } else if (ends_with(".weight")) {  // nn.Linear's default
      torch::nn::init::kaiming_uniform_(t, std::sqrt(5.0));
    } else if (ends_with(".bias")) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(w[i - 1].size(1)));
      t.uniform_(-bound, bound);
    }
  }
}

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
