// Autograd kernel of shift_tokens: it has no differentiable output, so it runs below
// autograd (its outputs never require grad).
#include "../detail.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

namespace arwrap::ops::autograd {
namespace {

// shift_tokens has no differentiable output: run it below autograd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> shift_tokens_autograd(
    const at::Tensor& x, const std::optional<at::Tensor>& lens, const std::optional<at::Tensor>& noise,
    int64_t ignore_index, int64_t pad_value, double mask_prob, std::optional<int64_t> mask_token_id,
    bool keep_last) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return detail::shift_tokens(x, lens, noise, ignore_index, pad_value, mask_prob, mask_token_id, keep_last);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, Autograd, m) { m.impl("shift_tokens", &shift_tokens_autograd); }

}  // namespace arwrap::ops::autograd
