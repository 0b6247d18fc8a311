// The decoding step shared by generate.cpp and beam_search.cpp (private to the modules).
//
// Decoding feeds the net the whole (cropped) context on the first step, then only the newest
// token against the key/value cache, and crops the cache to max_seq_len - 1 once the sequence
// outgrows the window, as x-transformers does. Beam search reorders the cache's rows with its beams.
#pragma once

#include <arwrap/generate.h>
#include <arwrap/transformer.h>

namespace arwrap::detail {

// x-transformers' filter_logits functions (top_k, top_p, top_a, min_p, none) over (rows, V).
at::Tensor filter_logits(const at::Tensor& logits, const GenerateOptions& g);

// The prompts (b, t) as decoding starts from them: with g.prompt_lens, x-transformers' align_right
// (rows holding lens[i] tokens on the left shifted right, padded with g.pad_value on the left)
// and each row's first position (t - lens[i]); without, the prompts and no start positions.
struct AlignedPrompts {
  at::Tensor tokens, seq_start_pos;
};
AlignedPrompts align_prompts(const at::Tensor& prompts, const GenerateOptions& g);

// Checks shared by generate and beam_search (ValueErrors naming the argument); returns the
// prompts as (b, t).
at::Tensor check_prompts(const char* where, const at::Tensor& prompts, int64_t seq_len, const GenerateOptions& g);

// One net (its options, weights and key/value cache) stepping through a decode.
class Decoding {
 public:
  Decoding(const TransformerWrapperOptions& o, at::TensorList weights, bool cache_kv, bool restrict);
  // the logits (rows, V) after the last token of `out` (rows, len); seq_start_pos (rows,) or undefined
  at::Tensor next_logits(const at::Tensor& out, const at::Tensor& seq_start_pos);
  // the cache's rows follow the beams: rows -> rows[index]
  void select_rows(const at::Tensor& index);

 private:
  const TransformerWrapperOptions& o_;
  std::vector<at::Tensor> weights_;
  bool cache_kv_, restrict_;
  KVCache cache_;
};

}  // namespace arwrap::detail
