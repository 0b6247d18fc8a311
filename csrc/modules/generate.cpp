// arwrap::generate: x-transformers 2.31.10's AutoregressiveWrapper.generate for the native net,
// every option (see <arwrap/generate.h>), with the key/value cache; and the decoding step it
// shares with beam_search.cpp (decoding.h).
#include "decoding.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace arwrap {
namespace detail {

// x-transformers' filter_logits functions (top_k, top_p, top_a, min_p) over (rows, V).
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
  if (fn == "min_p" || fn == "top_a") {
    const at::Tensor probs = at::softmax(logits, -1);
    const at::Tensor top = probs.amax(-1, true);
    const at::Tensor limit = fn == "min_p" ? top * g.min_p() : top.pow(g.top_a_pow()) * g.top_a_ratio();
    return at::where(probs.lt(limit), at::full_like(logits, -inf), logits);
  }
  TORCH_CHECK_VALUE(false, "generate: filter_logits_fn must be one of top_k, top_p, top_a, min_p or none, got '", fn,
                    "'");
}

AlignedPrompts align_prompts(const at::Tensor& prompts, const GenerateOptions& g) {
  if (!g.prompt_lens().has_value()) return {prompts, at::Tensor()};
  const int64_t t = prompts.size(1);
  const at::Tensor pad_lens = g.prompt_lens()->to(at::kLong).neg().add(t);  // (b,): also each row's start
  const at::Tensor padded = at::constant_pad_nd(prompts, {t, 0}, static_cast<double>(g.pad_value()));  // (b, 2t)
  const at::Tensor idx = at::arange(t, prompts.options()).unsqueeze(0).add(t).sub(pad_lens.unsqueeze(1));
  return {padded.gather(1, idx), pad_lens};
}

at::Tensor check_prompts(const char* where, const at::Tensor& prompts, int64_t seq_len, const GenerateOptions& g) {
  TORCH_CHECK_VALUE(prompts.defined() && (prompts.dim() == 1 || prompts.dim() == 2) &&
                        prompts.scalar_type() == at::kLong,
                    where, ": prompts must be int64 token ids (batch, prompt_len) or (prompt_len,), got ",
                    prompts.defined() ? c10::str(prompts.scalar_type(), " ", prompts.sizes()) : "nothing");
  TORCH_CHECK_VALUE(prompts.size(-1) >= 1, where, ": prompts must hold at least one token");
  TORCH_CHECK_VALUE(seq_len >= 0, where, ": seq_len must be >= 0, got ", seq_len);
  TORCH_CHECK_VALUE(std::isfinite(g.temperature()) && g.temperature() >= 0.0, where,
                    ": temperature must be >= 0, got ", g.temperature());
  const at::Tensor p = prompts.dim() == 1 ? prompts.unsqueeze(0) : prompts;
  if (g.prompt_lens().has_value()) {
    const at::Tensor& lens = *g.prompt_lens();
    TORCH_CHECK_VALUE(lens.dim() == 1 && lens.size(0) == p.size(0) && prompts.dim() == 2, where,
                      ": prompt_lens must be (batch=", p.size(0), ") with 2-D prompts, got ", lens.sizes());
    TORCH_CHECK_VALUE(lens.ge(1).all().item<bool>() && lens.le(p.size(1)).all().item<bool>(), where,
                      ": prompt_lens must be in [1, prompt_len=", p.size(1), "]");
  }
  return p;
}

Decoding::Decoding(const TransformerWrapperOptions& o, at::TensorList weights, bool cache_kv, bool restrict)
    : o_(o), weights_(weights.vec()), cache_kv_(cache_kv), restrict_(restrict) {}

namespace {
at::Tensor last(const at::Tensor& logits) { return logits.select(1, logits.size(1) - 1); }
}  // namespace

at::Tensor Decoding::next_logits(const at::Tensor& out, const at::Tensor& seq_start_pos) {
  const int64_t max_len = o_.max_seq_len();
  TORCH_CHECK_VALUE(!(restrict_ && cache_kv_ && out.size(1) > max_len && o_.use_abs_pos_emb()),
                    "generate: with cache_kv and absolute positional embeddings the sequence (", out.size(1),
                    " tokens) cannot outgrow max_seq_len=", max_len,
                    "; use rotary embeddings (use_abs_pos_emb=False, rotary_pos_emb=True) or cache_kv=False");
  NetInputs in;
  if (seq_start_pos.defined()) in.seq_start_pos = seq_start_pos;
  if (cache_kv_ && cache_.length > 0) {
    // drop the oldest positions beyond the window, as x-transformers does (keys keep their
    // rotation: attention with rotary embeddings depends only on distances)
    if (restrict_ && cache_.length > max_len - 1) {
      const int64_t drop = cache_.length - (max_len - 1);
      for (size_t l = 0; l < cache_.k.size(); ++l) {
        cache_.k[l] = cache_.k[l].narrow(2, drop, max_len - 1);
        cache_.v[l] = cache_.v[l].narrow(2, drop, max_len - 1);
      }
      cache_.length = max_len - 1;
      cache_.offset += drop;
    }
    in.tokens = out.narrow(1, out.size(1) - 1, 1);
    return last(transformer_forward(o_, weights_, in, false, &cache_).logits);
  }
  const int64_t len = restrict_ ? std::min(out.size(1), max_len) : out.size(1);
  in.tokens = out.narrow(1, out.size(1) - len, len);
  if (!cache_kv_) return last(transformer_forward(o_, weights_, in, false).logits);
  cache_ = KVCache();
  return last(transformer_forward(o_, weights_, in, false, &cache_).logits);
}

