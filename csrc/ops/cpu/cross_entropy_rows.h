// The row kernels of the fused cross-entropy (cross_entropy_rows.cpp), shared by
// cross_entropy and linear_cross_entropy (which runs them on tiles of logits it
// computes itself).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace arwrap::ops::cpu {

// Checks that every target is in [0, V) or ignore_index (a clear error naming the
// first bad one) and returns how many are not ignored.
int64_t count_valid_targets(const at::Tensor& target, int64_t V, int64_t ignore_index,
                            const char* op = "cross_entropy");

// For each row i of logits (..., V) (unit stride in V, any leading strides):
// row_losses[i] and lse_rows[i]. When grad is given (it may be logits itself: the
// gradient is then written in place; otherwise it is contiguous (N, V)), also
// grad[i] = c_i * dloss_i/dlogits_i with c_i = row_scale[i] (or scale when row_scale
// is null) for non-ignored rows and 0 for ignored ones, plus row_glse[i] * softmax
// (the gradient through lse) when row_glse is given. Rows run in parallel; each
// row's result is independent of the thread count.
void cross_entropy_rows(const at::Tensor& logits, const int64_t* target, int64_t ignore_index, double label_smoothing,
                        double z_loss_weight, double* row_losses, double* lse_rows, const at::Tensor* grad,
                        double scale, const double* row_scale, const double* row_glse);

// The gradient from the saved per-row lse: grad[i] = c_i * dloss_i/dlogits_i +
// row_glse[i] * softmax(logits[i]) (row_glse may be null), with c_i = row_scale[i] (or
// scale when row_scale is null) for non-ignored rows and 0 for ignored ones. grad has
// unit stride in V and may be logits itself (written in place). Targets must have been
// checked (count_valid_targets).
void cross_entropy_rows_backward(const at::Tensor& logits, const int64_t* target, int64_t ignore_index,
                                 double label_smoothing, double z_loss_weight, const double* lse_rows, double scale,
                                 const double* row_scale, const double* row_glse, const at::Tensor& grad);

// Per-row values (loss, lse, upstream gradients) cross through double vectors:
// O(rows), whatever the loss dtype (float32, or float64 for float64 logits).
inline void write_rows(const at::Tensor& dst, const std::vector<double>& v) {
  if (dst.scalar_type() == at::kDouble) {
    double* p = dst.data_ptr<double>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = v[i];
  } else {
    float* p = dst.data_ptr<float>();
    for (size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
  }
}

inline std::vector<double> read_rows(const at::Tensor& src) {
  const at::Tensor d = src.to(at::kDouble).contiguous();
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

}  // namespace arwrap::ops::cpu
