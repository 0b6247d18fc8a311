// arwrap::generate: x-transformers' AutoregressiveWrapper.generate for the native net,
// with a key/value cache.
#pragma once

#include <arwrap/transformer_options.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <optional>
#include <string>

namespace arwrap {

// filter_logits_fn in {"top_k", "top_p", "min_p", ""}; greedy at temperature 0; after
// eos_token the rest of a row is pad_value; stops early once every row has an eos.
struct GenerateOptions {
  TORCH_ARG(double, temperature) = 1.0;
  TORCH_ARG(std::string, filter_logits_fn) = "top_k";
  TORCH_ARG(std::optional<int64_t>, top_k) = std::nullopt;  // default ceil(top_k_frac * num_tokens)
  TORCH_ARG(double, top_k_frac) = 0.1;
  TORCH_ARG(double, top_p) = 0.9;  // x-transformers' top_p thres
  TORCH_ARG(double, min_p) = 0.1;
  TORCH_ARG(std::optional<int64_t>, eos_token) = std::nullopt;
  TORCH_ARG(int64_t, pad_value) = 0;
  TORCH_ARG(bool, cache_kv) = true;
};

// prompts: (b, t) or (t,) int64; weights: parameter_specs() order. Returns the seq_len
// generated tokens (b, seq_len) (or (seq_len,)), without the prompt, as x-transformers does.
at::Tensor generate(const TransformerWrapperOptions& options, at::TensorList weights, const at::Tensor& prompts,
                    int64_t seq_len, const GenerateOptions& generate_options = {},
                    std::optional<at::Generator> generator = std::nullopt);

}  // namespace arwrap
