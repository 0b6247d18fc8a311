// The native net's layers: see layers.h.
#include "layers.h"

#include "small_batch_linear.h"

#include "../ops/detail.h"
#include "../ops/low_precision_mm.h"

#include <arwrap/ops.h>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdlib>
#include <string>

namespace arwrap::layers {

namespace {
thread_local bool recorded_kernels = false;
}  // namespace

RecordedKernelsGuard::RecordedKernelsGuard() : previous_(recorded_kernels) { recorded_kernels = true; }
RecordedKernelsGuard::~RecordedKernelsGuard() { recorded_kernels = previous_; }

std::vector<at::Tensor> LayerWeights::list() const {
  return {attn_norm, q, k, v, out, ff_norm, ff_in_w, ff_in_b, ff_out_w, ff_out_b};
}

LayerWeights LayerWeights::from_list(at::TensorList w) {
  TORCH_CHECK(w.size() == 10, "LayerWeights::from_list: expected 10 weights, got ", w.size());
  return {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9]};
}

Weights unpack_weights(const TransformerWrapperOptions& o, at::TensorList w) {
  const auto specs = o.parameter_specs();
  TORCH_CHECK_VALUE(w.size() == specs.size(), "TransformerWrapper: expected ", specs.size(),
                    " weights (parameter_names()), got ", w.size());
  Weights r;
  r.layers.resize(o.attn_layers().depth());
  for (size_t i = 0; i < w.size(); ++i) {
    const ParamSpec& s = specs[i];
    TORCH_CHECK_VALUE(w[i].defined() && w[i].sizes() == at::IntArrayRef(s.shape), "TransformerWrapper: weight '",
                      s.name, "' must have shape ", at::IntArrayRef(s.shape), ", got ",
                      w[i].defined() ? c10::str(w[i].sizes()) : std::string("nothing"));
    TORCH_CHECK_VALUE(at::isFloatingType(w[i].scalar_type()) && w[i].scalar_type() == w[0].scalar_type() &&
                          w[i].device() == w[0].device(),
                      "TransformerWrapper: weight '", s.name, "' is ", w[i].scalar_type(), " on ", w[i].device(),
                      "; every weight must be floating point, of one dtype, on one device (", w[0].scalar_type(),
                      " on ", w[0].device(), ")");
    LayerWeights* L = s.layer >= 0 ? &r.layers[s.layer] : nullptr;
    switch (s.role) {
      case ParamRole::TokenEmb: r.token_emb = w[i]; break;
      case ParamRole::PosEmb: r.pos_emb = w[i]; break;
      case ParamRole::AttnNorm: L->attn_norm = w[i]; break;
      case ParamRole::ToQ: L->q = w[i]; break;
      case ParamRole::ToK: L->k = w[i]; break;
      case ParamRole::ToV: L->v = w[i]; break;
      case ParamRole::ToOut: L->out = w[i]; break;
      case ParamRole::FFNorm: L->ff_norm = w[i]; break;
      case ParamRole::FFInWeight: L->ff_in_w = w[i]; break;
      case ParamRole::FFInBias: L->ff_in_b = w[i]; break;
      case ParamRole::FFOutWeight: L->ff_out_w = w[i]; break;
      case ParamRole::FFOutBias: L->ff_out_b = w[i]; break;
      case ParamRole::FinalNorm: r.final_norm = w[i]; break;
      case ParamRole::ToLogits: r.to_logits = w[i]; break;
      case ParamRole::NextEmbed0: r.next0 = w[i]; break;
      case ParamRole::NextEmbed2: r.next2 = w[i]; break;
    }
  }
  return r;
}

