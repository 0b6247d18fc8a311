// Row kernels of the rotary operator (../rotary.cpp), forward and backward, over rows whose last
// dimension is contiguous, in float32 and bfloat16 (the math in float32 on float32 tables, each
// output rounded once), with the run-time instruction-set choice of softmax_simd.h (AVX-512,
// AVX2+FMA or baseline; ARWRAP_CPU_ISA forces one). Deliberately free of torch headers.
#pragma once

#include <cstdint>

namespace arwrap::ops::cpu::simd {

// m rows of d values: row i of x at x + i * x_stride, of out at out + i * out_stride (elements);
// cos and sin (m, rot) float32, contiguous. forward: the rotation by +angle; backward: by -angle.
template <class T>
struct RotaryRows {
  void (*forward)(const T* x, int64_t x_stride, T* out, int64_t out_stride, const float* cos, const float* sin,
                  int64_t m, int64_t d, int64_t rot);
  void (*backward)(const T* x, int64_t x_stride, T* out, int64_t out_stride, const float* cos, const float* sin,
                   int64_t m, int64_t d, int64_t rot);
};

struct RotaryKernels {
  RotaryRows<float> f32;
  RotaryRows<uint16_t> bf16;  // bfloat16's bits
  const char* isa;
};

// Chosen once, on first use.
const RotaryKernels& rotary_kernels();

}  // namespace arwrap::ops::cpu::simd
