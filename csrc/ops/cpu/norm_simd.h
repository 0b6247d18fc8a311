// Row kernels of the norm operator (../norm.cpp), forward and backward, over rows whose last
// dimension is contiguous, in float32 and bfloat16 (the math in float32, each output rounded
// once), with the run-time instruction-set choice of softmax_simd.h (AVX-512, AVX2+FMA or
// baseline; ARWRAP_CPU_ISA forces one). Deliberately free of torch headers.
#pragma once

#include <cstdint>

namespace arwrap::ops::cpu::simd {

// Element types by index: 0 float32, 1 bfloat16 (its bits, uint16_t).
//
// forward: `rows` rows of D values, row i of x at x + i * xs, of out at out + i * os
// (elements); g the gain (D float32: gamma, + 1 with unit_offset, times sqrt(D) for RMSNorm).
//   out = (x - mean) rstd g (LayerNorm, eps 1e-5) or x / max(|x|, 1e-12) g (RMSNorm).
using NormForwardRows = void (*)(const void* x, int64_t xs, void* out, int64_t os, const float* g, int64_t rows,
                                 int64_t D, bool rms);
// backward: d x (x's type) from d out (its own type), the statistics recomputed from x;
// dgamma_acc (D float32) += the rows' d out x̂ (x̂ the normalised row, before the gain).
using NormBackwardRows = void (*)(const void* dy, int64_t dys, const void* x, int64_t xs, void* dx, int64_t dxs,
                                  const float* g, float* dgamma_acc, int64_t rows, int64_t D, bool rms);

struct NormKernels {
  NormForwardRows forward[2][2];    // [x's type][out's type]
  NormBackwardRows backward[2][2];  // [x's type][d out's type]; d x in x's type
  const char* isa;
};

// Chosen once, on first use.
const NormKernels& norm_kernels();

}  // namespace arwrap::ops::cpu::simd