at::ScalarType product_dtype(const at::Tensor& x) {
  const at::DeviceType dev = x.device().type();
  return at::autocast::is_autocast_enabled(dev) && at::isFloatingType(x.scalar_type())
             ? at::autocast::get_autocast_dtype(dev)
             : x.scalar_type();
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// at::linear in bf16/fp16 on the float32 route of ops/low_precision_mm.h (a CPU whose ATen
// low-precision GEMM is slow): the operands cast to the product dtype as autocast casts them,
// the three products in float32 on their exact values, each result rounded to the product
// dtype as the low-precision GEMM would, the gradients cast back to the operands' dtypes. It
// saves what at::linear under autocast saves: the input and the weight in the product dtype.
class LowpLinear : public torch::autograd::Function<LowpLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const std::optional<at::Tensor>& bias, int64_t dtype) {
    const at::Tensor b = bias.value_or(at::Tensor());  // an undefined tensor is no autograd input: optional
    const auto dt = static_cast<at::ScalarType>(dtype);
    const at::Tensor xc = x.to(dt), wc = w.to(dt);
    ctx->save_for_backward({xc, wc});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["w_dtype"] = static_cast<int64_t>(w.scalar_type());
    ctx->saved_data["b_dtype"] = b.defined() ? static_cast<int64_t>(b.scalar_type()) : int64_t{-1};
    return ops::linear_lowp(xc, wc, b.defined() ? b.to(dt) : at::Tensor());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &xc = saved[0], &wc = saved[1];
    const at::Tensor g = grads[0].to(xc.scalar_type()).reshape({-1, wc.size(0)});
    at::Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) {
      const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
      dx = ops::mm_lowp(g, wc).view(xc.sizes()).to(x_dtype);
    }
    if (ctx->needs_input_grad(1)) {
      const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
      dw = ops::mm_lowp(g.t(), xc.reshape({-1, wc.size(1)})).to(w_dtype);
    }
    const int64_t b_dtype = ctx->saved_data["b_dtype"].toInt();
    if (b_dtype >= 0 && ctx->needs_input_grad(2)) db = g.sum(0).to(static_cast<at::ScalarType>(b_dtype));
    return {dx, dw, db, at::Tensor()};
  }
};

}  // namespace

at::Tensor project(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!recorded_kernels && small_batch_linear_applies(x, weight, bias)) return small_batch_linear(x, weight, bias);
  const at::ScalarType dt = product_dtype(x);
  if (!recorded_kernels && (dt == at::kBFloat16 || dt == at::kHalf) && ops::lowp_gemm_upcasts(x.device().type(), dt)) {
    return LowpLinear::apply(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                             static_cast<int64_t>(dt));
  }
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

at::Tensor norm(const at::Tensor& x, const at::Tensor& gamma, bool rms, bool unit_offset,
                std::optional<at::ScalarType> dtype) {
  return ops::detail::norm(x, gamma, rms, unit_offset, dtype);
}

Rotary rotary_tables(const TransformerWrapperOptions& o, int64_t offset, int64_t length, const at::Tensor& like) {
  Rotary r;
  if (o.rotary_dim() == 0) return r;
  const auto fopt = like.options().dtype(at::kFloat);
  const at::Tensor inv_freq = o.rotary_inv_freq().to(like.device());
  const at::Tensor t = at::arange(offset, offset + length, fopt);
  const at::Tensor freqs = at::outer(t, inv_freq).repeat_interleave(2, -1);  // (length, rotary_dim)
  r.cos = freqs.cos().to(like.scalar_type());
  r.sin = freqs.sin().to(like.scalar_type());
  return r;
}

// The rotary operator (ops/rotary.cpp: one fused pass per direction on the CPU, the ATen
// composition elsewhere): t's dtype out (float32 tables: the products in float32, rounded once),
// t's layout kept, so the heads stay a view of the projection's memory for the attention.
at::Tensor apply_rotary(const at::Tensor& t, const Rotary& rotary) {
  return ops::detail::rotary(t, rotary.cos, rotary.sin);
}

bool lean_layers_enabled() {
  // ARWRAP_LEAN_LAYERS=0: the plain ATen composition everywhere (bench/bench_step.py's
  // native_composed contender measures what the lean blocks cost); read at each call
  const char* lean = std::getenv("ARWRAP_LEAN_LAYERS");
  return !(lean && std::string(lean) == "0");
}

