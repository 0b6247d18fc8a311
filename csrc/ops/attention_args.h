// attention's argument checks, scale default and output allocation, shared by its CPU, CUDA
// and Meta kernels and its autograd kernel (written once: a fake tensor has the strides the
// real kernel gives).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>

namespace arwrap::ops {

struct AttentionShape {
  int64_t b, h, m, n, d;
};

// q (b, h, m, d), k and v (b, h, n, d), m <= n, one floating dtype and device; key_mask (b, n) bool.
inline AttentionShape check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const std::optional<at::Tensor>& key_mask) {
  TORCH_CHECK_VALUE(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be defined");
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
                    ": q, k and v must be 4-D (batch, heads, seq, dim_head), got q ", q.sizes(), ", k ", k.sizes(),
                    ", v ", v.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(q.scalar_type()) && q.scalar_type() == k.scalar_type() &&
                        q.scalar_type() == v.scalar_type(),
                    op, ": q, k and v must be floating point of one dtype, got ", q.scalar_type(), ", ",
                    k.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK_VALUE(q.device() == k.device() && q.device() == v.device(), op,
                    ": q, k and v must be on one device, got ", q.device(), ", ", k.device(), " and ", v.device());
  const AttentionShape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK_VALUE(s.d > 0, op, ": dim_head must be at least 1, got q ", q.sizes());
  TORCH_CHECK_VALUE(k.size(0) == s.b && v.size(0) == s.b && k.size(1) == s.h && v.size(1) == s.h, op,
                    ": q ", q.sizes(), ", k ", k.sizes(), " and v ", v.sizes(), " must agree in batch and heads");
  TORCH_CHECK_VALUE(k.size(3) == s.d && v.size(3) == s.d, op, ": q, k and v must have one dim_head, got ", s.d, ", ",
                    k.size(3), " and ", v.size(3));
  TORCH_CHECK_VALUE(v.size(2) == s.n, op, ": k and v must have the same number of keys, got ", s.n, " and ",
                    v.size(2));
  TORCH_CHECK_VALUE(s.m <= s.n, op, ": q has more positions (", s.m, ") than k and v (", s.n,
                    "); causal row i sees keys j <= i + (keys - queries)");
  if (key_mask.has_value() && key_mask->defined()) {
    const at::Tensor& km = *key_mask;
    TORCH_CHECK_VALUE(km.scalar_type() == at::kBool && km.dim() == 2 && km.size(0) == s.b && km.size(1) == s.n, op,
                      ": key_mask must be bool (batch=", s.b, ", keys=", s.n, "), got ", km.scalar_type(), " ",
                      km.sizes());
    TORCH_CHECK_VALUE(km.device() == q.device(), op, ": key_mask must be on the device of q (", q.device(),
                      "), got ", km.device());
  }
  return s;
}

// The score scale: given, or dim_head ** -0.5.
inline double attention_scale(const at::Tensor& q, std::optional<double> scale) {
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  TORCH_CHECK_VALUE(std::isfinite(s), "attention: scale must be finite, got ", s);
  return s;
}

// (b, h, rows, d) in the memory order (b, rows, h, d): the layout the projections produce and the
// output projection reads, so `out.transpose(1, 2).reshape(b, rows, h * d)` is a view.
inline at::Tensor alloc_heads(const at::Tensor& like, int64_t b, int64_t h, int64_t rows, int64_t d) {
  return at::empty({b, rows, h, d}, like.options()).permute({0, 2, 1, 3});
}

// out (b, h, m, d) in q's dtype, lse (b, h, m) float32 (float64 for float64 inputs).
inline std::tuple<at::Tensor, at::Tensor> alloc_attention_outputs(const at::Tensor& q, const AttentionShape& s) {
  const auto lse_dtype = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {alloc_heads(q, s.b, s.h, s.m, s.d), at::empty({s.b, s.h, s.m}, q.options().dtype(lse_dtype))};
}

inline void check_attention_backward_args(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                                          const at::Tensor& out, const at::Tensor& lse, const AttentionShape& s) {
  TORCH_CHECK_VALUE(grad_out.defined() && grad_out.dim() == 4 && grad_out.size(0) == s.b && grad_out.size(1) == s.h &&
                        grad_out.size(2) == s.m && grad_out.size(3) == s.d,
                    "attention_backward: grad_out must be (", s.b, ", ", s.h, ", ", s.m, ", ", s.d, "), got ",
                    grad_out.defined() ? c10::str(grad_out.sizes()) : std::string("nothing"));
  TORCH_CHECK_VALUE(out.sizes() == grad_out.sizes() && out.scalar_type() == grad_out.scalar_type(),
                    "attention_backward: out ", out.sizes(), " ", out.scalar_type(), " must match grad_out ",
                    grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == s.b && lse.size(1) == s.h && lse.size(2) == s.m,
                    "attention_backward: lse must be (", s.b, ", ", s.h, ", ", s.m, "), got ", lse.sizes());
  if (grad_lse.has_value() && grad_lse->defined()) {
    TORCH_CHECK_VALUE(grad_lse->sizes() == lse.sizes(), "attention_backward: grad_lse must be ", lse.sizes(),
                      ", got ", grad_lse->sizes());
  }
}

// dq (b, h, m, d), dk and dv (b, h, n, d), each in the (b, seq, h, d) memory order.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> alloc_attention_grads(const at::Tensor& q,
                                                                            const AttentionShape& s) {
  return {alloc_heads(q, s.b, s.h, s.m, s.d), alloc_heads(q, s.b, s.h, s.n, s.d), alloc_heads(q, s.b, s.h, s.n, s.d)};
}

}  // namespace arwrap::ops
