// The device-generic kernel of linear_cross_entropy_{forward,backward}: the fused linear
// cross-entropy from dispatched operators only, the tile loop of ../linear_tiles.h
// (GEMMs: cuBLAS on CUDA), each logits tile turned into its loss and lse by the
// cross-entropy forward, then into its gradient by the in-place cross-entropy backward.
// It composes ATen and the cross_entropy operators, so it lives in composite/ and is
// compiled in every build; registered as the CUDA kernel, and for every device as
// _linear_cross_entropy_{forward,backward}_generic, so the tests run this code path on
// the CPU without a GPU (the CPU's own kernel is a faster fused row sweep).
#include "../common.h"
#include "../detail.h"
#include "../linear_tiles.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

namespace arwrap::ops::composite {
namespace {

struct Out {
  at::Tensor loss_rows, lse_rows;
  LinearGrads grads;
};

// row_c: (N,) per-row gradient scale in the loss dtype (undefined: no gradient);
// glse: (N,) upstream gradient of lse or undefined.
Out run(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
        const at::Tensor& target_in, int64_t ignore_index, double label_smoothing, double z_loss_weight,
        const at::Tensor& row_c,
        const at::Tensor& glse, std::array<bool, 3> output_mask) {
  const int64_t D = hidden.size(-1);
  const at::Tensor h = hidden.reshape({-1, D}).contiguous();
  const at::Tensor target = target_in.reshape({-1}).contiguous();
  const int64_t N = h.size(0);
  const auto ld = loss_dtype(h);
  if (!row_c.defined()) output_mask = {false, false, false};
  Out o;
  o.loss_rows = at::empty({N}, h.options().dtype(ld));
  o.lse_rows = at::empty({N}, h.options().dtype(ld));
  const bool any = output_mask[0] || output_mask[1] || output_mask[2];
  o.grads = linear_tiles(h, weight, bias, output_mask, 8192, [&](at::Tensor& z, int64_t r0, int64_t rr) {
    const at::Tensor tt = target.narrow(0, r0, rr);
    auto [l, s] = detail::cross_entropy_forward(z, tt, ignore_index, /*none*/ 0, label_smoothing, z_loss_weight);
    o.loss_rows.narrow(0, r0, rr).copy_(l);
    o.lse_rows.narrow(0, r0, rr).copy_(s);
    if (!any) return;
    std::optional<at::Tensor> grad_lse_tile;
    if (glse.defined()) grad_lse_tile = glse.narrow(0, r0, rr);
    // z <- dloss/dz
    detail::cross_entropy_backward_(row_c.narrow(0, r0, rr), grad_lse_tile, z, tt, s, ignore_index, /*none*/ 0,
                                    label_smoothing, z_loss_weight);
  });
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_generic(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight,
    std::array<bool, 3> output_mask) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the implementation of a differentiable op, not differentiated
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const Reduction kind = to_reduction(reduction);
  const bool any = output_mask[0] || output_mask[1] || output_mask[2];
  TORCH_CHECK_VALUE(kind != Reduction::None || !any,
                    "linear_cross_entropy_forward: gradients in the forward need reduction mean or sum");
  const auto ld = loss_dtype(hidden);
  const at::Tensor valid = target.reshape({-1}).ne(ignore_index);
  const at::Tensor count = valid.sum().to(ld);
  at::Tensor row_c;
  if (any) {
    // upstream gradient 1: per valid row 1/count (mean, 0 when nothing is valid) or 1 (sum)
    row_c = kind == Reduction::Mean ? valid.to(ld) / count.clamp_min(1) : valid.to(ld);
  }
  Out o = run(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss_weight, row_c, at::Tensor(),
              output_mask);
  at::Tensor loss;
  if (kind == Reduction::None) {
    loss = o.loss_rows.view(target.sizes());
  } else {
    loss = o.loss_rows.sum();
    if (kind == Reduction::Mean) loss = loss / count.clamp_min(1);
  }
  const auto [gh, gw, gb] = grad_outputs(o.grads, hidden, weight);
  return {loss, o.lse_rows.view(target.sizes()), gh, gw, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_generic(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double label_smoothing, double z_loss_weight, std::array<bool, 3> output_mask) {
  at::AutoDispatchBelowADInplaceOrView guard;
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const Reduction kind = to_reduction(reduction);
  const auto ld = loss_dtype(hidden);
  TORCH_CHECK_VALUE(grad_loss.scalar_type() == ld, "linear_cross_entropy_backward: grad_loss must be ", ld);
  const at::Tensor valid = target.reshape({-1}).ne(ignore_index);
  at::Tensor row_c;
  if (kind == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == target.sizes(), "linear_cross_entropy_backward: grad_loss must have shape ",
                      target.sizes());
    row_c = grad_loss.reshape({-1}) * valid.to(ld);
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "linear_cross_entropy_backward: grad_loss must be a scalar");
    row_c = valid.to(ld) * grad_loss.reshape({});
    if (kind == Reduction::Mean) row_c = row_c / valid.sum().to(ld).clamp_min(1);
  }
  at::Tensor glse;
  if (grad_lse.has_value() && grad_lse->defined()) glse = grad_lse->reshape({-1}).to(ld);
  Out o = run(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss_weight, row_c.contiguous(), glse,
              output_mask);
  return grad_outputs(o.grads, hidden, weight);
}

}  // namespace

// the same kernels on every device, under their own names (schemas in ../linear_cross_entropy.cpp)
TORCH_LIBRARY_IMPL(arwrap, CompositeExplicitAutograd, m) {
  m.impl("_linear_cross_entropy_forward_generic", &forward_generic);
  m.impl("_linear_cross_entropy_backward_generic", &backward_generic);
}

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("linear_cross_entropy_forward", &forward_generic);
  m.impl("linear_cross_entropy_backward", &backward_generic);
}

}  // namespace arwrap::ops::composite
