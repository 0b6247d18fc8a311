// Row kernels of the activation operator (../activation.cpp): GELU (erf) or SiLU, or the GLU
// of either, forward and backward, over contiguous rows, in float32 and bfloat16 (the math in
// float32, each output rounded once), with the run-time instruction-set choice of
// softmax_simd.h (AVX-512, AVX2+FMA or baseline; ARWRAP_CPU_ISA forces one).
#pragma once

#include <cstdint>

namespace arwrap::ops::cpu::simd {

// Rows of f: `inner` values without glu, 2 * inner with it (value half, then gate half).
// forward:  out = act(f), or f[:inner] * act(f[inner:]);                 out rows of inner
// backward: df = grad * act'(f), or (grad * act(g), grad * a * act'(g));  df rows like f's
// backward_recompute: both at once, in place: grad := forward(f), f := df; df_sum (f's width,
// float32) += df summed over these rows (the values as stored).
template <class T>
struct ActivationRows {
  void (*forward)(const T* f, T* out, long rows, long inner, bool glu, bool swish);
  void (*backward)(const T* grad, const T* f, T* df, long rows, long inner, bool glu, bool swish);
  void (*backward_recompute)(T* grad, T* f, float* df_sum, long rows, long inner, bool glu, bool swish);
};

struct ActivationKernels {
  ActivationRows<float> f32;
  ActivationRows<uint16_t> bf16;  // bfloat16's bits
  const char* isa;
};

// Chosen once, on first use.
const ActivationKernels& activation_kernels();

}  // namespace arwrap::ops::cpu::simd
