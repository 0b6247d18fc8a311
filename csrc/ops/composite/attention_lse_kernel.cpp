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
// inputs) whatever the input dtype, from bf16/fp16 products with a float32 result where
// the backend has them (../low_precision_mm.h); the gradients come back in the input's dtype.
// Written with ATen ops, so one kernel serves every device (CompositeExplicitAutograd)
// and the Meta key: this file is attention_lse's CPU, CUDA and Meta kernel at once.
// Schema and entries: ../attention_lse.cpp; autograd: ../autograd/attention_lse_kernel.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../low_precision_mm.h"

#include <algorithm>
#include <cstdlib>
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

// Tiles of (heads x rows) over the flattened b*h heads: at least min(nq, 64) rows, so
// each product is a GEMM (K re-read once per 64 rows) rather than a one-row GEMV even
// when b*h*nk alone fills the budget, and as many heads as keep a tile near the score
// budget (2^22 scores, 16 MB in float32; ARWRAP_ATTENTION_LSE_TILE_SCORES overrides it,
// for the tests).
struct Tile {
  int64_t heads, rows;
};

int64_t tile_score_budget() {
  if (const char* env = std::getenv("ARWRAP_ATTENTION_LSE_TILE_SCORES")) {
    const long long v = std::atoll(env);
    if (v > 0) return v;
  }
  return int64_t{1} << 22;
}

Tile tile_shape(int64_t bh, int64_t nq, int64_t nk) {
  const int64_t budget = tile_score_budget();
  const int64_t min_rows = std::min<int64_t>(nq, 64);
  const int64_t rows = std::clamp<int64_t>(budget / std::max<int64_t>(1, bh * nk), std::max<int64_t>(1, min_rows),
                                           std::max<int64_t>(1, nq));
  const int64_t heads = std::clamp<int64_t>(budget / std::max<int64_t>(1, rows * nk), 1, std::max<int64_t>(1, bh));
  return {heads, rows};
}

// The flattened operands: q3 (b*h, nq, d), k3 (b*h, nk, d), and the key mask per flattened
// head (b*h, nk) or undefined.
struct Flat {
  at::Tensor q3, k3, mask;
};

Flat flatten(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask) {
  const int64_t bh = q.size(0) * q.size(1);
  Flat f{q.reshape({bh, q.size(2), q.size(3)}), k.reshape({bh, k.size(2), k.size(3)}), at::Tensor()};
  if (key_mask.has_value() && key_mask->defined()) {  // (b, nk) -> (b*h, nk); an expand, no host sync
    f.mask = key_mask->unsqueeze(1).expand({q.size(0), q.size(1), k.size(2)}).reshape({bh, k.size(2)});
  }
  return f;
}

// Scaled scores of heads [h0, h0 + hh) and rows [i0, i0 + rows) in float32 (float64 for
// float64 inputs; bf16/fp16 products with a float32 result, low_precision_mm.h), masked
// with the lowest finite value. (hh, rows, nk).
at::Tensor tile_scores(const Flat& f, int64_t nq, double scale, bool causal, int64_t h0, int64_t hh, int64_t i0,
                       int64_t rows) {
  const int64_t nk = f.k3.size(1);
  at::Tensor s = bmm_f32(f.q3.narrow(0, h0, hh).narrow(1, i0, rows), f.k3.narrow(0, h0, hh).transpose(1, 2)).mul_(scale);
  const double lowest = s.scalar_type() == at::kDouble ? std::numeric_limits<double>::lowest()
                                                       : static_cast<double>(std::numeric_limits<float>::lowest());
  if (causal) {
    const at::Tensor i = at::arange(i0 + (nk - nq), i0 + (nk - nq) + rows, f.q3.options().dtype(at::kLong)).unsqueeze(1);
    const at::Tensor j = at::arange(nk, f.q3.options().dtype(at::kLong)).unsqueeze(0);
    s.masked_fill_(j.gt(i), lowest);
  }
  if (f.mask.defined()) s.masked_fill_(f.mask.narrow(0, h0, hh).logical_not().unsqueeze(1), lowest);
  return s;
}

