// CPU kernel of the fused cross-entropy: the forward and backward row sweeps behind
// the shared entry points (../cross_entropy_entries.h); the row math is in
// cross_entropy_rows.cpp.
//
// Per row z (length V) with target t, label smoothing eps and z-loss weight w:
//   lse    = log sum_j exp(z_j)
//   nll    = lse - z_t = log1p(sum_{j != t} exp(z_j - z_t))   (no cancellation for
//            confident rows: the sum over j != t is accumulated apart from z_t)
//   loss   = (1 - eps) nll + eps (lse - mean_j z_j) + w lse^2
//   dloss/dz_j = p_j (1 + 2 w lse) - eps / V - (1 - eps) [j == t],   p = softmax(z)
// and for the true class p_t - 1 = -sum_{j != t} p_j, again without cancellation.
//
// Memory traffic per row: the forward reads z once (blocks of kBlock values:
// a max pass and an exp-sum pass over an L1-resident block, an online rescale
// between blocks). The fused forward+gradient then writes the gradient in a second
// sweep over the row, which is still in L2: one read and one write of the logits
// in all. The plain backward reads z and writes the gradient once.
//
// Every row is computed by one thread, and the loss is reduced over rows in a
// fixed order in double, so results are bitwise independent of the thread count.
#include "../common.h"
#include "../cross_entropy_entries.h"
#include "cross_entropy_rows.h"
#include "huge_page_buffer.h"

#include <torch/library.h>

#include <vector>

namespace arwrap::ops::cpu {
namespace {

// Forward (and, when grad is defined, the gradient for an upstream gradient of 1
// on the reduced loss, written into grad, which may be logits itself).
void forward_impl(const at::Tensor& logits, const at::Tensor& target_in, int64_t ignore_index, Reduction reduction,
                  double label_smoothing, double z_loss_weight, const at::Tensor& loss, const at::Tensor& lse,
                  const at::Tensor* grad) {
  TORCH_CHECK_VALUE(logits.device().is_cpu(), "cross_entropy: expected CPU tensors");
  const at::Tensor lg = logits.stride(-1) == 1 ? logits : logits.contiguous();
  TORCH_INTERNAL_ASSERT(grad == nullptr || lg.is_same(logits) || !grad->is_same(logits),
                        "in-place gradient needs unit stride in the vocabulary dimension");
  const at::Tensor target = target_in.contiguous();
  const int64_t V = lg.size(-1);
  const int64_t N = target.numel();
  const int64_t count = count_valid_targets(target, V, ignore_index);
  const double c = reduction_scale(reduction, count);

  std::vector<double> row_losses(static_cast<size_t>(N));
  std::vector<double> lse_rows(static_cast<size_t>(N));
  cross_entropy_rows(lg, target.data_ptr<int64_t>(), ignore_index, label_smoothing, z_loss_weight, row_losses.data(),
                     lse_rows.data(), grad, c, nullptr, nullptr);

  write_rows(lse, lse_rows);
  if (reduction == Reduction::None) {
    write_rows(loss, row_losses);
  } else {
    double total = 0.0;  // fixed order: bitwise reproducible
    for (int64_t i = 0; i < N; ++i) total += row_losses[static_cast<size_t>(i)];
    write_rows(loss, {total * c});
  }
}

// Gradient from saved lse: grad (may be logits itself) = dL/dlogits.
void backward_impl(const at::Tensor& grad_loss, const std::optional<at::Tensor>& grad_lse, const at::Tensor& logits,
                   const at::Tensor& target_in, const at::Tensor& lse_in, int64_t ignore_index, Reduction reduction,
                   double label_smoothing, double z_loss_weight, const at::Tensor& grad) {
  // (the arguments are checked by the entry, cross_entropy_entries.h)
  const at::Tensor lg = logits.stride(-1) == 1 ? logits : logits.contiguous();
  const at::Tensor target = target_in.contiguous();
  const std::vector<double> lsev = read_rows(lse_in);
  const std::vector<double> glv = read_rows(grad_loss);
  const bool has_glse = grad_lse.has_value() && grad_lse->defined();
  const std::vector<double> glsev = has_glse ? read_rows(*grad_lse) : std::vector<double>();
  const int64_t V = lg.size(-1);
  const int64_t count = count_valid_targets(target, V, ignore_index);
  const double* glp = glv.data();
  const double scale = reduction_scale(reduction, count, reduction == Reduction::None ? 1.0 : glp[0]);
  cross_entropy_rows_backward(lg, target.data_ptr<int64_t>(), ignore_index, label_smoothing, z_loss_weight,
                              lsev.data(), scale, reduction == Reduction::None ? glp : nullptr, has_glse ? glsev.data() : nullptr, grad);
}

struct CpuRows {
  // the gradient buffer comes on huge pages (huge_page_buffer.h)
  static at::Tensor empty_grad(const at::Tensor& logits) { return empty_large(logits.sizes(), logits.options()); }
  static constexpr auto forward = &forward_impl;
  static constexpr auto backward = &backward_impl;
};

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) { register_cross_entropy_kernels<CpuRows>(m); }

}  // namespace arwrap::ops::cpu
