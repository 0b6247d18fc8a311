// generate and beam_search for the native net: x-transformers 2.31.10's
// AutoregressiveWrapper.generate / .beam_search, in C++, with the key/value cache.
//
// Both step through Decoding: it feeds the net the whole (cropped) context on the first step,
// then only the newest token against the cache, and crops the cache to max_seq_len - 1 once
// the sequence outgrows the window, as x-transformers does. Beam search repeats and reorders
// the cache's rows with its beams.
#include <arwrap/transformer.h>

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace arwrap {
namespace {

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

// x-transformers' contrastive_decode_fn (Appendix A, Algorithm 2 of arXiv:2309.09117).
at::Tensor contrastive(const at::Tensor& expert, const at::Tensor& amateur, double alpha, double beta) {
  const at::Tensor cutoff = expert.amax(-1, true) + std::log(alpha);
  const at::Tensor diffs = expert * (1.0 + beta) - amateur * beta;
  // -finfo(dtype).max, as x-transformers fills
  const double lowest = expert.scalar_type() == at::kDouble ? -std::numeric_limits<double>::max()
                                                            : -static_cast<double>(std::numeric_limits<float>::max());
  return diffs.masked_fill(expert.lt(cutoff), lowest);
}

// x-transformers' align_right: rows of prompts (b, t) holding lens[i] tokens on the left are
// shifted right, padded with pad on the left.
at::Tensor align_right(const at::Tensor& prompts, const at::Tensor& lens, int64_t pad) {
  const int64_t t = prompts.size(1);
  const at::Tensor pad_lens = lens.to(at::kLong).neg().add(t);  // (b,)
  const at::Tensor padded = at::constant_pad_nd(prompts, {t, 0}, static_cast<double>(pad));  // (b, 2t)
  const at::Tensor idx = at::arange(t, prompts.options()).unsqueeze(0).add(t).sub(pad_lens.unsqueeze(1));
  return padded.gather(1, idx);
}

// One net (its options, weights and key/value cache) stepping through a decode.
class Decoding {
 public:
  Decoding(const TransformerWrapperOptions& o, at::TensorList weights, bool cache_kv, bool restrict)
      : o_(o), weights_(weights.vec()), cache_kv_(cache_kv), restrict_(restrict) {}

  // the logits (rows, V) after the last token of `out` (rows, len)
  at::Tensor next_logits(const at::Tensor& out, const at::Tensor& seq_start_pos) {
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

  // the cache's rows follow the beams: rows -> rows[index]
  void select_rows(const at::Tensor& index) {
    for (size_t l = 0; l < cache_.k.size(); ++l) {
      cache_.k[l] = cache_.k[l].index_select(0, index);
      cache_.v[l] = cache_.v[l].index_select(0, index);
    }
  }

 private:
  static at::Tensor last(const at::Tensor& logits) { return logits.select(1, logits.size(1) - 1); }

  const TransformerWrapperOptions& o_;
  std::vector<at::Tensor> weights_;
  bool cache_kv_, restrict_;
  KVCache cache_;
};

// checks shared by generate and beam_search; returns the prompts as (b, t)
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

}  // namespace

at::Tensor generate(const TransformerWrapperOptions& o, at::TensorList weights, const at::Tensor& prompts_,
                    int64_t seq_len, const GenerateOptions& g, std::optional<at::Generator> generator) {
  const at::Tensor prompts = check_prompts("generate", prompts_, seq_len, g);
  const int64_t t = prompts.size(1);
  for (const auto& a : g.amateurs()) {
    TORCH_CHECK_VALUE(a.options.num_tokens() == o.num_tokens(), "generate: an amateur model has num_tokens=",
                      a.options.num_tokens(), ", the expert ", o.num_tokens(), ": their logits must have the same size");
    TORCH_CHECK_VALUE(a.alpha > 0.0, "generate: contrastive decoding needs alpha > 0, got ", a.alpha);
  }
  at::NoGradGuard no_grad;
  at::Tensor out = prompts, seq_start_pos;
  if (g.prompt_lens().has_value()) {
    out = align_right(prompts, *g.prompt_lens(), g.pad_value());
    seq_start_pos = g.prompt_lens()->to(at::kLong).neg().add(t);
  }
  Decoding expert(o, weights, g.cache_kv(), g.restrict_to_max_seq_len());
  std::vector<Decoding> amateurs;
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
      const at::Tensor probs = at::softmax(filter_logits(logits, sampling) / g.temperature(), -1);
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

std::tuple<at::Tensor, at::Tensor> beam_search(const TransformerWrapperOptions& o, at::TensorList weights,
                                               const at::Tensor& prompts_, int64_t seq_len,
                                               const BeamSearchOptions& bo, std::optional<at::Generator> generator) {
  const GenerateOptions& g = bo.sampling();
  const at::Tensor prompts = check_prompts("beam_search", prompts_, seq_len, g);
  const int64_t beams = bo.beams();
  TORCH_CHECK_VALUE(beams >= 1, "beam_search: beams must be >= 1, got ", beams);
  TORCH_CHECK_VALUE(!g.eos_token().has_value(), "beam_search: eos_token is not supported (nor in x-transformers)");
  TORCH_CHECK_VALUE(g.amateurs().empty(), "beam_search: contrastive decoding (amateurs) is generate's only");
  const int64_t b = prompts.size(0), t = prompts.size(1);
  const bool greedy = g.temperature() == 0.0;
  at::NoGradGuard no_grad;
  at::Tensor out = prompts, seq_start_pos;
  if (g.prompt_lens().has_value()) {
    out = align_right(prompts, *g.prompt_lens(), g.pad_value());
    seq_start_pos = g.prompt_lens()->to(at::kLong).neg().add(t);
  }
  Decoding net(o, weights, g.cache_kv(), g.restrict_to_max_seq_len());
  at::Tensor scores = at::zeros({b}, prompts.options().dtype(at::kFloat));
  const at::Tensor batch_arange = at::arange(b, prompts.options());
  for (int64_t i = 0; i < seq_len; ++i) {
    at::Tensor logits = net.next_logits(out, seq_start_pos);  // (rows, V)
    const at::Tensor log_probs = at::log_softmax(logits, -1);
    if (bo.stochastic() && !greedy) {
      logits = filter_logits(logits, g);
      // x-transformers' gumbel_noise: -log(-log(u)), u ~ U[0, 1), logs clamped at 1e-20
      const at::Tensor u = at::rand(logits.sizes(), generator, logits.options());
      const at::Tensor noise = u.clamp_min(1e-20).log().neg().clamp_min(1e-20).log().neg();
      logits = logits / g.temperature() + noise;
    }
    const at::Tensor samples = std::get<1>(logits.topk(beams, -1));  // (rows, beams)
    const at::Tensor next_scores = log_probs.gather(-1, samples);
    scores = scores.unsqueeze(-1) + next_scores;  // (rows, beams)
    out = out.repeat_interleave(beams, 0);
    if (i == 0) {
      net.select_rows(at::arange(out.size(0) / beams, prompts.options()).repeat_interleave(beams));
      if (seq_start_pos.defined()) seq_start_pos = seq_start_pos.repeat_interleave(beams);
    }
    out = at::cat({out, samples.reshape({-1, 1})}, -1);
    scores = scores.reshape({b, -1});  // (b, prev_beams * beams)
    const int64_t candidates = scores.size(1);
    if (candidates > beams) {
      auto [sorted, order] = scores.sort(-1, true);
      scores = sorted.narrow(1, 0, beams);
      const at::Tensor top = order.narrow(1, 0, beams) + batch_arange.unsqueeze(1) * candidates;
      const at::Tensor flat = top.reshape({-1});
      out = out.index_select(0, flat);
      net.select_rows(flat.div(beams, "floor"));
    }
    scores = scores.reshape({-1});
  }
  // (b, beams, seq_len); before any step (seq_len 0) there is one beam per row, as in x-transformers
  const int64_t per_row = out.size(0) / b;
  out = out.narrow(1, t, out.size(1) - t).reshape({b, per_row, out.size(1) - t});
  scores = scores.reshape({b, per_row});
  if (prompts_.dim() == 1) return {out.squeeze(0), scores.squeeze(0)};
  return {out, scores};
}

std::tuple<at::Tensor, at::Tensor> TransformerWrapperImpl::beam_search(const at::Tensor& prompts, int64_t seq_len,
                                                                       const BeamSearchOptions& options,
                                                                       std::optional<at::Generator> generator) {
  return arwrap::beam_search(this->options, weights(), prompts, seq_len, options, std::move(generator));
}

}  // namespace arwrap
