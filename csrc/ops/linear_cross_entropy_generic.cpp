// The fused linear cross-entropy for any device, from dispatched operators only: the
// tile loop of linear_tiles.h (GEMMs: cuBLAS on CUDA), each logits tile turned into its
// loss and lse by the cross-entropy forward, then into its gradient by the in-place
// cross-entropy backward. It is the CUDA kernel of
// linear_cross_entropy_{forward,backward} (the CPU has a faster fused row sweep), and,
// as _linear_cross_entropy_{forward,backward}_generic, runs on the CPU in the tests so
// this code path is checked without a GPU.
#include "common.h"
#include "linear_tiles.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

namespace arwrap::ops {
namespace {

using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, int64_t, double,
                                                  double);
using BwdInplaceSig = void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, int64_t, double, double);

struct Out {
  at::Tensor loss_rows, lse_rows;
  LinearGrads grads;
};

// row_c: (N,) per-row gradient scale in the loss dtype (undefined: no gradient);
// glse: (N,) upstream gradient of lse or undefined.
Out run(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
        const at::Tensor& target_in, int64_t ignore_index, double eps, double w, const at::Tensor& row_c,
        const at::Tensor& glse, std::array<bool, 3> need) {
  static auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("arwrap::cross_entropy_forward", "").typed<FwdSig>();
  static auto bwd =
      c10::Dispatcher::singleton().findSchemaOrThrow("arwrap::cross_entropy_backward_", "").typed<BwdInplaceSig>();
  const int64_t D = hidden.size(-1);
  const at::Tensor h = hidden.reshape({-1, D}).contiguous();
  const at::Tensor target = target_in.reshape({-1}).contiguous();
  const int64_t N = h.size(0);
  const auto ld = loss_dtype(h);
  if (!row_c.defined()) need = {false, false, false};
  Out o;
  o.loss_rows = at::empty({N}, h.options().dtype(ld));
  o.lse_rows = at::empty({N}, h.options().dtype(ld));
  const bool any = need[0] || need[1] || need[2];
  o.grads = linear_tiles(h, weight, bias, need, 8192, [&](at::Tensor& z, int64_t r0, int64_t rr) {
    const at::Tensor tt = target.narrow(0, r0, rr);
    auto [l, s] = fwd.call(z, tt, ignore_index, /*none*/ 0, eps, w);
    o.loss_rows.narrow(0, r0, rr).copy_(l);
    o.lse_rows.narrow(0, r0, rr).copy_(s);
    if (!any) return;
    std::optional<at::Tensor> gl;
    if (glse.defined()) gl = glse.narrow(0, r0, rr);
    bwd.call(row_c.narrow(0, r0, rr), gl, z, tt, s, ignore_index, /*none*/ 0, eps, w);  // z <- dloss/dz
  });
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_generic(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double eps, double w,
    std::array<bool, 3> need) {
  at::AutoDispatchBelowADInplaceOrView guard;  // the implementation of a differentiable op, not differentiated
  check_linear_cross_entropy_args(hidden, weight, bias, target, eps, w);
  const Reduction red = to_reduction(reduction);
  const bool any = need[0] || need[1] || need[2];
  TORCH_CHECK_VALUE(red != Reduction::None || !any,
                    "linear_cross_entropy_forward: gradients in the forward need reduction mean or sum");
  const auto ld = loss_dtype(hidden);
  const at::Tensor valid = target.reshape({-1}).ne(ignore_index);
  const at::Tensor count = valid.sum().to(ld);
  at::Tensor row_c;
  if (any) {
    // upstream gradient 1: per valid row 1/count (mean, 0 when nothing is valid) or 1 (sum)
    row_c = red == Reduction::Mean ? valid.to(ld) / count.clamp_min(1) : valid.to(ld);
  }
  Out o = run(hidden, weight, bias, target, ignore_index, eps, w, row_c, at::Tensor(), need);
  at::Tensor loss;
  if (red == Reduction::None) {
    loss = o.loss_rows.view(target.sizes());
  } else {
    loss = o.loss_rows.sum();
    if (red == Reduction::Mean) loss = loss / count.clamp_min(1);
  }
  const at::Tensor gh = o.grads.hidden.defined() ? o.grads.hidden.view(hidden.sizes()) : o.grads.hidden;
  return {loss, o.lse_rows.view(target.sizes()), or_empty(gh, hidden), or_empty(o.grads.weight, weight), or_empty(o.grads.bias, weight)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_generic(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double eps, double w, std::array<bool, 3> need) {
  at::AutoDispatchBelowADInplaceOrView guard;
  check_linear_cross_entropy_args(hidden, weight, bias, target, eps, w);
  const Reduction red = to_reduction(reduction);
  const auto ld = loss_dtype(hidden);
  TORCH_CHECK_VALUE(grad_loss.scalar_type() == ld, "linear_cross_entropy_backward: grad_loss must be ", ld);
  const at::Tensor valid = target.reshape({-1}).ne(ignore_index);
  at::Tensor row_c;
  if (red == Reduction::None) {
    TORCH_CHECK_VALUE(grad_loss.sizes() == target.sizes(), "linear_cross_entropy_backward: grad_loss must have shape ",
                      target.sizes());
    row_c = grad_loss.reshape({-1}) * valid.to(ld);
  } else {
    TORCH_CHECK_VALUE(grad_loss.numel() == 1, "linear_cross_entropy_backward: grad_loss must be a scalar");
    row_c = valid.to(ld) * grad_loss.reshape({});
    if (red == Reduction::Mean) row_c = row_c / valid.sum().to(ld).clamp_min(1);
  }
  at::Tensor glse;
  if (grad_lse.has_value() && grad_lse->defined()) glse = grad_lse->reshape({-1}).to(ld);
  Out o = run(hidden, weight, bias, target, ignore_index, eps, w, row_c.contiguous(), glse, need);
  const at::Tensor gh = o.grads.hidden.defined() ? o.grads.hidden.view(hidden.sizes()) : o.grads.hidden;
  return {or_empty(gh, hidden), or_empty(o.grads.weight, weight), or_empty(o.grads.bias, weight)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(arwrap, m) {
  m.def(
      "_linear_cross_entropy_forward_generic(Tensor hidden, Tensor weight, Tensor? bias, Tensor target, "
      "int ignore_index, int reduction, float label_smoothing, float z_loss_weight, bool[3] output_mask) "
      "-> (Tensor loss, Tensor lse, Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "_linear_cross_entropy_backward_generic(Tensor grad_loss, Tensor? grad_lse, Tensor hidden, Tensor weight, "
      "Tensor? bias, Tensor target, int ignore_index, int reduction, float label_smoothing, float z_loss_weight, "
      "bool[3] output_mask) -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(arwrap, CompositeExplicitAutograd, m) {
  m.impl("_linear_cross_entropy_forward_generic", &forward_generic);
  m.impl("_linear_cross_entropy_backward_generic", &backward_generic);
}

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("linear_cross_entropy_forward", &forward_generic);
  m.impl("linear_cross_entropy_backward", &backward_generic);
}

}  // namespace arwrap::ops
