// Products of bfloat16/float16 matrices with a float32 result, without copying the
// operands to float32 first.
//
// ATen has `addmm.dtype_out` / `bmm.dtype` (out_dtype=float32 for bf16/fp16 inputs):
// on CUDA they run the low-precision tensor-core GEMM with float32 accumulation and
// output. Where a backend lacks them (torch 2.13's CPU has no kernel; some CUDA
// versions reject a float32 `self` in addmm), the fallback upcasts the operands
// (the exact float32 product, as before). Which path a device type takes is learnt
// on its first call (the checks throw before anything is written) and remembered.
//
// ATen's CPU GEMM in bfloat16/float16 is fast only where oneDNN has a kernel for the dtype
// (x86: AVX-512 with BW/VL/DQ for bf16, AVX512-FP16 for fp16). Elsewhere (an AVX2-only CPU)
// torch 2.13 runs it at 0.6-12 GFLOP/s, against 105-128 for float32 sgemm on the same 2 cores
// ((2048x256) @ (256x2048) by operand layout: bench/bench_low_precision_mm.py --gemm). There mm_lowp / linear_lowp compute the product
// of two low-precision matrices as the float32 product of their exact float32 values, then
// round it to the low-precision dtype: what a bf16 GEMM with float32 accumulation returns, up
// to the order of the sums (bf16 x bf16 products are exact in float32).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mm.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <array>
#include <atomic>

namespace arwrap::ops {

enum class LowPrecisionMmOp : int { Addmm = 0, Bmm = 1 };

// 0: not tried yet, 1: the out_dtype kernel works, 2: it does not (use the fallback).
inline std::atomic<int>& low_precision_mm_state(LowPrecisionMmOp op, c10::DeviceType dev) {
  static std::array<std::atomic<int>, 2 * static_cast<int>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> states{};
  return states[2 * static_cast<int>(dev) + static_cast<int>(op)];
}

inline bool is_low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// Whether a GEMM on t's dtype and device takes the float32 route above: t is a CPU bf16/fp16
// tensor and this CPU has no fast ATen GEMM for that dtype. ARWRAP_LOWP_GEMM=fp32 forces the
// route, =aten turns it off (the tests run both); decided once per process (cpu/low_precision_gemm.cpp).
bool lowp_gemm_upcasts(c10::DeviceType device, at::ScalarType dtype);
inline bool lowp_gemm_upcasts(const at::Tensor& t) { return lowp_gemm_upcasts(t.device().type(), t.scalar_type()); }

// out (2-d float32, contiguous rows, CPU) += p (or = p with assign), p bf16 of out's shape,
// contiguous: one pass, where ATen's mixed-dtype add_ casts p into a float32 temporary first
// (cpu/low_precision_gemm.cpp).
void add_bf16_(at::Tensor& out, const at::Tensor& p, bool assign);

// x (float32) + p (bf16 of x's shape), both contiguous, on the CPU: a new float32 tensor in one
// pass, the values of ATen's x + p (p widened exactly, one float32 add), which casts p into a
// float32 temporary first. The native net's residual adds under autocast (layers.cpp).
at::Tensor add_bf16(const at::Tensor& x, const at::Tensor& p);

// a @ b in a's dtype (a, b of one dtype), on the float32 route where lowp_gemm_upcasts
// (autocast kept out: the float32 product must not be lowered again).
inline at::Tensor mm_lowp(const at::Tensor& a, const at::Tensor& b) {
  if (!lowp_gemm_upcasts(a)) return at::mm(a, b);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return at::mm(a.to(at::kFloat), b.to(at::kFloat)).to(a.scalar_type());
}

// at::linear(x, w, b) in x's dtype (x, w, b of one dtype; call it with the operands already
// in the product dtype), on the float32 route where lowp_gemm_upcasts.
inline at::Tensor linear_lowp(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  if (!lowp_gemm_upcasts(x)) return at::linear(x, w, b.defined() ? std::optional<at::Tensor>(b) : std::nullopt);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto f = at::kFloat;
  return at::linear(x.to(f), w.to(f), b.defined() ? std::optional<at::Tensor>(b.to(f)) : std::nullopt)
      .to(x.scalar_type());
}

// out (float32) += a @ b (= a @ b with assign), for a, b of one low-precision dtype (or out's
// dtype: plain addmm_ / mm_out). Routes, best first:
//   - the backend's low-precision product with a float32 result (addmm.dtype_out: CUDA);
//   - bf16 where the backend's bf16 product is fast but has no float32 result (the CPU's oneDNN
//     refuses one): the bf16 product, float32 inside and rounded once, added in float32. Each
//     call's sum is rounded once, as autocast's own product rounds its whole sum once; the
//     float32 route below took about 2.5x as long on the AMX host (C's bf16 weight gradient,
//     profiled: 402 ms of upcast products against 107 ms of bf16 ones and the add);
//   - the float32 product of the upcast operands (fp16, whose partial sums could overflow, and
//     the hosts where the bf16 product takes the float32 route anyway: lowp_gemm_upcasts).
inline void addmm_acc_(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool assign = false) {
  if (!is_low_precision(a) || out.scalar_type() == a.scalar_type()) {
    if (assign) at::mm_out(out, a, b);
    else out.addmm_(a, b);
    return;
  }
  auto& state = low_precision_mm_state(LowPrecisionMmOp::Addmm, out.device().type());
  if (state.load(std::memory_order_relaxed) != 2) {
    try {
      at::addmm_out(out, out, a, b, at::kFloat, assign ? 0 : 1);
      state.store(1, std::memory_order_relaxed);
      return;
    } catch (const c10::Error&) {  // no kernel for this backend, or its checks refuse a float32 self
      state.store(2, std::memory_order_relaxed);
    }
  }
  if (a.scalar_type() == at::kBFloat16 && !lowp_gemm_upcasts(a)) {
    const at::Tensor p = at::mm(a, b);
    if (out.device().is_cpu() && out.dim() == 2 && out.stride(1) == 1 && p.is_contiguous()) {
      add_bf16_(out, p, assign);
    } else if (assign) {
      out.copy_(p);
    } else {
      out.add_(p);
    }
    return;
  }
  if (assign) at::mm_out(out, a.to(at::kFloat), b.to(at::kFloat));
  else out.addmm_(a.to(at::kFloat), b.to(at::kFloat));
}

// Batched a @ b (3-D): float32 for low-precision a and b, else in their dtype.
inline at::Tensor bmm_f32(const at::Tensor& a, const at::Tensor& b) {
  if (!is_low_precision(a)) return at::bmm(a, b);
  auto& state = low_precision_mm_state(LowPrecisionMmOp::Bmm, a.device().type());
  if (state.load(std::memory_order_relaxed) != 2) {
    try {
      at::Tensor r = at::bmm(a, b, at::kFloat);
      state.store(1, std::memory_order_relaxed);
      return r;
    } catch (const c10::Error&) {
      state.store(2, std::memory_order_relaxed);
    }
  }
  return at::bmm(a.to(at::kFloat), b.to(at::kFloat));
}

}  // namespace arwrap::ops