void Decoding::select_rows(const at::Tensor& index) {
  for (size_t l = 0; l < cache_.k.size(); ++l) {
    cache_.k[l] = cache_.k[l].index_select(0, index);
    cache_.v[l] = cache_.v[l].index_select(0, index);
  }
}

}  // namespace detail

namespace {

// x-transformers' contrastive_decode_fn (Appendix A, Algorithm 2 of arXiv:2309.09117).
at::Tensor contrastive(const at::Tensor& expert, const at::Tensor& amateur, double alpha, double beta) {
  const at::Tensor cutoff = expert.amax(-1, true) + std::log(alpha);
  const at::Tensor diffs = expert * (1.0 + beta) - amateur * beta;
  // -finfo(dtype).max, as x-transformers fills
  const double lowest = expert.scalar_type() == at::kDouble ? -std::numeric_limits<double>::max()
                                                            : -static_cast<double>(std::numeric_limits<float>::max());
  return diffs.masked_fill(expert.lt(cutoff), lowest);
}

}  // namespace

at::Tensor generate(const TransformerWrapperOptions& o, at::TensorList weights, const at::Tensor& prompts_,
                    int64_t seq_len, const GenerateOptions& g, std::optional<at::Generator> generator) {
  const at::Tensor prompts = detail::check_prompts("generate", prompts_, seq_len, g);
  const int64_t t = prompts.size(1);
  for (const auto& a : g.amateurs()) {
    TORCH_CHECK_VALUE(a.options.num_tokens() == o.num_tokens(), "generate: an amateur model has num_tokens=",
                      a.options.num_tokens(), ", the expert ", o.num_tokens(), ": their logits must have the same size");
    TORCH_CHECK_VALUE(a.alpha > 0.0, "generate: contrastive decoding needs alpha > 0, got ", a.alpha);
  }
  at::NoGradGuard no_grad;
  auto [out, seq_start_pos] = detail::align_prompts(prompts, g);
  detail::Decoding expert(o, weights, g.cache_kv(), g.restrict_to_max_seq_len());
  std::vector<detail::Decoding> amateurs;
  amateurs.reserve(g.amateurs().size());
  for (const auto& a : g.amateurs()) amateurs.emplace_back(a.options, a.weights, g.cache_kv(), g.restrict_to_max_seq_len());
  // x-transformers turns the filter off for contrastive decoding
  const GenerateOptions unfiltered = GenerateOptions(g).filter_logits_fn("none");
  const GenerateOptions& sampling = amateurs.empty() ? g : unfiltered;

  at::Tensor is_eos;
  for (int64_t step = 0; step < seq_len; ++step) {
    at::Tensor logits = expert.next_logits(out, seq_start_pos);
    for (size_t i = 0; i < amateurs.size(); ++i) {
      logits = contrastive(logits, amateurs[i].next_logits(out, seq_start_pos), g.amateurs()[i].alpha,
                           g.amateurs()[i].beta);
    }
    at::Tensor sample;
    if (g.temperature() == 0.0) {
      sample = logits.argmax(-1, true);
    } else {
      const at::Tensor probs = at::softmax(detail::filter_logits(logits, sampling) / g.temperature(), -1);
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
  return prompts_.dim() == 1 ? out.squeeze(0) : out;
}

std::vector<OptionField> generate_fields() {
  const GenerateOptions d;
  return {
      {"temperature", "float", option_literal(d.temperature())},
      {"filter_logits_fn", "str", option_literal(d.filter_logits_fn())},
      {"top_k", "int?", option_literal(d.top_k())},
      {"top_k_frac", "float", option_literal(d.top_k_frac())},
      {"top_p", "float", option_literal(d.top_p())},
      {"min_p", "float", option_literal(d.min_p())},
      {"top_a_pow", "float", option_literal(d.top_a_pow())},
      {"top_a_ratio", "float", option_literal(d.top_a_ratio())},
      {"eos_token", "int?", option_literal(d.eos_token())},
      {"pad_value", "int", option_literal(d.pad_value())},
      {"cache_kv", "bool", option_literal(d.cache_kv())},
      {"restrict_to_max_seq_len", "bool", option_literal(d.restrict_to_max_seq_len())},
  };
}

}  // namespace arwrap
