// Meta (shape-only) kernel of shift_tokens: the same checks and allocations as the real
// kernels (../common.h), without touching data. It makes the operator work with fake
// tensors, torch.compile and torch.export.
#include "../common.h"

#include <torch/library.h>

namespace arwrap::ops::meta {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_meta(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    int64_t /*ignore_index*/, int64_t /*pad_value*/, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  check_shift_tokens_args(x, lens, noise, mask_prob, mask_token_id, keep_last);
  auto out = alloc_shift_tokens_outputs(x, mask_prob, keep_last);
  return {out.input, out.target, out.mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Meta, m) {
  m.impl("shift_tokens", &shift_tokens_meta);
}

}  // namespace arwrap::ops::meta