bool records(const at::Tensor& x, std::initializer_list<at::Tensor> weights) {
  if (!at::GradMode::is_enabled() || !lean_layers_enabled()) return false;
  bool any = x.requires_grad();
  for (const at::Tensor& w : weights) any = any || (w.defined() && w.requires_grad());
  return any;
}

at::Tensor attention(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d, const AttentionContext& ctx,
                     at::Tensor* k_cache, at::Tensor* v_cache, at::Tensor* lse) {
  const int64_t b = x.size(0), m = x.size(1), H = d.heads(), dh = d.attn_dim_head();
  const bool lean = records(x, {w.attn_norm, w.q, w.k, w.v});
  auto heads = [&](const at::Tensor& t) { return t.view({b, m, H, dh}).transpose(1, 2); };
  at::Tensor q, k, v;
  if (lean) {
    const auto p = normed_projections(x, w.attn_norm, d.use_rmsnorm(), d.norm_add_unit_offset(), {w.q, w.k, w.v});
    q = heads(p[0]), k = heads(p[1]), v = heads(p[2]);
  } else {
    const at::Tensor h = norm(x, w.attn_norm, d.use_rmsnorm(), d.norm_add_unit_offset());
    q = heads(project(h, w.q)), k = heads(project(h, w.k)), v = heads(project(h, w.v));
  }
  // arwrap::attention's output is (b, heads, m, dh) over (b, m, heads, dh) memory: the merge is a view
  auto out_projection = [&](const at::Tensor& a) { return project(a.transpose(1, 2).reshape({b, m, H * dh}), w.out); };
  if (d.attn_qk_norm()) {
    q = q / at::linalg_vector_norm(q, 2, {-1}, true).clamp_min(1e-12);
    k = k / at::linalg_vector_norm(k, 2, {-1}, true).clamp_min(1e-12);
  }
  if (ctx.rotary.cos.defined()) {
    q = apply_rotary(q, ctx.rotary);
    k = apply_rotary(k, ctx.rotary);
  }
  int64_t mk = m;
  if (k_cache) {
    if (k_cache->defined()) {
      k = at::cat({*k_cache, k}, 2);
      v = at::cat({*v_cache, v}, 2);
    }
    *k_cache = k;
    *v_cache = v;
    mk = k.size(2);
  }
  at::Tensor a;
  if (x.device().is_cpu() && ctx.dropout == 0.0) {
    // every path of the net is causal: row i sees keys j <= i + (mk - m), the key mask and the
    // left padding through visible_keys
    const std::optional<at::Tensor> key_mask =
        ctx.visible_keys.defined() ? std::optional<at::Tensor>(ctx.visible_keys) : std::nullopt;
    at::Tensor l;
    if (lean && !k_cache) {
      // q, k and v are this block's alone (made above, kept by nothing but the attention: the
      // rotary and the projections keep their inputs' tables and weights only), so the backward
      // writes dq, dk, dv over them (ops/autograd/attention_kernel.cpp)
      std::tie(a, l) = ops::detail::attention_consuming(q, k, v, key_mask, ctx.scale, true);
    } else {
      std::tie(a, l) = arwrap::attention_with_lse(q, k, v, AttentionOptions().key_mask(key_mask).scale(ctx.scale).causal(true));
    }
    if (lse) *lse = l;
    return out_projection(a);
  }
  if (ctx.pad_bias.defined()) {
    a = at::scaled_dot_product_attention(q, k, v, ctx.pad_bias, ctx.dropout, false, ctx.scale);
  } else if (mk == m) {
    a = at::scaled_dot_product_attention(q, k, v, ctx.sdpa_mask, ctx.dropout, ctx.causal, ctx.scale);
  } else if (m == 1) {  // one new position sees the whole cache
    a = at::scaled_dot_product_attention(q, k, v, std::nullopt, ctx.dropout, false, ctx.scale);
  } else {  // new rows i see keys j <= i + (mk - m)
    const at::Tensor allowed = at::ones({m, mk}, x.options().dtype(at::kBool)).tril(mk - m);
    a = at::scaled_dot_product_attention(q, k, v, allowed, ctx.dropout, false, ctx.scale);
  }
  if (lse) {
    std::optional<at::Tensor> km;
    if (ctx.key_mask.defined()) km = ctx.key_mask;
    *lse = arwrap::attention_lse(q, k, AttentionLseOptions().key_mask(km).scale(ctx.scale).causal(true));
  }
  return out_projection(a);
}

