// Autocast kernels of attention_lse (AutocastCPU, AutocastCUDA): a softmax statistic,
// so it keeps float32 under autocast, as logsumexp does (autocast's fp32 policy).
// q and k are cast to float32 (float64 is left alone) and the kernel runs with the
// autocast key excluded, so the score products inside it are not lowered to the
// autocast dtype either. Under autocast q and k come from low-precision products;
// their gradients go back through the casts' own backward.
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace arwrap::ops {
namespace {

using LseSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, double, bool);

template <c10::DeviceType kDevice>
at::Tensor attention_lse_autocast(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                  double scale, bool causal) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("arwrap::attention_lse", "").typed<LseSig>();
  constexpr auto key = kDevice == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA : c10::DispatchKey::AutocastCPU;
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  return op.call(at::autocast::cached_cast(at::kFloat, q, kDevice), at::autocast::cached_cast(at::kFloat, k, kDevice),
                 key_mask, scale, causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, AutocastCPU, m) {
  m.impl("attention_lse", &attention_lse_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(arwrap, AutocastCUDA, m) {
  m.impl("attention_lse", &attention_lse_autocast<c10::DeviceType::CUDA>);
}

}  // namespace arwrap::ops
