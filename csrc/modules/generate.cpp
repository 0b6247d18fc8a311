// arwrap::generate: x-transformers' AutoregressiveWrapper.generate for the native net,
// decoding with a key/value cache (see <arwrap/generate.h>).
#include <arwrap/generate.h>
#include <arwrap/transformer.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace arwrap {

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

}  // namespace arwrap
