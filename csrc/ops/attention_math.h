// attention written with ATen ops over the whole (m, n) scores: the plain reference path of the
// fused kernels. The CPU kernel takes it for float64 (so gradcheck runs) and float16; the CUDA
// kernel for what PyTorch's efficient attention does not take (a key mask, causal with fewer
// queries than keys, float64). Memory: the (b, h, m, n) scores, so not for long sequences.
// Same math as cpu/attention_simd.inc (its header comment).
#pragma once

#include "attention_args.h"

#include <ATen/ATen.h>

#include <limits>

namespace arwrap::ops::math {

// (b or 1, 1, m, n) bool: true where row i may see key j; undefined when every key is visible.
inline at::Tensor allowed(const AttentionShape& s, const at::Tensor& q, const std::optional<at::Tensor>& key_mask,
                          bool causal) {
  at::Tensor a;
  if (causal) a = at::ones({s.m, s.n}, q.options().dtype(at::kBool)).tril(s.n - s.m).view({1, 1, s.m, s.n});
  if (key_mask.has_value() && key_mask->defined()) {
    const at::Tensor km = key_mask->view({s.b, 1, 1, s.n});
    a = a.defined() ? a.logical_and(km) : km.expand({s.b, 1, s.m, s.n});
  }
  return a;
}

// p (b, h, m, n) in the accumulation dtype and lse (b, h, m); rows that see no key: p 0, lse -inf.
inline std::tuple<at::Tensor, at::Tensor> probabilities(const AttentionShape& s, const at::Tensor& q,
                                                        const at::Tensor& k, const std::optional<at::Tensor>& key_mask,
                                                        double scale, bool causal, at::ScalarType acc) {
  at::Tensor scores = at::matmul(q.to(acc), k.to(acc).transpose(-2, -1)).mul_(scale);
  const at::Tensor a = allowed(s, q, key_mask, causal);
  if (a.defined()) scores.masked_fill_(a.logical_not(), -std::numeric_limits<double>::infinity());
  const at::Tensor lse = at::logsumexp(scores, {-1});
  const at::Tensor p = (scores - lse.unsqueeze(-1)).exp_().masked_fill_(lse.isneginf().unsqueeze(-1), 0.0);
  return {p, lse};
}

inline at::ScalarType accumulate_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& key_mask, double scale, bool causal) {
  const AttentionShape s = check_attention_args("attention", q, k, v, key_mask);
  auto [out, lse] = alloc_attention_outputs(q, s);
  const auto acc = accumulate_type(q);
  auto [p, l] = probabilities(s, q, k, key_mask, scale, causal, acc);
  out.copy_(at::matmul(p, v.to(acc)));
  lse.copy_(l);
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double scale, bool causal) {
  const AttentionShape s = check_attention_args("attention_backward", q, k, v, key_mask);
  check_attention_backward_args(grad_out, grad_lse, out, lse, s);
  const auto acc = accumulate_type(q);
  auto [p, l] = probabilities(s, q, k, key_mask, scale, causal, acc);
  const at::Tensor g = grad_out.to(acc);
  at::Tensor D = (g * out.to(acc)).sum(-1, true);
  if (grad_lse.has_value() && grad_lse->defined()) D = D - grad_lse->to(acc).unsqueeze(-1);
  const at::Tensor ds = p * (at::matmul(g, v.to(acc).transpose(-2, -1)) - D) * scale;
  auto [dq, dk, dv] = alloc_attention_grads(q, s);
  dq.copy_(at::matmul(ds, k.to(acc)));
  dk.copy_(at::matmul(ds.transpose(-2, -1), q.to(acc)));
  dv.copy_(at::matmul(p.transpose(-2, -1), g));
  return {dq, dk, dv};
}

}  // namespace arwrap::ops::math
