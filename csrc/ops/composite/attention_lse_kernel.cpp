// attention_lse: the log-sum-exp of every attention row, for the attention z-loss
// (x-transformers' calc_z_loss squares the sum of it over layers).
//
//   lse[b, h, i] = log sum_j exp(scale * q[b,h,i] . k[b,h,j])   over the keys row i may see
//                  (j <= i + (nk - nq) when causal; key_mask[b, j] true)
//   d lse_i / d q_i = scale * sum_j p_ij k_j,   d lse_i / d k_j = scale * p_ij q_i,
//   with p = softmax of the row (so the backward is two matmuls of the recomputed p).
//
// at::scaled_dot_product_attention does not hand out a differentiable lse, and
// materialising the (b, h, n, n) scores is what the fused attention avoids. So the
// scores are recomputed in blocks of rows, forward and backward: memory is one
// block (rows x nk per head), never n^2. Masked scores get the lowest finite value,
// as x-transformers' masking does. Scores and lse are float32 (float64 for float64
// inputs) whatever the input dtype; the gradients come back in the input's dtype.
// Written with ATen ops, so one kernel serves every device (CompositeExplicitAutograd)
// and the Meta key: this file is attention_lse's CPU, CUDA and Meta kernel at once.
// Schema and entries: ../attention_lse.cpp; autograd: ../autograd/attention_lse_kernel.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

namespace arwrap::ops::composite {
namespace {

void check_args(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4, "attention_lse: q and k must be (batch, heads, seq, dim_head), got q ",
                    q.sizes(), " and k ", k.sizes());
  TORCH_CHECK_VALUE(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
                    "attention_lse: q ", q.sizes(), " and k ", k.sizes(), " must agree in batch, heads and dim_head");
  TORCH_CHECK_VALUE(q.size(2) <= k.size(2), "attention_lse: q has more positions (", q.size(2), ") than k (",
                    k.size(2), ")");
  TORCH_CHECK_VALUE(at::isFloatingType(q.scalar_type()) && q.scalar_type() == k.scalar_type(),
                    "attention_lse: q and k must be floating point of one dtype, got ", q.scalar_type(), " and ",
                    k.scalar_type());
  TORCH_CHECK_VALUE(q.device() == k.device(), "attention_lse: q and k must be on one device");
  if (key_mask.has_value() && key_mask->defined()) {
    const auto& m = *key_mask;
    TORCH_CHECK_VALUE(m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == k.size(0) && m.size(1) == k.size(2),
                      "attention_lse: key_mask must be bool (batch=", k.size(0), ", keys=", k.size(2), "), got ",
                      m.scalar_type(), " ", m.sizes());
    TORCH_CHECK_VALUE(m.device() == k.device(), "attention_lse: key_mask must be on the device of k");
  }
}

int64_t rows_per_block(const at::Tensor& q, const at::Tensor& k) {
  // about 4M scores per block
  const int64_t per_row = std::max<int64_t>(1, q.size(0) * q.size(1) * k.size(2));
  return std::clamp<int64_t>((int64_t{1} << 22) / per_row, 1, std::max<int64_t>(1, q.size(2)));
}

// Scaled scores of rows [i0, i0 + rows), masked with the lowest finite value.
at::Tensor block_scores(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                        double scale, bool causal, int64_t i0, int64_t rows) {
  const int64_t nq = q.size(2), nk = k.size(2);
  at::Tensor s = at::matmul(q.narrow(2, i0, rows), k.transpose(-1, -2)).mul_(scale);  // (b, h, rows, nk)
  const double lowest = s.scalar_type() == at::kDouble ? std::numeric_limits<double>::lowest()
                                                       : static_cast<double>(std::numeric_limits<float>::lowest());
  if (causal) {
    const at::Tensor i = at::arange(i0 + (nk - nq), i0 + (nk - nq) + rows, q.options().dtype(at::kLong)).unsqueeze(1);
    const at::Tensor j = at::arange(nk, q.options().dtype(at::kLong)).unsqueeze(0);
    s.masked_fill_(j.gt(i), lowest);
  }
  if (key_mask.has_value() && key_mask->defined()) {
    s.masked_fill_(key_mask->logical_not().unsqueeze(1).unsqueeze(1), lowest);
  }
  return s;
}

at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor attention_lse_kernel(const at::Tensor& q_in, const at::Tensor& k_in,
                                const std::optional<at::Tensor>& key_mask, double scale, bool causal) {
  check_args(q_in, k_in, key_mask);
  const at::Tensor q = q_in.to(accumulate_type(q_in)), k = k_in.to(accumulate_type(q_in));
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  const int64_t block = rows_per_block(q, k);
  for (int64_t i0 = 0; i0 < q.size(2); i0 += block) {
    const int64_t rows = std::min(block, q.size(2) - i0);
    lse.narrow(2, i0, rows).copy_(at::logsumexp(block_scores(q, k, key_mask, scale, causal, i0, rows), {-1}));
  }
  return lse;
}

std::tuple<at::Tensor, at::Tensor> attention_lse_backward_kernel(const at::Tensor& grad_in, const at::Tensor& q_in,
                                                                 const at::Tensor& k_in,
                                                                 const std::optional<at::Tensor>& key_mask,
                                                                 double scale, bool causal, const at::Tensor& lse_in) {
  check_args(q_in, k_in, key_mask);
  const auto acc = accumulate_type(q_in);
  const at::Tensor q = q_in.to(acc), k = k_in.to(acc), grad = grad_in.to(acc), lse = lse_in.to(acc);
  TORCH_CHECK_VALUE(grad.sizes() == lse.sizes() && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                        lse.size(2) == q.size(2),
                    "attention_lse_backward: grad ", grad.sizes(), " and lse ", lse.sizes(),
                    " must be (batch, heads, rows of q)");
  at::Tensor dq = at::empty_like(q);
  at::Tensor dk = at::zeros_like(k);
  const int64_t block = rows_per_block(q, k);
  for (int64_t i0 = 0; i0 < q.size(2); i0 += block) {
    const int64_t rows = std::min(block, q.size(2) - i0);
    at::Tensor s = block_scores(q, k, key_mask, scale, causal, i0, rows);
    // p * grad * scale, in place over the scores
    s.sub_(lse.narrow(2, i0, rows).unsqueeze(-1)).exp_().mul_(grad.narrow(2, i0, rows).unsqueeze(-1) * scale);
    dq.narrow(2, i0, rows).copy_(at::matmul(s, k));
    dk.add_(at::matmul(s.transpose(-1, -2), q.narrow(2, i0, rows)));
  }
  return {dq.to(q_in.scalar_type()), dk.to(k_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CompositeExplicitAutograd, m) {
  m.impl("attention_lse", &attention_lse_kernel);
  m.impl("attention_lse_backward", &attention_lse_backward_kernel);
}

}  // namespace arwrap::ops::composite
