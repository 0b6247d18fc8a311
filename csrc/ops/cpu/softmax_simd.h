// Float32 row primitives of the fused cross-entropy (and the dot product of the
// small-batch linear), with run-time selection of the widest instruction set this
// CPU has (AVX-512, AVX2+FMA, or baseline).
#pragma once

namespace arwrap::ops::cpu::simd {

// The widest instruction set this CPU has, chosen once for every per-ISA kernel set (these
// row primitives and the fused attention, attention_simd.h). ARWRAP_CPU_ISA=avx512|avx2|base
// forces a choice the CPU supports (for tests and benchmarks).
enum class Isa { Base, Avx2, Avx512 };
Isa isa();

// The compiler targets of the per-ISA builds, named once for every *_simd.cpp (each build is
// `ARWRAP_TARGET_AVX512 namespace ... { #include "..." } ARWRAP_TARGET_END`); they match the
// features isa() checks.
#define ARWRAP_TARGET_AVX512 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2\")")
#define ARWRAP_TARGET_AVX2 _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,bmi2\")")
#define ARWRAP_TARGET_END _Pragma("GCC pop_options")

struct Kernels {
  float (*max_of)(const float* x, long n);
  float (*sum_of)(const float* x, long n);
  float (*sum_exp)(const float* x, long n, float m);
  float (*grad_affine)(const float* x, float* out, long n, float lse, float a, float b);
  float (*exp_store)(const float* x, float* out, long n, float m);
  float (*scale_affine)(const float* e, float* out, long n, float scale, float a, float b);
  float (*dot)(const float* a, const float* b, long n);
  const char* isa;
};

// Chosen once, on first use.
const Kernels& kernels();

}  // namespace arwrap::ops::cpu::simd