at::ScalarType accumulate_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor attention_lse_kernel(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                double scale, bool causal) {
  check_args(q, k, key_mask);
  const Flat f = flatten(q, k, key_mask);
  const int64_t bh = f.q3.size(0), nq = q.size(2);
  at::Tensor lse = at::empty({bh, nq}, q.options().dtype(accumulate_type(q)));
  const Tile t = tile_shape(bh, nq, k.size(2));
  for (int64_t h0 = 0; h0 < bh; h0 += t.heads) {
    const int64_t hh = std::min(t.heads, bh - h0);
    for (int64_t i0 = 0; i0 < nq; i0 += t.rows) {
      const int64_t rows = std::min(t.rows, nq - i0);
      lse.narrow(0, h0, hh).narrow(1, i0, rows).copy_(at::logsumexp(tile_scores(f, nq, scale, causal, h0, hh, i0, rows), {-1}));
    }
  }
  return lse.view({q.size(0), q.size(1), nq});
}

// dq = scale g p k, dk = scale p^T (g q), from the recomputed p of each tile. For bfloat16
// inputs the two products take p * g * scale rounded to bfloat16 (its range is float32's,
// so nothing underflows) with a float32 result, as flash attention's backward does; float16
// keeps float32 products (p * g * scale would underflow its range).
std::tuple<at::Tensor, at::Tensor> attention_lse_backward_kernel(const at::Tensor& grad_in, const at::Tensor& q,
                                                                 const at::Tensor& k,
                                                                 const std::optional<at::Tensor>& key_mask,
                                                                 double scale, bool causal, const at::Tensor& lse_in) {
  check_args(q, k, key_mask);
  const auto acc = accumulate_type(q);
  TORCH_CHECK_VALUE(grad_in.sizes() == lse_in.sizes() && lse_in.dim() == 3 && lse_in.size(0) == q.size(0) &&
                        lse_in.size(1) == q.size(1) && lse_in.size(2) == q.size(2),
                    "attention_lse_backward: grad ", grad_in.sizes(), " and lse ", lse_in.sizes(),
                    " must be (batch, heads, rows of q)");
  const Flat f = flatten(q, k, key_mask);
  const int64_t bh = f.q3.size(0), nq = q.size(2), nk = k.size(2);
  const at::Tensor grad = grad_in.to(acc).reshape({bh, nq}), lse = lse_in.to(acc).reshape({bh, nq});
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  const at::Tensor qp = bf16 || !at::isReducedFloatingType(q.scalar_type()) ? f.q3 : f.q3.to(acc);
  const at::Tensor kp = bf16 || !at::isReducedFloatingType(k.scalar_type()) ? f.k3 : f.k3.to(acc);
  at::Tensor dq = at::empty({bh, nq, q.size(3)}, q.options().dtype(acc));
  at::Tensor dk = at::zeros({bh, nk, k.size(3)}, k.options().dtype(acc));
  const Tile t = tile_shape(bh, nq, nk);
  for (int64_t h0 = 0; h0 < bh; h0 += t.heads) {
    const int64_t hh = std::min(t.heads, bh - h0);
    for (int64_t i0 = 0; i0 < nq; i0 += t.rows) {
      const int64_t rows = std::min(t.rows, nq - i0);
      at::Tensor s = tile_scores(f, nq, scale, causal, h0, hh, i0, rows);
      // p * grad * scale, in place over the scores
      s.sub_(lse.narrow(0, h0, hh).narrow(1, i0, rows).unsqueeze(-1))
          .exp_()
          .mul_(grad.narrow(0, h0, hh).narrow(1, i0, rows).unsqueeze(-1) * scale);
      const at::Tensor p = bf16 ? s.to(at::kBFloat16) : s;
      dq.narrow(0, h0, hh).narrow(1, i0, rows).copy_(bmm_f32(p, kp.narrow(0, h0, hh)));
      dk.narrow(0, h0, hh).add_(bmm_f32(p.transpose(1, 2), qp.narrow(0, h0, hh).narrow(1, i0, rows)));
    }
  }
  return {dq.view(q.sizes()).to(q.scalar_type()), dk.view(k.sizes()).to(k.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CompositeExplicitAutograd, m) {
  m.impl("attention_lse", &attention_lse_kernel);
  m.impl("attention_lse_backward", &attention_lse_backward_kernel);
}

}  // namespace arwrap::ops::composite
