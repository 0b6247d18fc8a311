// arwrap::beam_search: x-transformers 2.31.10's AutoregressiveWrapper.beam_search for the native
// net (see <arwrap/generate.h>), with the key/value cache of generate's decoding step.
//
// Per step: log-probabilities of the next token for every beam; the `beams` best tokens of each
// (by logits, or by filtered logits / temperature + Gumbel noise when stochastic) extend it;
// of the beams x beams candidates per row the `beams` with the highest summed log-probability
// survive, and the cache's rows follow their parents.
#include "decoding.h"

#include <ATen/ATen.h>

namespace arwrap {

std::tuple<at::Tensor, at::Tensor> beam_search(const TransformerWrapperOptions& o, at::TensorList weights,
                                               const at::Tensor& prompts_, int64_t seq_len,
                                               const BeamSearchOptions& bo, std::optional<at::Generator> generator) {
  const GenerateOptions& g = bo.sampling();
  const at::Tensor prompts = detail::check_prompts("beam_search", prompts_, seq_len, g);
  const int64_t beams = bo.beams();
  TORCH_CHECK_VALUE(beams >= 1, "beam_search: beams must be >= 1, got ", beams);
  TORCH_CHECK_VALUE(!g.eos_token().has_value(), "beam_search: eos_token is not supported (nor in x-transformers)");
  TORCH_CHECK_VALUE(g.amateurs().empty(), "beam_search: contrastive decoding (amateurs) is generate's only");
  const int64_t b = prompts.size(0), t = prompts.size(1);
  const bool greedy = g.temperature() == 0.0;
  at::NoGradGuard no_grad;
  auto [out, seq_start_pos] = detail::align_prompts(prompts, g);
  detail::Decoding net(o, weights, g.cache_kv(), g.restrict_to_max_seq_len());
  at::Tensor scores = at::zeros({b}, prompts.options().dtype(at::kFloat));
  const at::Tensor batch_arange = at::arange(b, prompts.options());
  for (int64_t i = 0; i < seq_len; ++i) {
    at::Tensor logits = net.next_logits(out, seq_start_pos);  // (rows, V)
    const at::Tensor log_probs = at::log_softmax(logits, -1);
    if (bo.stochastic() && !greedy) {
      logits = detail::filter_logits(logits, g);
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

std::vector<OptionField> beam_search_fields() {
  const BeamSearchOptions d;
  return {
      {"beams", "int", option_literal(d.beams())},
      {"stochastic", "bool", option_literal(d.stochastic())},
      {"filter_logits_fn", "str", option_literal(d.sampling().filter_logits_fn())},
  };
}

}  // namespace arwrap
