// arwrap::generate and arwrap::beam_search: x-transformers 2.31.10's
// AutoregressiveWrapper.generate / .beam_search for the native net, with a key/value cache
// (implemented in csrc/modules/generate.cpp and beam_search.cpp).
#pragma once

#include <arwrap/option_fields.h>
#include <arwrap/transformer_options.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace arwrap {

// An amateur model for contrastive decoding (Li et al.; x-transformers' amateur_model with its
// contrastive_decode_kwargs): logits = (1 + beta) expert - beta amateur where the expert's
// probability is at least alpha times its largest, else -max.
struct ContrastiveAmateur {
  TransformerWrapperOptions options;
  std::vector<at::Tensor> weights;  // parameter_specs() order
  double alpha = 0.1;
  double beta = 0.5;
};

// filter_logits_fn in {"top_k", "top_p", "top_a", "min_p", "none"}; greedy at temperature 0;
// after eos_token the rest of a row is pad_value; stops early once every row has an eos.
struct GenerateOptions {
  TORCH_ARG(double, temperature) = 1.0;
  TORCH_ARG(std::string, filter_logits_fn) = "top_k";
  TORCH_ARG(std::optional<int64_t>, top_k) = std::nullopt;  // default ceil(top_k_frac * num_tokens)
  TORCH_ARG(double, top_k_frac) = 0.1;
  TORCH_ARG(double, top_p) = 0.9;  // x-transformers' top_p thres
  TORCH_ARG(double, min_p) = 0.1;
  TORCH_ARG(double, top_a_pow) = 2.0;  // top_a: keep p >= top_a_ratio * max(p) ** top_a_pow
  TORCH_ARG(double, top_a_ratio) = 0.02;
  TORCH_ARG(std::optional<int64_t>, eos_token) = std::nullopt;
  TORCH_ARG(int64_t, pad_value) = 0;
  TORCH_ARG(bool, cache_kv) = true;
  // crop the context to the last max_seq_len tokens (and the cache to max_seq_len - 1)
  TORCH_ARG(bool, restrict_to_max_seq_len) = true;
  // (b,) prompt lengths: rows hold prompt_lens[i] tokens on the left (x-transformers' prompt_lens;
  // they are right-aligned and the padding is masked)
  TORCH_ARG(std::optional<at::Tensor>, prompt_lens) = std::nullopt;
  // contrastive decoding (the filter is then off, as in x-transformers)
  TORCH_ARG(std::vector<ContrastiveAmateur>, amateurs) = {};
};

// GenerateOptions' table (option_fields.h): its scalar fields and their defaults.
std::vector<OptionField> generate_fields();

// prompts: (b, t) or (t,) int64; weights: parameter_specs() order. Returns the seq_len
// generated tokens (b, seq_len) (or (seq_len,)), without the prompt, as x-transformers does.
at::Tensor generate(const TransformerWrapperOptions& options, at::TensorList weights, const at::Tensor& prompts,
                    int64_t seq_len, const GenerateOptions& generate_options = {},
                    std::optional<at::Generator> generator = std::nullopt);

// Keeps the `beams` best continuations by summed log-probability; with `stochastic` (and
// temperature > 0) the candidates are the top of filtered logits / temperature plus Gumbel
// noise (their scores stay the unperturbed log-probabilities). No eos_token, as in x-transformers.
struct BeamSearchOptions {
  TORCH_ARG(int64_t, beams) = 4;
  TORCH_ARG(bool, stochastic) = false;
  // temperature, the filter (default "none", x-transformers' identity), pad_value, cache_kv,
  // restrict_to_max_seq_len and prompt_lens as for generate (eos_token and amateurs are refused)
  TORCH_ARG(GenerateOptions, sampling) = GenerateOptions().filter_logits_fn("none");
};

// BeamSearchOptions' table: beams, stochastic, and the filter beam search defaults to.
std::vector<OptionField> beam_search_fields();

// prompts (b, t) or (t,). Returns (beams (b, beams, seq_len), scores (b, beams)), best first
// ((beams, seq_len), (beams) for a 1-D prompt).
std::tuple<at::Tensor, at::Tensor> beam_search(const TransformerWrapperOptions& options, at::TensorList weights,
                                               const at::Tensor& prompts, int64_t seq_len,
                                               const BeamSearchOptions& beam_options = {},
                                               std::optional<at::Generator> generator = std::nullopt);

}  // namespace arwrap
