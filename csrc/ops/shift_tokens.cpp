// shift_tokens: token ids (b, n+1) -> (input, target, mask), as x-transformers'
// AutoregressiveWrapper.forward splits them; keep_last keeps the last token in input
// and mask, as x-transformers 2.31 feeds its net. No differentiable output.
//
// This file: the schema, the typed entry (detail::shift_tokens) and the public C++
// entry of <arwrap/ops.h>. Kernels: cpu/, cuda/, meta/shift_tokens_kernel.*;
// autograd/shift_tokens_kernel.cpp runs it below autograd.
#include <arwrap/defaults.h>
#include <arwrap/ops.h>

#include "detail.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/randn.h>
#include <torch/library.h>

namespace arwrap {
namespace ops::detail {

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens(const at::Tensor& x, const std::optional<at::Tensor>& lens,
                                                            const std::optional<at::Tensor>& noise, int64_t ignore_index,
                                                            int64_t pad_value, double mask_prob,
                                                            std::optional<int64_t> mask_token_id, bool keep_last) {
  static const auto op = ARWRAP_TYPED_OP(shift_tokens);
  return op.call(x, lens, noise, ignore_index, pad_value, mask_prob, mask_token_id, keep_last);
}

}  // namespace ops::detail

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  static const std::string schema =
      "shift_tokens(Tensor x, Tensor? lens=None, Tensor? noise=None, int ignore_index=" +
      std::to_string(arwrap::defaults::ignore_index) +
      ", int pad_value=0, float mask_prob=0., int? mask_token_id=None, bool keep_last=False) "
      "-> (Tensor input, Tensor target, Tensor mask)";
  m.def(schema.c_str());
}

ShiftedTokens shift_tokens(const at::Tensor& x, const std::optional<at::Tensor>& lens,
                           const ShiftTokensOptions& options, std::optional<at::Generator> generator,
                           const std::optional<at::Tensor>& noise) {
  // the dispatcher needs a device: say which argument is missing before it does
  TORCH_CHECK_VALUE(x.defined(), "shift_tokens: x is undefined (expected int64 token ids (batch, seq_len + 1))");
  std::optional<at::Tensor> draw = noise;
  if (options.mask_prob() > 0.0 && !(draw.has_value() && draw->defined())) {
    TORCH_CHECK_VALUE(x.defined() && x.dim() == 2 && x.size(1) >= 2,
                      "shift_tokens: x must be 2-D token ids (batch, seq_len + 1) with seq_len + 1 >= 2");
    const int64_t m = options.keep_last() ? x.size(1) : x.size(1) - 1;
    draw = at::randn({x.size(0), m}, generator, x.options().dtype(at::kFloat));
  }
  auto [input, target, mask] = ops::detail::shift_tokens(x, lens, draw, options.ignore_index(), options.pad_value(),
                                                         options.mask_prob(), options.mask_token_id(),
                                                         options.keep_last());
  ShiftedTokens out;
  out.input = input;
  out.target = target;
  if (options.mask_prob() > 0.0) out.mask = mask;
  return out;
}

}  // namespace arwrap
