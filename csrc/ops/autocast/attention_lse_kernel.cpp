// Autocast kernels of attention_lse (AutocastCPU, AutocastCUDA): a softmax statistic,
// so it keeps float32 under autocast, as logsumexp does (autocast's fp32 policy).
// q and k are cast to float32 (float64 is left alone) and the kernel runs with the
// autocast key excluded, so the score products inside it are not lowered to the
// autocast dtype either. Under autocast q and k come from low-precision products;
// their gradients go back through the casts' own backward.
#include "autocast.h"

namespace arwrap::ops {
namespace {

template <c10::DeviceType kDevice>
at::Tensor attention_lse_autocast(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                  double scale, bool causal) {
  ExcludeAutocast<kDevice> below_autocast;
  return detail::attention_lse(at::autocast::cached_cast(at::kFloat, q, kDevice),
                               at::autocast::cached_cast(at::kFloat, k, kDevice), key_mask, scale, causal);
}

}  // namespace

ARWRAP_AUTOCAST_IMPL("attention_lse", attention_lse_autocast)

}  // namespace arwrap::ops
