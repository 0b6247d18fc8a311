// CUDA kernel of attention and attention_backward: PyTorch's memory-efficient attention
// (_scaled_dot_product_efficient_attention and its backward, with their log-sum-exp), so the
// operator runs on a GPU without a CUDA kernel of ours; what it does not take (a key mask,
// causal with fewer queries than keys, float64) goes through the plain ATen reference path
// (../attention_math.h). A .cpp: it composes dispatched operators, so it is compiled in every
// build. It has not yet run on a GPU: the padding of the log-sum-exp to a multiple of 32 rows
// follows PyTorch's mem-efficient kernel and is checked by tests/ops/test_attention.py's CUDA
// case (marked cuda), which skips without a GPU.
#include "../attention_args.h"
#include "../attention_math.h"

#include <ATen/ops/_scaled_dot_product_efficient_attention.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention_backward.h>
#include <torch/library.h>

namespace arwrap::ops::cuda {
namespace {

constexpr int64_t kLseAlign = 32;  // the mem-efficient kernel's log-sum-exp rows come in multiples of 32

bool efficient(const at::Tensor& q, const AttentionShape& s, const std::optional<at::Tensor>& key_mask, bool causal) {
  const bool dtype_ok = q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                        q.scalar_type() == at::kHalf;
  return dtype_ok && !(key_mask.has_value() && key_mask->defined()) && (!causal || s.m == s.n);
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const std::optional<at::Tensor>& key_mask,
                                                  std::optional<double> scale_opt, bool causal) {
  const double scale = attention_scale(q, scale_opt);
  const AttentionShape s = check_attention_args("attention", q, k, v, key_mask);
  if (!efficient(q, s, key_mask, causal)) return math::forward(q, k, v, key_mask, scale, causal);
  auto r = at::_scaled_dot_product_efficient_attention(q, k, v, std::nullopt, /*compute_log_sumexp=*/true, 0.0,
                                                       causal, scale);
  auto [out, lse] = alloc_attention_outputs(q, s);
  out.copy_(std::get<0>(r));
  lse.copy_(std::get<1>(r).narrow(2, 0, s.m));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double scale, bool causal) {
  const AttentionShape s = check_attention_args("attention_backward", q, k, v, key_mask);
  check_attention_backward_args(grad_out, grad_lse, out, lse, s);
  // the efficient backward knows no gradient of lse: that case takes the reference path too
  const bool glse = grad_lse.has_value() && grad_lse->defined();
  if (glse || !efficient(q, s, key_mask, causal)) {
    return math::backward(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
  }
  const int64_t rows = (s.m + kLseAlign - 1) / kLseAlign * kLseAlign;
  at::Tensor lse_padded = at::zeros({s.b, s.h, rows}, lse.options().dtype(at::kFloat));
  lse_padded.narrow(2, 0, s.m).copy_(lse);
  const at::Tensor no_seed = at::empty({}, q.options().dtype(at::kLong));
  auto r = at::_scaled_dot_product_efficient_attention_backward(grad_out, q, k, v, at::Tensor(), out, lse_padded,
                                                                no_seed, no_seed, 0.0, {true, true, true, false},
                                                                causal, scale);
  auto [dq, dk, dv] = alloc_attention_grads(q, s);
  dq.copy_(std::get<0>(r));
  dk.copy_(std::get<1>(r));
  dv.copy_(std::get<2>(r));
  return {dq, dk, dv};
}

// over q, k and v: the backward above, then copies (no memory saved on the GPU; correct)
void attention_backward_inplace_cuda(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                                     const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                     const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale,
                                     bool causal) {
  const auto [dq, dk, dv] = attention_backward_cuda(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
  q.copy_(dq);
  k.copy_(dk);
  v.copy_(dv);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CUDA, m) {
  m.impl("attention", &attention_cuda);
  m.impl("attention_backward", &attention_backward_cuda);
  m.impl("attention_backward_", &attention_backward_inplace_cuda);
}

}  // namespace arwrap::ops::cuda
