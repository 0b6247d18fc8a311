// Products of bfloat16/float16 matrices with a float32 result, without copying the
// operands to float32 first.
//
// ATen has `addmm.dtype_out` / `bmm.dtype` (out_dtype=float32 for bf16/fp16 inputs):
// on CUDA they run the low-precision tensor-core GEMM with float32 accumulation and
// output. Where a backend lacks them (torch 2.13's CPU has no kernel; some CUDA
// versions reject a float32 `self` in addmm), the fallback upcasts the operands
// (the exact float32 product, as before). Which path a device type takes is learnt
// on its first call (the checks throw before anything is written) and remembered.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/bmm.h>
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

// out (float32) += a @ b, for a, b of one low-precision dtype (or out's dtype: plain addmm_).
inline void addmm_acc_(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (!is_low_precision(a) || out.scalar_type() == a.scalar_type()) {
    out.addmm_(a, b);
    return;
  }
  auto& state = low_precision_mm_state(LowPrecisionMmOp::Addmm, out.device().type());
  if (state.load(std::memory_order_relaxed) != 2) {
    try {
      at::addmm_out(out, out, a, b, at::kFloat);
      state.store(1, std::memory_order_relaxed);
      return;
    } catch (const c10::Error&) {  // no kernel for this backend, or its checks refuse a float32 self
      state.store(2, std::memory_order_relaxed);
    }
  }
  out.addmm_(a.to(at::kFloat), b.to(at::kFloat));
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
