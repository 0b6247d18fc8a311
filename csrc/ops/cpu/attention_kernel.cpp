// CPU kernels of attention and attention_backward: float32 and bfloat16 through the fused
// flash-style kernel (attention_simd.inc: the math, the blocking and the memory traffic), one
// (batch, head) per task of at::parallel_for, so the bits do not depend on the thread count;
// float64 and float16 through the plain ATen reference path (../attention_math.h).
// q, k, v, out and dout are read through their strides (no .contiguous() copies).
#include "../attention_args.h"
#include "../attention_math.h"
#include "attention_simd.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <vector>

namespace arwrap::ops::cpu {
namespace {

bool fused(const at::Tensor& q) { return q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16; }

// One (batch, head)'s matrix of a (b, h, rows, d) tensor.
attn::Matrix head(const at::Tensor& t, int64_t b, int64_t h) {
  const char* base = static_cast<const char*>(t.const_data_ptr()) + (b * t.stride(0) + h * t.stride(1)) * t.element_size();
  return {base, t.stride(2), t.stride(3)};
}
attn::MutMatrix mut_head(const at::Tensor& t, int64_t b, int64_t h) {
  char* base = static_cast<char*>(t.data_ptr()) + (b * t.stride(0) + h * t.stride(1)) * t.element_size();
  return {base, t.stride(2), t.stride(3)};
}

// (b, n) float32: 0 where a key is visible, -inf where key_mask hides it; undefined without a mask.
at::Tensor key_bias(const std::optional<at::Tensor>& key_mask) {
  if (!key_mask.has_value() || !key_mask->defined()) return {};
  return at::zeros(key_mask->sizes(), key_mask->options().dtype(at::kFloat))
      .masked_fill_(key_mask->logical_not(), -std::numeric_limits<float>::infinity())
      .contiguous();
}

attn::Problem problem(const at::Tensor& q, const AttentionShape& s, double scale, bool causal) {
  return {q.scalar_type() == at::kFloat ? attn::Dtype::Float : attn::Dtype::BFloat16, s.m, s.n, s.d,
          static_cast<float>(scale), causal, nullptr};
}

// One thread's scratch (uninitialised: the kernels write what they read). Up to 4 MiB it is kept
// for the thread's next call: a fresh vector per call was mapped, faulted in and zero-filled every
// time (T's float32 attention step, bench/bench_attention.py, 13 ms: 2.4 ms of system time with
// it, 1.2 without; the rest is the outputs' allocations). Larger scratch, a long sequence's, is
// the call's own.
float* thread_scratch(size_t floats, std::vector<float>& own) {
  constexpr size_t kKeep = (size_t{4} << 20) / sizeof(float);
  thread_local std::vector<float> kept;
  std::vector<float>& buf = floats <= kKeep ? kept : own;
  if (buf.size() < floats) buf.resize(floats);
  return buf.data();
}

// Runs fn(problem, b, h, scratch) for every (batch, head), split over the threads by heads.
template <class Fn>
void for_each_head(const AttentionShape& s, attn::Problem p, const at::Tensor& bias, size_t scratch_floats,
                   const Fn& fn) {
  at::parallel_for(0, s.b * s.h, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> own;
    float* scratch = thread_scratch(scratch_floats, own);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / s.h, h = bh % s.h;
      attn::Problem ph = p;
      ph.key_bias = bias.defined() ? bias.const_data_ptr<float>() + b * s.n : nullptr;
      fn(ph, b, h, scratch);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const std::optional<at::Tensor>& key_mask,
                                                 std::optional<double> scale_opt, bool causal) {
  const double scale = attention_scale(q, scale_opt);
  if (!fused(q)) return math::forward(q, k, v, key_mask, scale, causal);
  const AttentionShape s = check_attention_args("attention", q, k, v, key_mask);
  auto [out, lse] = alloc_attention_outputs(q, s);
  if (out.numel() == 0) return {out, lse.fill_(-std::numeric_limits<float>::infinity())};
  const auto& K = attn::kernels();
  const at::Tensor bias = key_bias(key_mask);
  float* lse_data = lse.data_ptr<float>();
  for_each_head(s, problem(q, s, scale, causal), bias, K.forward_scratch(s.m, s.n, s.d),
                [&](const attn::Problem& p, int64_t b, int64_t h, float* scratch) {
                  K.forward(p, head(q, b, h), head(k, b, h), head(v, b, h), mut_head(out, b, h),
                            lse_data + (b * s.h + h) * s.m, scratch);
                });
  return {out, lse};
}

// The fused backward into dq, dk, dv (s checked). They may be q, k and v themselves: each head's
// kernel packs its q, k, v and dout into its scratch before it writes any of that head's
// gradients, and the heads' memory is disjoint (attention_backward_inplace_cpu checks).
void fused_backward(const AttentionShape& s, const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                    const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale, bool causal,
                    const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  if (s.m == 0) {
    dk.zero_(), dv.zero_();
    return;
  }
  if (q.numel() == 0) return;
  const auto& K = attn::kernels();
  const at::Tensor bias = key_bias(key_mask);
  const at::Tensor L = lse.to(at::kFloat).contiguous();
  const at::Tensor G = grad_lse.has_value() && grad_lse->defined() ? grad_lse->to(at::kFloat).contiguous() : at::Tensor();
  for_each_head(s, problem(q, s, scale, causal), bias, K.backward_scratch(s.m, s.n, s.d),
                [&](const attn::Problem& p, int64_t b, int64_t h, float* scratch) {
                  const int64_t row = (b * s.h + h) * s.m;
                  K.backward(p, head(q, b, h), head(k, b, h), head(v, b, h), head(out, b, h), head(grad_out, b, h),
                             L.const_data_ptr<float>() + row, G.defined() ? G.const_data_ptr<float>() + row : nullptr,
                             mut_head(dq, b, h), mut_head(dk, b, h), mut_head(dv, b, h), scratch);
                });
}

void check_grad_out_dtype(const char* op, const at::Tensor& grad_out, const at::Tensor& q) {
  TORCH_CHECK_VALUE(grad_out.scalar_type() == q.scalar_type(), op, ": grad_out must be ", q.scalar_type(), ", got ",
                    grad_out.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& key_mask,
    double scale, bool causal) {
  if (!fused(q)) return math::backward(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
  const AttentionShape s = check_attention_args("attention_backward", q, k, v, key_mask);
  check_attention_backward_args(grad_out, grad_lse, out, lse, s);
  check_grad_out_dtype("attention_backward", grad_out, q);
  auto [dq, dk, dv] = alloc_attention_grads(q, s);
  fused_backward(s, grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal, dq, dk, dv);
  return {dq, dk, dv};
}

// Over q, k and v where each is one block of memory of its own (no element twice, none shared
// with another argument); otherwise (and for the reference path's dtypes) the out-of-place
// backward, then copies.
void attention_backward_inplace_cpu(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse,
                                    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                    const at::Tensor& lse, const std::optional<at::Tensor>& key_mask, double scale,
                                    bool causal) {
  const AttentionShape s = check_attention_args("attention_backward_", q, k, v, key_mask);
  check_attention_backward_args(grad_out, grad_lse, out, lse, s);
  bool apart = fused(q);
  const std::array<const at::Tensor*, 3> written = {&q, &k, &v};
  for (size_t i = 0; apart && i < written.size(); ++i) {
    const at::Tensor& t = *written[i];
    apart = at::has_internal_overlap(t) == at::MemOverlap::No;
    for (const at::Tensor* other : {&q, &k, &v, &out, &grad_out}) {
      if (other != written[i] && apart) apart = at::get_overlap_status(t, *other) == at::MemOverlapStatus::No;
    }
  }
  if (!apart) {
    const auto [dq, dk, dv] = attention_backward_cpu(grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal);
    q.copy_(dq), k.copy_(dk), v.copy_(dv);
    return;
  }
  check_grad_out_dtype("attention_backward_", grad_out, q);
  fused_backward(s, grad_out, grad_lse, q, k, v, out, lse, key_mask, scale, causal, q, k, v);
}

}  // namespace

TORCH_LIBRARY_IMPL(arwrap, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
  m.impl("attention_backward_", &attention_backward_inplace_cpu);
}

}  // namespace arwrap::ops::cpu
