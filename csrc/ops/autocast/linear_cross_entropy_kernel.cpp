// Autocast kernels of linear_cross_entropy (AutocastCPU, AutocastCUDA): under
// torch.autocast / at::autocast the fused head runs as at::linear does there, its
// GEMMs in the autocast dtype (CPU bfloat16; CUDA bfloat16 or float16), while the
// softmax statistics, the loss and the lse stay float32 (the row kernels compute in
// float32 whatever the tile's dtype) and the weight gradient is accumulated in
// float32 across row tiles (linear_tiles.h).
//
//   hidden, weight, bias  -> cast to the autocast dtype (at::autocast::cached_cast: a
//                            float32 leaf weight is cast once per autocast region and
//                            reused, as for at::linear; float64 is left alone)
//   loss, lse             -> float32
//   dL/dweight, dL/dbias  -> the kernel's low-precision gradient, cast back to the
//                            float32 parameter by the cast's own backward
//
// As every autocast kernel, it excludes its own key and re-dispatches (to autograd,
// then the backend), so the casts are recorded by autograd and the backward is the
// operator's own. Outside an autocast region this key is not in the dispatch set
// and nothing here runs.
#include "autocast.h"

namespace arwrap::ops {
namespace {

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> linear_cross_entropy_autocast(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, c10::string_view reduction, double label_smoothing,
    double z_loss_weight, bool return_lse) {
  ExcludeAutocast<kDevice> below_autocast;
  const at::ScalarType low = at::autocast::get_autocast_dtype(kDevice);
  return detail::linear_cross_entropy(at::autocast::cached_cast(low, hidden, kDevice),
                                      at::autocast::cached_cast(low, weight, kDevice),
                                      at::autocast::cached_cast(low, bias, kDevice), target, ignore_index, reduction,
                                      label_smoothing, z_loss_weight, return_lse);
}

}  // namespace

ARWRAP_AUTOCAST_IMPL("linear_cross_entropy", linear_cross_entropy_autocast)

}  // namespace arwrap::ops
