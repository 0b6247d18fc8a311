// Autocast kernels of attention (AutocastCPU, AutocastCUDA): attention is a product, so
// under autocast q, k and v are cast to the autocast dtype (bfloat16 on the CPU), as
// scaled_dot_product_attention's lower-precision policy does; the kernel keeps its softmax
// statistics and accumulators in float32 and returns lse in float32. The casts' own backward
// takes the gradients back to the inputs' dtype.
#include "autocast.h"

namespace arwrap::ops {
namespace {

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> attention_autocast(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& key_mask,
                                                      std::optional<double> scale, bool causal) {
  ExcludeAutocast<kDevice> below_autocast;
  const auto dtype = at::autocast::get_autocast_dtype(kDevice);
  return detail::attention(at::autocast::cached_cast(dtype, q, kDevice), at::autocast::cached_cast(dtype, k, kDevice),
                           at::autocast::cached_cast(dtype, v, kDevice), key_mask, scale, causal);
}

}  // namespace

ARWRAP_AUTOCAST_IMPL("attention", attention_autocast)

}  // namespace arwrap::ops
