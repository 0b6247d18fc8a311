// CPU kernels of the fused linear cross-entropy: the loss of hidden (N, D) against a
// classifier weight (V, D) (+ bias) without ever holding the (N, V) logits. The tile
// loop is linear_tiles (../linear_tiles.h); here each logits tile becomes its loss,
// lse and c * dloss/dZ in place in one fused sweep of the cross-entropy row kernels.
#include "../common.h"
#include "../linear_tiles.h"
#include "cross_entropy_rows.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

struct Result {
  std::vector<double> loss_rows, lse_rows;
  LinearGrads grads;
};

// One sweep over the row tiles; the CPU turns each tile into its loss and gradient
// with the fused cross-entropy row sweep. grad_scale/row_scale/row_glse as in
// cross_entropy_rows; output_mask: which of dH, dW, db to produce (none: loss and lse only).
Result run_tiles(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const at::Tensor& target_in, int64_t ignore_index, double label_smoothing, double z_loss_weight,
                 double scale, const double* row_scale, const double* row_glse, std::array<bool, 3> output_mask) {
  const int64_t D = hidden.size(-1);
  const at::Tensor h = hidden.reshape({-1, D}).contiguous();
  const at::Tensor target = target_in.reshape({-1}).contiguous();
  const int64_t N = h.size(0);
  const bool any_grad = output_mask[0] || output_mask[1] || output_mask[2];
  Result r;
  r.loss_rows.resize(static_cast<size_t>(N));
  r.lse_rows.resize(static_cast<size_t>(N));
  const int64_t* tgt = target.data_ptr<int64_t>();
  r.grads = linear_tiles(h, weight, bias, output_mask, 4096, [&](at::Tensor& z, int64_t r0, int64_t) {
    cross_entropy_rows(z, tgt + r0, ignore_index, label_smoothing, z_loss_weight, r.loss_rows.data() + r0,
                       r.lse_rows.data() + r0,
                       any_grad ? &z : nullptr, scale, row_scale ? row_scale + r0 : nullptr,
                       row_glse ? row_glse + r0 : nullptr);
  });
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double label_smoothing, double z_loss_weight,
    std::array<bool, 3> output_mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const Reduction kind = to_reduction(reduction);
  TORCH_CHECK_VALUE(kind != Reduction::None || !(output_mask[0] || output_mask[1] || output_mask[2]),
                    "linear_cross_entropy_forward: gradients in the forward need reduction mean or sum");
  auto out = alloc_cross_entropy_outputs(hidden.select(-1, 0), target, kind);
  const int64_t count = count_valid_targets(target.reshape({-1}).contiguous(), weight.size(0), ignore_index,
                                            "linear_cross_entropy");
  const double c = reduction_scale(kind, count);
  Result r = run_tiles(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss_weight, c, nullptr, nullptr,
                       output_mask);
  write_rows(out.lse, r.lse_rows);
  if (kind == Reduction::None) {
    write_rows(out.loss, r.loss_rows);
  } else {
    double total = 0.0;  // fixed order
    for (double v : r.loss_rows) total += v;
    write_rows(out.loss, {total * c});
  }
  const auto [gh, gw, gb] = grad_outputs(r.grads, hidden, weight);
  return {out.loss, out.lse, gh, gw, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double label_smoothing, double z_loss_weight, std::array<bool, 3> output_mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, label_smoothing, z_loss_weight);
  const Reduction kind = to_reduction(reduction);
  const at::Tensor probe = hidden.select(-1, 0);  // a tensor of target's shape with hidden's dtype
  check_cross_entropy_backward_args(grad_loss, grad_lse, probe, target, at::empty(target.sizes(), grad_loss.options()),
                                    kind);
  const int64_t count = count_valid_targets(target.reshape({-1}).contiguous(), weight.size(0), ignore_index,
                                            "linear_cross_entropy");
  const std::vector<double> grad_loss_rows = read_rows(grad_loss);
  std::vector<double> glse;
  if (grad_lse.has_value() && grad_lse->defined()) glse = read_rows(*grad_lse);
  const double scale = reduction_scale(kind, count, kind == Reduction::None ? 1.0 : grad_loss_rows[0]);
  Result r = run_tiles(hidden, weight, bias, target, ignore_index, label_smoothing, z_loss_weight, scale,
                       kind == Reduction::None ? grad_loss_rows.data() : nullptr, glse.empty() ? nullptr : glse.data(),
                       output_mask);
  return grad_outputs(r.grads, hidden, weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward_cpu);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_cpu);
}

}  // namespace arwrap::ops::cpu