at::Tensor feed_forward(const at::Tensor& y, const LayerWeights& w, const DecoderOptions& d, bool training) {
  const bool dropout = training && d.ff_dropout() > 0;
  if (lean_feed_forward_applies(d, training)) {
    if (records(y, {w.ff_norm, w.ff_in_w, w.ff_in_b, w.ff_out_w, w.ff_out_b})) return lean_feed_forward(y, w, d);
    // checkpoint_layers' forward (not recording, the recorded kernels): the lean block's bits,
    // without the batch-wide pre-activation and activation output the composition holds
    if (recorded_kernels && !at::GradMode::is_enabled()) return lean_feed_forward_values(y, w, d);
  }
  at::Tensor f = project(norm(y, w.ff_norm, d.use_rmsnorm(), d.norm_add_unit_offset()), w.ff_in_w, w.ff_in_b);
  f = ops::detail::activation(f, d.ff_glu(), d.ff_swish());  // GELU/SiLU or its GLU, with its own backward
  if (dropout) f = at::dropout(f, d.ff_dropout(), true);
  return project(f, w.ff_out_w, w.ff_out_b);
}

namespace {

// x + p where p is a block's output in autocast's bf16 on the CPU and x the float32 residual
// stream: one pass (ops::add_bf16), where ATen's mixed add casts p into a float32 temporary
// first (a residual-sized copy per block: ~2 ms of T's bf16 step). Its backward is the add's:
// d x = d y, d p = d y in p's dtype.
class ResidualAdd : public torch::autograd::Function<ResidualAdd> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& p) {
    ctx->saved_data["p_dtype"] = static_cast<int64_t>(p.scalar_type());
    return ops::add_bf16(x, p);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto p_dtype = static_cast<at::ScalarType>(ctx->saved_data["p_dtype"].toInt());
    return {grads[0], grads[0].to(p_dtype)};
  }
};

bool one_pass_residual(const at::Tensor& x, const at::Tensor& p) {
  return x.device().is_cpu() && p.device().is_cpu() && x.scalar_type() == at::kFloat &&
         p.scalar_type() == at::kBFloat16 && x.sizes() == p.sizes() && x.is_contiguous() && p.is_contiguous();
}

at::Tensor residual_add(const at::Tensor& x, const at::Tensor& p) {
  if (!one_pass_residual(x, p)) return x + p;
  if (at::GradMode::is_enabled() && (x.requires_grad() || p.requires_grad())) return ResidualAdd::apply(x, p);
  return ops::add_bf16(x, p);
}

}  // namespace

at::Tensor residual_values(const at::Tensor& x, const at::Tensor& p) {
  const at::AutoGradMode not_recording(false);
  return one_pass_residual(x, p) ? ops::add_bf16(x, p) : x + p;
}

at::Tensor decoder_layer(const at::Tensor& x, const LayerWeights& w, const DecoderOptions& d,
                         const AttentionContext& ctx, bool training, at::Tensor* k_cache, at::Tensor* v_cache,
                         at::Tensor* lse) {
  const at::Tensor y = residual_add(x, attention(x, w, d, ctx, k_cache, v_cache, lse));
  return residual_add(y, feed_forward(y, w, d, training));
}

}  // namespace arwrap::layers
