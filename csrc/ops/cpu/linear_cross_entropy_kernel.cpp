// CPU kernels of the fused linear cross-entropy: the loss of hidden (N, D) against a
// classifier weight (V, D) (+ bias) without ever holding the (N, V) logits.
//
// Rows are processed in tiles of R rows. Per tile:
//   Z      = H_t W^T + b                 (R, V)  one GEMM into a reused tile buffer
//   Z     <- c * dloss/dZ                in place, by the cross-entropy row kernels
//            (loss and lse of each row come out of the same sweep)
//   dH_t   = Z W                         (R, D)  GEMM
//   dW    += Z^T H_t                     (V, D)  GEMM, accumulated in float32 for bf16/fp16
//   db    += sum_rows Z
// Peak extra memory: dH + dW (+ db) + one tile. The tile height comes from the shapes:
// about a fifth of the gradient buffers, so the tile never dominates memory, and at
// least 64 rows so the GEMM with K = R stays efficient.
#include "../common.h"
#include "cross_entropy_rows.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

int64_t tile_rows(int64_t N, int64_t D, int64_t V, int64_t elem) {
  const int64_t grads = (N * D + V * D) * elem;
  int64_t R = grads / 5 / std::max<int64_t>(V * elem, 1);
  R = std::clamp<int64_t>(R, 64, 4096);
  R = R / 16 * 16;
  return std::max<int64_t>(1, std::min(R, N));
}

struct Result {
  std::vector<double> loss_rows, lse_rows;
  at::Tensor grad_hidden, grad_weight, grad_bias;
};

// One sweep over the row tiles. grad_scale/row_scale/row_glse as in cross_entropy_rows;
// need[0..2]: which of dH, dW, db to produce (none: loss and lse only).
Result run_tiles(const at::Tensor& hidden_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const at::Tensor& target_in, int64_t ignore_index, double eps, double w, double scale,
                 const double* row_scale, const double* row_glse, std::array<bool, 3> need) {
  const int64_t D = hidden_in.size(-1), V = weight.size(0);
  const at::Tensor h = hidden_in.reshape({-1, D}).contiguous();
  const at::Tensor target = target_in.reshape({-1}).contiguous();
  const int64_t N = h.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool low = h.scalar_type() == at::kBFloat16 || h.scalar_type() == at::kHalf;
  const auto acc_dtype = low ? at::kFloat : h.scalar_type();
  const bool any_grad = need[0] || need[1] || need[2];

  Result r;
  r.loss_rows.resize(static_cast<size_t>(N));
  r.lse_rows.resize(static_cast<size_t>(N));
  if (need[0]) r.grad_hidden = at::empty({N, D}, h.options());
  at::Tensor dw = need[1] ? at::zeros({V, D}, h.options().dtype(acc_dtype)) : at::Tensor();
  at::Tensor db = need[2] && has_bias ? at::zeros({V}, h.options().dtype(acc_dtype)) : at::Tensor();

  const int64_t R = tile_rows(N, D, V, static_cast<int64_t>(h.element_size()));
  at::Tensor tile = at::empty({std::min(R, N), V}, h.options());
  const at::Tensor wt = weight.t();
  const int64_t* tgt = target.data_ptr<int64_t>();
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rr = std::min(R, N - r0);
    const at::Tensor ht = h.narrow(0, r0, rr);
    at::Tensor z = tile.narrow(0, 0, rr);
    if (has_bias) {
      at::addmm_out(z, *bias, ht, wt);
    } else {
      at::mm_out(z, ht, wt);
    }
    cross_entropy_rows(z, tgt + r0, ignore_index, eps, w, r.loss_rows.data() + r0, r.lse_rows.data() + r0,
                       any_grad ? &z : nullptr, scale, row_scale ? row_scale + r0 : nullptr,
                       row_glse ? row_glse + r0 : nullptr);
    if (!any_grad) continue;
    if (need[0]) {
      at::Tensor gh = r.grad_hidden.narrow(0, r0, rr);
      at::mm_out(gh, z, weight);
    }
    if (dw.defined()) {
      if (low) {
        dw.addmm_(z.t().to(at::kFloat), ht.to(at::kFloat));
      } else {
        dw.addmm_(z.t(), ht);
      }
    }
    if (db.defined()) db.add_(z.sum(0, false, acc_dtype));
  }
  if (dw.defined()) r.grad_weight = dw.to(weight.scalar_type());
  if (db.defined()) r.grad_bias = db.to(bias->scalar_type());
  return r;
}

at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_forward_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, int64_t ignore_index, int64_t reduction, double eps, double w,
    std::array<bool, 3> output_mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, eps, w);
  const Reduction red = to_reduction(reduction);
  TORCH_CHECK_VALUE(red != Reduction::None || !(output_mask[0] || output_mask[1] || output_mask[2]),
                    "linear_cross_entropy_forward: gradients in the forward need reduction mean or sum");
  auto out = alloc_cross_entropy_outputs(hidden.select(-1, 0), target, red);
  const int64_t count = count_valid_targets(target.reshape({-1}).contiguous(), weight.size(0), ignore_index,
                                            "linear_cross_entropy");
  const double c = red == Reduction::Mean ? (count > 0 ? 1.0 / static_cast<double>(count) : 0.0) : 1.0;
  Result r = run_tiles(hidden, weight, bias, target, ignore_index, eps, w, c, nullptr, nullptr, output_mask);
  write_rows(out.lse, r.lse_rows);
  if (red == Reduction::None) {
    write_rows(out.loss, r.loss_rows);
  } else {
    double total = 0.0;  // fixed order
    for (double v : r.loss_rows) total += v;
    write_rows(out.loss, {total * c});
  }
  const at::Tensor gh = r.grad_hidden.defined() ? r.grad_hidden.view(hidden.sizes()) : r.grad_hidden;
  return {out.loss, out.lse, or_empty(gh, hidden), or_empty(r.grad_weight, weight), or_empty(r.grad_bias, weight)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& target, int64_t ignore_index,
    int64_t reduction, double eps, double w, std::array<bool, 3> output_mask) {
  check_linear_cross_entropy_args(hidden, weight, bias, target, eps, w);
  const Reduction red = to_reduction(reduction);
  const at::Tensor probe = hidden.select(-1, 0);  // a tensor of target's shape with hidden's dtype
  check_cross_entropy_backward_args(grad_loss, grad_lse, probe, target, at::empty(target.sizes(), grad_loss.options()),
                                    red);
  const int64_t count = count_valid_targets(target.reshape({-1}).contiguous(), weight.size(0), ignore_index,
                                            "linear_cross_entropy");
  const std::vector<double> gl = read_rows(grad_loss);
  std::vector<double> glse;
  if (grad_lse.has_value() && grad_lse->defined()) glse = read_rows(*grad_lse);
  double scale = 1.0;
  if (red == Reduction::Mean) scale = count > 0 ? gl[0] / static_cast<double>(count) : 0.0;
  if (red == Reduction::Sum) scale = gl[0];
  Result r = run_tiles(hidden, weight, bias, target, ignore_index, eps, w, scale,
                       red == Reduction::None ? gl.data() : nullptr, glse.empty() ? nullptr : glse.data(), output_mask);
  const at::Tensor gh = r.grad_hidden.defined() ? r.grad_hidden.view(hidden.sizes()) : r.grad_hidden;
  return {or_empty(gh, hidden), or_empty(r.grad_weight, weight), or_empty(r.grad_bias, weight)};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("linear_cross_entropy_forward", &linear_cross_entropy_forward_cpu);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_cpu);
}

}  // namespace arwrap::ops::cpu
